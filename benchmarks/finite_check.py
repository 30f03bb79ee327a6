"""
The cost per step of PPOKL's check of the environment's values (``check_finite_env``), measured directly.

``benchmarks.speed --pairs finite_check`` times whole ``learn()`` runs with and without the check, alternating;
their difference is below the noise of a shared machine. This script times what the check adds to every
``env.step()`` of a rollout, on the locals of a real rollout step: the callback ``learn()`` runs
(SB3's ``ConvertCallback`` around no user callback) called as ``collect_rollouts`` calls it
(``update_locals`` then ``on_step``), bare and wrapped in :class:`~sb3_ppo_kl.common.finite.CheckFiniteCallback`,
alternating, the minimum over ``--repeats`` batches of ``--number`` calls (the minimum is the least disturbed by
other processes). It then times ``learn()`` itself (``--runs`` runs of ``--timesteps`` steps, check on, the
fastest run, for the same reason) and prints the check's share of a step.

    python -m benchmarks.finite_check
    python -m benchmarks.finite_check --env Pendulum-v1 --n-envs 8
"""

import argparse
import statistics
import time
import timeit
from typing import Any

import torch as th
from stable_baselines3.common.callbacks import BaseCallback, ConvertCallback
from stable_baselines3.common.env_util import make_vec_env

from sb3_ppo_kl import PPOKL
from sb3_ppo_kl.common.finite import CheckFiniteCallback


class _KeepLocals(BaseCallback):
    """Stops the rollout after its first step, keeping that step's locals."""

    def _on_step(self) -> bool:
        return False


def step_locals(model: PPOKL) -> dict[str, Any]:
    """The locals of ``collect_rollouts`` at a real step, as a callback receives them."""
    keep = _KeepLocals()
    _, callback = model._setup_learn(model.n_steps, callback=keep)
    callback.on_training_start(locals(), globals())
    model.collect_rollouts(model.env, callback, model.rollout_buffer, n_rollout_steps=model.n_steps)  # type: ignore[arg-type]
    return dict(keep.locals)


def seconds_per_call(callback: BaseCallback, locals_: dict[str, Any], number: int, repeats: int) -> list[float]:
    def call() -> None:
        callback.update_locals(locals_)
        callback.on_step()

    return [t / number for t in timeit.repeat(call, number=number, repeat=repeats)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="CartPole-v1")
    parser.add_argument("--n-envs", type=int, default=1)
    parser.add_argument("--number", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--timesteps", type=int, default=8_192)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    th.set_num_threads(1)

    model = PPOKL("MlpPolicy", make_vec_env(args.env, n_envs=args.n_envs, seed=0), seed=0, device="cpu")
    locals_ = step_locals(model)
    bare = ConvertCallback(None)
    bare.init_callback(model)
    checked = CheckFiniteCallback(bare)
    checked.init_callback(model)
    times: dict[str, list[float]] = {"bare": [], "checked": []}
    for _ in range(3):  # alternate, so that a busy spell of the machine hits both
        times["bare"] += seconds_per_call(bare, locals_, args.number, args.repeats)
        times["checked"] += seconds_per_call(checked, locals_, args.number, args.repeats)
    added = min(times["checked"]) - min(times["bare"])

    runs = []
    for seed in range(args.runs):
        model = PPOKL("MlpPolicy", make_vec_env(args.env, n_envs=args.n_envs, seed=seed), seed=seed, device="cpu")
        start = time.perf_counter()
        model.learn(args.timesteps)
        runs.append((time.perf_counter() - start) / (args.timesteps / args.n_envs))  # per env.step() call
    per_step = min(runs)
    median_added = statistics.median(times["checked"]) - statistics.median(times["bare"])
    print(
        f"{args.env}, {args.n_envs} env(s): callback per step {1e6 * min(times['bare']):.2f} us bare, "
        f"{1e6 * min(times['checked']):.2f} us with the check: +{1e6 * added:.2f} us per env.step() "
        f"(medians: +{1e6 * median_added:.2f} us); learn() takes {1e6 * per_step:.0f} us per env.step() (runs: "
        f"{', '.join(f'{1e6 * run:.0f}' for run in runs)}): the check costs {100 * added / per_step:.2f}% of a step"
    )


if __name__ == "__main__":
    main()
