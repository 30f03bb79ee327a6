"""
PPOKL against SB3 PPO on CartPole-v1 and Pendulum-v1: same hyperparameters, same seeds, one grid.

The shared hyperparameters are RL Zoo's tuned PPO settings for each environment. SB3 PPO keeps its
clipping; PPOKL uses its defaults (adaptive KL penalty, kl_target=0.01, no clipping).

Each finished run is appended to a CSV; a rerun skips finished runs.

    python -m benchmarks.compare_sb3_ppo --workers 2          # run (resumable)
    python -m benchmarks.compare_sb3_ppo --summary            # print the markdown table, draw the figure
"""

import argparse
import json
import time
from typing import Any

import numpy as np

from benchmarks.dispatch import exit_on_failure, parse_arguments, run_jobs
from benchmarks.results import ResultsDir, append_new_row, read_rows

RESULTS_CSV = "compare_sb3_ppo.csv"
FIGURE = "compare_sb3_ppo.png"
FIELDS = [
    "algo",
    "env",
    "seed",
    "timesteps",
    "final_reward",
    "final_std",
    "steps_to_solve",
    "train_seconds",
    "final_kl_coef",
    "curve",
]

# env id -> (n_envs, shared hyperparameters, PPO's clip_range, timesteps, solved threshold, eval every n steps)
SETTINGS = {
    "CartPole-v1": (
        8,
        dict(n_steps=32, batch_size=256, gae_lambda=0.8, gamma=0.98, n_epochs=20, ent_coef=0.0, learning_rate="lin_1e-3"),
        "lin_0.2",
        100_000,
        475.0,
        5_000,
    ),
    "Pendulum-v1": (
        4,
        dict(
            n_steps=1024,
            gae_lambda=0.95,
            gamma=0.9,
            n_epochs=10,
            ent_coef=0.0,
            learning_rate=1e-3,
            use_sde=True,
            sde_sample_freq=4,
        ),
        0.2,
        100_000,
        -200.0,
        4_096,
    ),
}
ALGOS = ("ppo", "ppo_kl")


def _schedule(value):
    from stable_baselines3.common.utils import LinearSchedule

    if isinstance(value, str) and value.startswith("lin_"):
        return LinearSchedule(float(value[4:]), 0.0, 1.0)
    return value


def run_one(job: tuple[str, str, int]) -> dict:
    algo, env_id, seed = job
    import torch as th

    th.set_num_threads(1)
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import EvalCallback
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy

    from sb3_ppo_kl import PPOKL

    n_envs, shared, ppo_clip, timesteps, threshold, eval_every = SETTINGS[env_id]
    kwargs = {key: _schedule(value) for key, value in shared.items()}
    if algo == "ppo":
        model = PPO(
            "MlpPolicy", make_vec_env(env_id, n_envs=n_envs, seed=seed), clip_range=_schedule(ppo_clip), seed=seed, **kwargs
        )
    else:
        model = PPOKL("MlpPolicy", make_vec_env(env_id, n_envs=n_envs, seed=seed), seed=seed, **kwargs)

    class TimedEval(EvalCallback):
        """EvalCallback that keeps its learning curve and the time it spent (excluded from training time)."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.eval_seconds = 0.0
            self.curve: list[tuple[int, float]] = []

        def _on_step(self) -> bool:
            start = time.perf_counter()
            result = super()._on_step()
            self.eval_seconds += time.perf_counter() - start
            if self.n_calls % self.eval_freq == 0:
                self.curve.append((self.num_timesteps, float(self.last_mean_reward)))
            return result

    eval_cb = TimedEval(
        make_vec_env(env_id, n_envs=1, seed=10_000 + seed), eval_freq=eval_every // n_envs, n_eval_episodes=10, verbose=0
    )
    start = time.perf_counter()
    model.learn(timesteps, callback=eval_cb)
    train_seconds = time.perf_counter() - start - eval_cb.eval_seconds
    final, final_std = evaluate_policy(model, make_vec_env(env_id, n_envs=1, seed=20_000 + seed), n_eval_episodes=20)
    curve = eval_cb.curve
    solved = next((t for t, r in curve if r >= threshold), None)
    return dict(
        algo=algo,
        env=env_id,
        seed=seed,
        timesteps=timesteps,
        final_reward=round(float(final), 2),
        final_std=round(float(final_std), 2),
        steps_to_solve="" if solved is None else solved,
        train_seconds=round(train_seconds, 1),
        final_kl_coef="" if algo == "ppo" else model.kl_coef,
        curve=json.dumps(curve),
    )


def run(results: ResultsDir, envs: list[str], seeds: list[int], workers: int, **dispatch: Any) -> None:
    """
    The grid's unfinished runs, recorded in ``results``, in a pool of ``workers`` processes or on Ray
    (:func:`~benchmarks.dispatch.run_jobs`).
    """
    from tqdm import tqdm

    path = results / RESULTS_CSV
    done = {(row["algo"], row["env"], int(row["seed"])) for row in read_rows(path)}
    jobs = [(algo, env, seed) for seed in seeds for env in envs for algo in ALGOS if (algo, env, seed) not in done]
    print(f"{len(jobs)} runs to do ({len(done)} already in {path})", flush=True)
    for _, row in run_jobs(run_one, jobs, workers=workers, **dispatch):
        if append_new_row(path, FIELDS, ["algo", "env", "seed"], row):
            tqdm.write(str({k: v for k, v in row.items() if k != "curve"}))


def summary(results: ResultsDir) -> str:
    """The markdown table of the runs in ``results``."""
    rows = read_rows(results / RESULTS_CSV)
    lines = [
        "| env | algorithm | final reward (mean ± std over seeds) | steps to solve, per seed | train seconds (mean) |",
        "|---|---|---|---|---|",
    ]
    for env in SETTINGS:
        for algo in ALGOS:
            sel = sorted((r for r in rows if r["env"] == env and r["algo"] == algo), key=lambda r: int(r["seed"]))
            if not sel:
                continue
            finals = np.array([float(r["final_reward"]) for r in sel])
            solve = ", ".join(r["steps_to_solve"] or "not solved" for r in sel)
            secs = np.mean([float(r["train_seconds"]) for r in sel])
            name = "SB3 PPO (clip)" if algo == "ppo" else "PPOKL (defaults)"
            lines.append(
                f"| {env} | {name} | {finals.mean():.1f} ± {finals.std():.1f} (n={len(sel)}) | {solve} | {secs:.0f} |"
            )
    return "\n".join(lines)


def plot(results: ResultsDir) -> None:
    """Evaluation reward against timesteps: mean and min-max over seeds, one panel per env, next to the CSV."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_rows(results / RESULTS_CSV)
    fig, axes = plt.subplots(1, len(SETTINGS), figsize=(5 * len(SETTINGS), 3.6))
    for ax, env in zip(axes, SETTINGS):
        for algo, color in zip(ALGOS, ("tab:blue", "tab:red")):
            curves = [json.loads(r["curve"]) for r in rows if r["env"] == env and r["algo"] == algo]
            if not curves:
                continue
            length = min(len(c) for c in curves)
            steps = np.array([t for t, _ in curves[0][:length]])
            rewards = np.array([[r for _, r in c[:length]] for c in curves])
            label = ("SB3 PPO (clip)" if algo == "ppo" else "PPOKL (defaults)") + f", {len(curves)} seeds"
            ax.plot(steps, rewards.mean(0), color=color, label=label)
            ax.fill_between(steps, rewards.min(0), rewards.max(0), color=color, alpha=0.2)
        ax.axhline(SETTINGS[env][4], color="gray", ls=":", lw=1)
        ax.set_title(env)
        ax.set_xlabel("timesteps")
        ax.set_ylabel("evaluation reward (10 episodes)")
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(results / FIGURE, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", nargs="+", default=list(SETTINGS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--summary", action="store_true", help="print the results table and exit")
    args, dispatch, results = parse_arguments(parser)
    if args.summary:
        print(summary(results))
        plot(results)
    else:
        with exit_on_failure():
            run(results, args.envs, args.seeds, **dispatch)


if __name__ == "__main__":
    # the importable module's main: its functions, not copies of __main__'s, go to the workers
    from benchmarks.compare_sb3_ppo import main as imported_main

    imported_main()
