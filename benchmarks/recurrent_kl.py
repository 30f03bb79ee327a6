"""
RecurrentPPO's and RecurrentPPOKL's logged update statistics on small recurrent rollouts (issue 14).

Why beta collapses for RecurrentPPOKL on small recurrent rollouts: the logged update statistics of
RecurrentPPO and RecurrentPPOKL, update by update, with RL Zoo's ``ppo_lstm`` settings for CartPoleNoVel-v1
(8 envs x 32 steps = 256 samples per update, one minibatch of 256, 20 epochs, lr linear from 1e-3,
VecNormalize as RL Zoo's ``normalize: true``; ``--raw`` leaves observations and rewards unnormalised, as
``benchmarks/compare_variants.py``'s ``lstm`` task does).

RecurrentPPO keeps RL Zoo's ``clip_range: lin_0.2``; RecurrentPPOKL is pure PPO1 at its defaults. Recorded
after every update: RecurrentPPO's ``clip_fraction`` and ``approx_kl``; RecurrentPPOKL's ``d`` (``train/kl``),
beta and ``approx_kl``; and for both the mean of the last 100 training episodes. One CSV per run in
``results/recurrent_kl/``; a final deterministic evaluation (20 episodes) in ``results/recurrent_kl.csv``.

    python -m benchmarks.recurrent_kl --seeds 0
    python -m benchmarks.recurrent_kl --summary
"""

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.callbacks import BaseCallback

from benchmarks.results import ResultsDir, append_row, read_rows, write_rows

RESULTS_CSV = "recurrent_kl.csv"
CURVES = "recurrent_kl"
FIELDS = ["algo", "env", "seed", "normalize", "timesteps", "eval_mean", "eval_std", "final_kl_coef"]
LOGGED = ["train/kl", "train/kl_coef", "train/approx_kl", "train/clip_fraction"]
ALGOS = ("recurrent_ppo", "recurrent_ppo_kl")
ENV_ID = "CartPoleNoVel-v1"
TIMESTEPS = 100_000


class UpdateLog(BaseCallback):
    """At each rollout's start, the ``train/*`` values the previous update logged (SB3 dumps them later)."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, Any]] = []

    def _on_step(self) -> bool:
        return True

    def _record(self) -> None:
        logged = self.logger.name_to_value
        if "train/approx_kl" not in logged:
            return
        episodes = [info["r"] for info in self.model.ep_info_buffer]
        row = {"timesteps": self.num_timesteps, "reward": round(float(np.mean(episodes)), 2) if episodes else ""}
        row.update({key.removeprefix("train/"): logged.get(key, "") for key in LOGGED})
        self.rows.append(row)

    def _on_rollout_start(self) -> None:
        self._record()

    def _on_training_end(self) -> None:
        self._record()


def curve_name(algo: str, env: str, seed: int | str, normalize: bool) -> str:
    """A run's curve file, in :data:`CURVES`."""
    return f"{CURVES}/{algo}__{env}__{seed}{'' if normalize else '__raw'}.csv"


def run_one(results: ResultsDir, algo: str, seed: int, normalize: bool = True) -> dict[str, Any]:
    """Train one run, write its curve into ``results``; return its CSV row."""
    import rl_zoo3.import_envs  # noqa: F401  (registers CartPoleNoVel-v1)
    from sb3_contrib import RecurrentPPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.utils import LinearSchedule
    from stable_baselines3.common.vec_env import VecNormalize
    from torch import nn

    from sb3_ppo_kl import RecurrentPPOKL

    th.set_num_threads(1)
    env = make_vec_env(ENV_ID, n_envs=8, seed=seed)
    eval_env = make_vec_env(ENV_ID, n_envs=1, seed=10_000 + seed)
    if normalize:
        env = VecNormalize(env)
        eval_env = VecNormalize(eval_env, training=False, norm_reward=False)
    # RL Zoo 2.9.2's ppo_lstm.yml entry for CartPoleNoVel-v1
    kwargs: dict[str, Any] = dict(
        n_steps=32,
        batch_size=256,
        gae_lambda=0.8,
        gamma=0.98,
        n_epochs=20,
        ent_coef=0.0,
        learning_rate=LinearSchedule(1e-3, 0.0, 1.0),
        policy_kwargs=dict(
            ortho_init=False,
            activation_fn=nn.ReLU,
            lstm_hidden_size=64,
            enable_critic_lstm=True,
            net_arch=dict(pi=[64], vf=[64]),
        ),
        seed=seed,
    )
    if algo == "recurrent_ppo":
        model = RecurrentPPO("MlpLstmPolicy", env, clip_range=LinearSchedule(0.2, 0.0, 1.0), **kwargs)
    else:
        model = RecurrentPPOKL("MlpLstmPolicy", env, **kwargs)
    log = UpdateLog()
    model.learn(TIMESTEPS, callback=log)
    if normalize:
        eval_env.obs_rms = env.obs_rms
    mean, std = evaluate_policy(model, eval_env, n_eval_episodes=20, deterministic=True)
    fields = ["timesteps", "reward"] + [key.removeprefix("train/") for key in LOGGED]
    write_rows(results / curve_name(algo, ENV_ID, seed, normalize), fields, log.rows)
    return dict(
        algo=algo,
        env=ENV_ID,
        seed=seed,
        normalize=normalize,
        timesteps=TIMESTEPS,
        eval_mean=round(float(mean), 2),
        eval_std=round(float(std), 2),
        final_kl_coef=getattr(model, "kl_coef", ""),
    )


def summary(results: ResultsDir) -> str:
    """Per run of ``results``: the final evaluation, and per quarter of training the mean of each logged statistic."""
    lines = [
        "| algo | seed | normalize | eval | quarter | reward | d (train/kl) | beta | approx_kl | clip_fraction |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in read_rows(results / RESULTS_CSV):
        raw = row.get("normalize") == "False"
        curve = read_rows(results / curve_name(row["algo"], row["env"], row["seed"], not raw))
        for quarter, chunk in enumerate(np.array_split(np.arange(len(curve)), 4)):

            def mean(key: str, chunk=chunk, curve=curve) -> str:
                values = [float(curve[i][key]) for i in chunk if curve[i][key] != ""]
                return f"{np.mean(values):.4g}" if values else ""

            eval_cell = row["eval_mean"] if quarter == 0 else ""
            lines.append(
                f"| {row['algo']} | {row['seed']} | {not raw} | {eval_cell} | {quarter + 1} | {mean('reward')} | {mean('kl')} | "
                f"{mean('kl_coef')} | {mean('approx_kl')} | {mean('clip_fraction')} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--algos", nargs="+", choices=ALGOS, default=list(ALGOS))
    parser.add_argument("--raw", action="store_true", help="no VecNormalize (as benchmarks/compare_variants.py)")
    parser.add_argument("--summary", action="store_true")
    parser.add_argument(
        "--results-dir", type=Path, metavar="DIR", help="the result files' folder (default: benchmarks/results)"
    )
    args = parser.parse_args()
    results = ResultsDir.option(args.results_dir)
    if args.summary:
        print(summary(results))
        return
    done = {(r["algo"], int(r["seed"]), r.get("normalize", "True") == "True") for r in read_rows(results / RESULTS_CSV)}
    for seed in args.seeds:
        for algo in args.algos:
            if (algo, seed, not args.raw) not in done:
                row = run_one(results, algo, seed, normalize=not args.raw)
                append_row(results / RESULTS_CSV, FIELDS, row)
                print(row, flush=True)


if __name__ == "__main__":
    main()
