"""
How much of an evaluation is float noise: the clone's evaluation, then the same with its actions nudged by a
relative ``--nudge`` (default 1e-6, near float32's precision), as another CPU's arithmetic may nudge them.

    python -m benchmarks.finetune.eval_noise --task LunarLanderContinuous-v3 --protocol 5seed

The evaluation plays the same episode starts at every call (:data:`~benchmarks.finetune.protocol.EVAL_SEED`), but a
continuous-action task's episodes are chaotic: an action that differs in its last bits can end an episode elsewhere.
"""

import argparse
from typing import Any

import numpy as np
import torch as th
from stable_baselines3 import PPO

from benchmarks.finetune.protocol import PROTOCOLS, TASKS, clone_name, evaluate, make_eval_env, model_file
from benchmarks.results import DEFAULT_ROOT, ResultsDir


class Nudged:
    """A predictor: ``model``'s deterministic actions, each multiplied by ``1 + nudge * N(0, 1)``."""

    def __init__(self, model: PPO, nudge: float, seed: int) -> None:
        self.model, self.nudge, self.rng = model, nudge, np.random.default_rng(seed)

    def predict(
        self, obs: np.ndarray, state: Any = None, episode_start: np.ndarray | None = None, deterministic: bool = True
    ) -> tuple[np.ndarray, Any]:
        actions, state = self.model.predict(obs, state, episode_start, deterministic)
        return actions * (1 + self.nudge * self.rng.standard_normal(actions.shape)).astype(actions.dtype), state


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.finetune.eval_noise", description=__doc__)
    parser.add_argument("--task", default="LunarLanderContinuous-v3", choices=list(TASKS))
    parser.add_argument("--protocol", default="5seed", choices=list(PROTOCOLS))
    parser.add_argument("--nudge", type=float, default=1e-6)
    parser.add_argument("--repeats", type=int, default=2, help="nudged evaluations, each with its own noise seed")
    args = parser.parse_args()
    th.set_num_threads(1)
    protocol, task = PROTOCOLS[args.protocol], TASKS[args.task]
    results = ResultsDir(DEFAULT_ROOT / protocol.folder)
    clone = PPO.load(results / model_file(clone_name(args.task, task)), device="cpu")
    env = make_eval_env(args.task)
    mean, std = evaluate(clone, env, protocol.eval_episodes)
    print(f"{args.task} clone, {protocol.eval_episodes} episodes: {mean} (std {std})", flush=True)
    for seed in range(args.repeats):
        mean, std = evaluate(Nudged(clone, args.nudge, seed), env, protocol.eval_episodes)
        print(f"  actions x (1 + {args.nudge:g} N(0, 1)), noise seed {seed}: {mean} (std {std})", flush=True)
    env.close()


if __name__ == "__main__":
    main()
