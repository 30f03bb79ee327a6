"""
The paper's Table 1 grid (Schulman et al. 2017, https://arxiv.org/abs/1707.06347): runs (setting x env x seed).

Settings are named after the rows of Table 1, plus two beyond the paper:

- ``no-clip-no-penalty``: the plain importance-sampled surrogate (PPOKL with beta 0, fixed, no clipping);
- ``clip-0.1``, ``clip-0.2``, ``clip-0.3``: SB3 PPO with that clip range;
- ``kl-adaptive-0.003``, ``kl-adaptive-0.01``, ``kl-adaptive-0.03``: PPOKL, adaptive beta with that d_targ
  (``kl-adaptive-0.01`` is PPOKL's defaults);
- ``kl-fixed-0.3``, ``kl-fixed-1``, ``kl-fixed-3``, ``kl-fixed-10``: PPOKL, beta fixed at that value;
- ``kl-adaptive-0.01+clip-0.2``: PPOKL's adaptive penalty with clipping 0.2 on top (RLlib's PPO design);
- ``kl-adaptive-0.03+clip-0.2``: the same with the target near clipping's own ``d``, so that the penalty acts only
  where an update overshoots;
- ``trpo``: sb3-contrib TRPO (its defaults: target KL 0.01, line search), on the same network and rollout.

Issue 11 searched for a PPOKL setting that learns at least as well as clipping: nine candidates in three
stages and a discrete check (``benchmarks/RESULTS.md``). None qualified, and their options were removed
from the package; their rows stay in the results, and :data:`REMOVED` describes each. The code that ran
them is commit fbbd5b7, merged into this history without its changes (``git checkout fbbd5b7``, then
``--grid stage1``, ``stage2``, ``stage3`` or ``discrete``).

The protocol is the paper's (section 6.1 and table 3): 2x64 tanh MLP for the policy and for the value
function (no shared layers), state-independent log-std, no entropy bonus, T=2048 steps per update, Adam
3e-4, 10 epochs, minibatch 64, gamma 0.99, lambda 0.95, 1M steps, 3 seeds, one environment, raw
observations and rewards. These are SB3 PPO's defaults, so every setting differs from SB3 PPO only in the
arguments listed above. Gradient norm clipping (SB3's max_grad_norm 0.5) and advantage normalisation are
SB3's defaults and are kept for every setting.

Score of a run: the mean total reward of its last 100 training episodes (SB3's Monitor), as in the paper.
Every run is also scored by a deterministic evaluation at its end (``eval_score``: the mean return of
10 episodes of the mean action on a separately seeded env), since a narrow action std alone raises the
training score.

Every run is measured the same way, whatever its algorithm (:class:`UpdateMeasures`): after each update,
``d`` = the mean analytic KL between the policy before and after it over that update's rollout (the
package's own :func:`~sb3_ppo_kl.common.kl.per_state_kl`; for PPOKL it equals ``train/kl``) and the
mean action std.

Each finished run appends one row to ``results/table1.csv`` and writes its learning curve (one row per
update: timesteps, mean reward of the last 100 episodes, d, the std, and for PPOKL beta) to
``results/table1_curves/``. A rerun skips the finished (setting, env, seed, timesteps) rows.

    python -m benchmarks.run --workers 2                                          # the full grid: 11+3 settings x 7 envs x 3 seeds x 1M
    python -m benchmarks.run --grid paper-lite --workers 2                        # 3 settings x 7 envs x 3 seeds x 300k
    python -m benchmarks.run --grid table1-300k --workers 2                       # the other 11 settings at 300k
    python -m benchmarks.run --grid table1-1m --workers 2                         # issue 20's rows at 1M
    python -m benchmarks.run --grid discrete --workers 2                          # LunarLander-v3 and Acrobot-v1
    python -m benchmarks.run --grid paper --ray auto                              # on a Ray cluster (docs: "Run a grid on a cluster")
    python -m benchmarks.run --settings clip-0.2 kl-fixed-1 --envs Hopper-v5 --seeds 0 --timesteps 100000
    python -m benchmarks.run --grid paper-lite --settings clip-0.2 kl-adaptive-0.01 --remeasure   # add eval, d, std to old rows
    python -m benchmarks.run --random                                             # measure the random policy's score
    python -m benchmarks.report                                                   # RESULTS.md and the figures
"""

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.utils import obs_as_tensor

from benchmarks.common import (
    FingerprintMismatch,
    RunsFailed,
    add_dispatch_arguments,
    append_new_row,
    append_row,
    dispatch_options,
    read_rows,
    replace_row,
    run_jobs,
    write_rows,
)
from sb3_ppo_kl.common.kl import distribution_params, per_state_kl

RESULTS_DIR = Path(__file__).parent / "results"
RESULTS = RESULTS_DIR / "table1.csv"
CURVES = RESULTS_DIR / "table1_curves"
RANDOM = RESULTS_DIR / "table1_random.csv"


def use_results_dir(path: Path) -> None:
    """Write (and read) every result file under ``path`` instead of ``benchmarks/results``."""
    global RESULTS_DIR, RESULTS, CURVES, RANDOM
    RESULTS_DIR, RESULTS, CURVES, RANDOM = path, path / "table1.csv", path / "table1_curves", path / "table1_random.csv"


FIELDS = [
    "setting",
    "env",
    "seed",
    "timesteps",
    "score",
    "episodes",
    "wall_seconds",
    "fps",
    "final_kl_coef",
    "machine",
    "eval_score",
    "eval_episodes",
    "final_kl",
    "final_std",
]
CURVE_FIELDS = ["timesteps", "reward", "kl", "kl_coef", "std"]
EVAL_EPISODES = 10
# final_kl: the mean d of the last FINAL_UPDATES updates
FINAL_UPDATES = 10

ENVS = [
    "HalfCheetah-v5",
    "Hopper-v5",
    "InvertedDoublePendulum-v5",
    "InvertedPendulum-v5",
    "Reacher-v5",
    "Swimmer-v5",
    "Walker2d-v5",
]

# The paper's protocol (table 3). Network: SB3's MlpPolicy default for on-policy algorithms is already
# separate 2x64 tanh networks for pi and vf with a state-independent log-std.
PROTOCOL: dict[str, Any] = dict(
    n_steps=2048, batch_size=64, n_epochs=10, learning_rate=3e-4, gamma=0.99, gae_lambda=0.95, ent_coef=0.0
)

# setting name -> (algorithm, arguments on top of the protocol)
SETTINGS: dict[str, tuple[str, dict[str, Any]]] = {
    "no-clip-no-penalty": ("ppo_kl", dict(kl_coef=0.0, adaptive_kl=False)),
    "clip-0.1": ("ppo", dict(clip_range=0.1)),
    "clip-0.2": ("ppo", dict(clip_range=0.2)),
    "clip-0.3": ("ppo", dict(clip_range=0.3)),
    "kl-adaptive-0.003": ("ppo_kl", dict(kl_target=0.003)),
    "kl-adaptive-0.01": ("ppo_kl", dict(kl_target=0.01)),
    "kl-adaptive-0.03": ("ppo_kl", dict(kl_target=0.03)),
    "kl-fixed-0.3": ("ppo_kl", dict(kl_coef=0.3, adaptive_kl=False)),
    "kl-fixed-1": ("ppo_kl", dict(kl_coef=1.0, adaptive_kl=False)),
    "kl-fixed-3": ("ppo_kl", dict(kl_coef=3.0, adaptive_kl=False)),
    "kl-fixed-10": ("ppo_kl", dict(kl_coef=10.0, adaptive_kl=False)),
    "kl-adaptive-0.01+clip-0.2": ("ppo_kl", dict(kl_target=0.01, clip_range=0.2)),
    "kl-adaptive-0.03+clip-0.2": ("ppo_kl", dict(kl_target=0.03, clip_range=0.2)),
    "trpo": ("trpo", {}),
}
PAPER_SETTINGS = list(SETTINGS)[:11]
# Issue 11's candidates for a PPOKL setting as good as clipping. None qualified; their options were removed from
# the package, so they can no longer be run (commit fbbd5b7 ran them). Their rows stay in
# results/table1.csv, and the report lists them. "mean-only": the Gaussian KL without its variance term;
# "per-state": beta * mean_s max(0, KL_s - kl_target), a penalty only where a state's KL passes the target.
REMOVED: dict[str, str] = {
    "kl-0.02+cutoff": "PPOKL, kl_target 0.02, plus modular_rl's cutoff 1000 * max(0, mean KL - 2 * kl_target)^2; lost stage 1",
    "kl-sched-0.01-0.03+cutoff": "PPOKL, kl_target rising linearly from 0.01 to 0.03, plus the same cutoff; lost stage 1",
    "kl-proportional-0.02": "PPOKL, kl_target 0.02, Ziegler et al.'s proportional controller (horizon 10,000); lost stage 1",
    "kl-meanonly-0.01": "PPOKL, kl_target 0.01, mean-only KL; lost stage 1",
    "kl-meanonly-0.02": "PPOKL, kl_target 0.02, mean-only KL; lost stage 1",
    "kl-perstate-0.02": "PPOKL, kl_target 0.02, per-state penalty on the true KL; lost stage 1",
    "kl-meanonly-sched-0.01-0.03": "PPOKL, kl_target rising linearly from 0.01 to 0.03, mean-only KL; lost stage 1",
    "kl-perstate-meanonly-0.02": "PPOKL, kl_target 0.02, per-state penalty on the mean-only KL; second of stage 1, lost stage 2",
    "kl-perstate-0.03": "PPOKL, kl_target 0.03, per-state penalty: kl-perstate-meanonly-0.03 for discrete actions (discrete check)",
    "kl-perstate-meanonly-0.03": (
        "PPOKL, kl_target 0.03, per-state penalty on the mean-only KL; best of stages 1 and 2; 0.89 of clip-0.2 at 1M (stage 3)"
    ),
}

GRIDS: dict[str, dict[str, Any]] = {
    "full": dict(settings=list(SETTINGS), envs=ENVS, seeds=[0, 1, 2], timesteps=1_000_000),
    "paper": dict(settings=PAPER_SETTINGS, envs=ENVS, seeds=[0, 1, 2], timesteps=1_000_000),
    "paper-lite": dict(settings=["clip-0.2", "kl-adaptive-0.01", "kl-fixed-1"], envs=ENVS, seeds=[0, 1, 2], timesteps=300_000),
    # issue 20: every setting not yet run at 300k; rows already in the results are skipped. The grid runs seed by
    # seed, so to finish the two clip + penalty settings first (they decide a recommendation), name them:
    # --grid table1-300k --settings kl-adaptive-0.01+clip-0.2 kl-adaptive-0.03+clip-0.2
    "table1-300k": dict(
        settings=[
            "kl-adaptive-0.01+clip-0.2",
            "kl-adaptive-0.03+clip-0.2",
            *[s for s in PAPER_SETTINGS if s not in ("clip-0.2", "kl-adaptive-0.01", "kl-fixed-1")],
            "trpo",
        ],
        envs=ENVS,
        seeds=[0, 1, 2],
        timesteps=300_000,
    ),
    # issue 20's 1M rows: the paper's headline pair on all 7 tasks (the 4 of stage 3 are done and skipped), and
    # kl-adaptive-0.03+clip-0.2, the clip + penalty setting that met the recommendation's 300k conditions
    "table1-1m": dict(
        settings=["clip-0.2", "kl-adaptive-0.01", "kl-adaptive-0.03+clip-0.2"],
        envs=ENVS,
        seeds=[0, 1, 2],
        timesteps=1_000_000,
    ),
    # issue 11's discrete check: two discrete-action tasks with the protocol above, which is SB3 PPO's default
    # hyperparameters (n_steps 2048, batch 64, 10 epochs, lr 3e-4, gamma 0.99, lambda 0.95)
    "discrete": dict(
        settings=["clip-0.2", "kl-adaptive-0.01"],
        envs=["LunarLander-v3", "Acrobot-v1"],
        seeds=[0, 1, 2],
        timesteps=300_000,
    ),
}


def machine() -> str:
    return f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}"


def make_model(setting: str, env_id: str, seed: int):
    """The model of one run: the paper's protocol plus the setting's own arguments."""
    from stable_baselines3 import PPO

    from sb3_ppo_kl import PPOKL

    algo, kwargs = SETTINGS[setting]
    env = make_vec_env(env_id, n_envs=1, seed=seed)
    if algo == "ppo":
        return PPO("MlpPolicy", env, seed=seed, **PROTOCOL, **kwargs)
    if algo == "ppo_kl":
        return PPOKL("MlpPolicy", env, seed=seed, **PROTOCOL, **kwargs)
    from sb3_contrib import TRPO

    # TRPO has no epochs or clipping; its critic takes 10 minibatch steps of 128 per update (sb3-contrib's defaults).
    return TRPO("MlpPolicy", env, seed=seed, n_steps=PROTOCOL["n_steps"], gamma=0.99, gae_lambda=0.95)


class UpdateMeasures(BaseCallback):
    """
    The same measurements for every on-policy algorithm (SB3 PPO, TRPO, PPOKL), one row per update.

    At the end of each rollout it stores the rollout's observations and the rollout policy's distribution
    parameters on them; after the update on that rollout (at the next rollout's start, or :meth:`finish`
    after ``learn``) it takes ``d``, the mean per-state KL[before || after] over those observations, with
    the package's :func:`~sb3_ppo_kl.common.kl.per_state_kl`, and the mean action std. Each row also holds
    the mean return of the last 100 training episodes when the rollout ended and, for PPOKL, beta after
    the update.
    """

    def __init__(self, progress=None) -> None:
        super().__init__()
        self.rows: list[dict[str, Any]] = []
        self.progress = progress
        self.last_steps = 0
        self._obs = None
        self._old_params = None

    def _on_step(self) -> bool:
        return True

    def _record_update(self) -> None:
        """d, std and beta of the update that trained on the last stored rollout."""
        if self._obs is None:
            return
        policy = self.model.policy
        policy.set_training_mode(False)
        with th.no_grad():
            kl = per_state_kl(self._old_params, policy.get_distribution(self._obs)).mean().item()
        std = th.exp(policy.log_std).mean().item() if hasattr(policy, "log_std") else ""
        self.rows[-1].update(kl=kl, std=std, kl_coef=getattr(self.model, "kl_coef", ""))
        self._obs = self._old_params = None

    def _on_rollout_start(self) -> None:
        self._record_update()

    def _on_rollout_end(self) -> None:
        buffer = self.model.rollout_buffer
        flat = buffer.observations.reshape(-1, *buffer.obs_shape)  # (n_steps * n_envs, *obs_shape); Box observations
        self._obs = obs_as_tensor(flat, self.model.device)
        self.model.policy.set_training_mode(False)
        with th.no_grad():
            self._old_params = distribution_params(self.model.policy.get_distribution(self._obs))
        episodes = [info["r"] for info in self.model.ep_info_buffer]
        reward = round(float(np.mean(episodes)), 2) if episodes else ""
        self.rows.append(dict(timesteps=self.num_timesteps, reward=reward, kl="", kl_coef="", std=""))
        if self.progress is not None:
            with self.progress.get_lock():
                self.progress.value += self.num_timesteps - self.last_steps
        self.last_steps = self.num_timesteps

    def finish(self) -> None:
        """Record the last update (``learn`` returns right after it)."""
        self._record_update()


def run_one(job: tuple[str, str, int, int]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Train one (setting, env, seed) for ``timesteps`` and evaluate it; return its CSV row and its curve's rows."""
    setting, env_id, seed, timesteps = job
    th.set_num_threads(1)

    model = make_model(setting, env_id, seed)
    measures = UpdateMeasures()
    start = time.perf_counter()
    model.learn(timesteps, callback=measures)
    wall = time.perf_counter() - start
    measures.finish()
    episodes = [info["r"] for info in model.ep_info_buffer]  # SB3 keeps the last 100 episodes
    # A deterministic evaluation on an env seeded apart from the training env's
    eval_env = make_vec_env(env_id, n_envs=1, seed=seed + 10_000)
    eval_returns, _ = evaluate_policy(
        model, eval_env, n_eval_episodes=EVAL_EPISODES, deterministic=True, return_episode_rewards=True
    )
    eval_env.close()
    final_kls = [row["kl"] for row in measures.rows[-FINAL_UPDATES:] if row["kl"] != ""]
    row = dict(
        setting=setting,
        env=env_id,
        seed=seed,
        timesteps=timesteps,
        score=round(float(np.mean(episodes)), 2),
        episodes=len(episodes),
        wall_seconds=round(wall, 1),
        fps=round(model.num_timesteps / wall, 1),
        final_kl_coef=getattr(model, "kl_coef", ""),
        machine=machine(),
        eval_score=round(float(np.mean(eval_returns)), 2),
        eval_episodes=len(eval_returns),
        final_kl=round(float(np.mean(final_kls)), 5) if final_kls else "",
        final_std=round(measures.rows[-1]["std"], 4) if measures.rows and measures.rows[-1]["std"] != "" else "",
    )
    return row, measures.rows


def curve_path(setting: str, env_id: str, seed: int, timesteps: int) -> Path:
    return CURVES / f"{setting}__{env_id}__{seed}__{timesteps}.csv"


def run_grid(
    settings: list[str],
    envs: list[str],
    seeds: list[int],
    timesteps: int,
    workers: int,
    remeasure: bool = False,
    ray_address: str | None = None,
    ray_working_dir: str | Path | None = None,
) -> None:
    """
    Run the grid's unfinished runs. With ``remeasure``, rerun instead its finished runs that have no deterministic
    evaluation (rows from before that column existed) and replace their rows: a seeded run reproduces its training
    score, so this adds the evaluation, ``d`` and std columns, and the curve's ``d`` and std.

    The runs go to a pool of ``workers`` local processes, or to the Ray cluster at ``ray_address``
    (:func:`~benchmarks.common.run_jobs`); either way this process alone writes the rows and curves, as each run
    finishes. Raises :class:`~benchmarks.common.RunsFailed` at the end if some runs raised.
    """
    from tqdm import tqdm

    rows = {(r["setting"], r["env"], int(r["seed"]), int(r["timesteps"])): r for r in read_rows(RESULTS)}
    grid = list(dict.fromkeys((setting, env, seed, timesteps) for seed in seeds for env in envs for setting in settings))
    if remeasure:
        jobs = [job for job in grid if job in rows and rows[job]["eval_score"] == ""]
    else:
        jobs = [job for job in grid if job not in rows]
    where = f"Ray cluster {ray_address}" if ray_address else f"{workers} workers"
    print(f"{len(jobs)} runs to {'re-measure' if remeasure else 'do'}, {len(rows)} rows in {RESULTS}; {where}", flush=True)
    start = time.perf_counter()
    key = ["setting", "env", "seed", "timesteps"]
    for job, (row, curve) in run_jobs(
        run_one,
        jobs,
        workers=workers,
        ray_address=ray_address,
        ray_working_dir=ray_working_dir,
        describe=lambda job: " ".join(map(str, job)),
    ):
        write_rows(curve_path(*job), CURVE_FIELDS, curve)  # before its row: a row always has its curve
        if remeasure:
            old = replace_row(RESULTS, FIELDS, key, row)
            same = "reproduced" if float(old["score"]) == row["score"] else f"WAS {old['score']}"
            tqdm.write(f"{row['setting']} {row['env']} seed {row['seed']}: {row['score']} ({same}), eval {row['eval_score']}")
        elif append_new_row(RESULTS, FIELDS, key, row):
            tqdm.write(f"{row['setting']} {row['env']} seed {row['seed']}: {row['score']} ({row['fps']} fps)")
    if jobs:
        print(f"grid finished in {time.perf_counter() - start:.0f} s", flush=True)


def measure_random(envs: list[str], episodes: int = 100, seed: int = 0) -> None:
    """The random policy's score per env: mean total reward of ``episodes`` episodes of uniform random actions."""
    import gymnasium as gym

    done = {r["env"] for r in read_rows(RANDOM)}
    for env_id in envs:
        if env_id in done:
            continue
        env = gym.make(env_id)
        env.action_space.seed(seed)
        totals = []
        for episode in range(episodes):
            env.reset(seed=seed + episode)
            total, finished = 0.0, False
            while not finished:
                _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
                total += float(reward)
                finished = terminated or truncated
            totals.append(total)
        append_row(
            RANDOM,
            ["env", "episodes", "mean", "std"],
            dict(env=env_id, episodes=episodes, mean=round(float(np.mean(totals)), 2), std=round(float(np.std(totals)), 2)),
        )
        print(env_id, round(float(np.mean(totals)), 2), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", choices=list(GRIDS), default="full", help="preset; the options below override it")
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS))
    parser.add_argument("--envs", nargs="+")
    parser.add_argument("--seeds", nargs="+", type=int)
    parser.add_argument("--timesteps", type=int)
    parser.add_argument("--random", action="store_true", help="measure the random policy's score on the envs and exit")
    parser.add_argument(
        "--remeasure",
        action="store_true",
        help="rerun the grid's finished runs that lack a deterministic evaluation, replacing their rows",
    )
    add_dispatch_arguments(parser)
    args = parser.parse_args()
    dispatch = dispatch_options(parser, args)
    if args.results_dir is not None:
        use_results_dir(args.results_dir)
    grid = dict(GRIDS[args.grid])
    for key in ("settings", "envs", "seeds", "timesteps"):
        if getattr(args, key) is not None:
            grid[key] = getattr(args, key)
    if args.random:
        measure_random(grid["envs"])
        return
    try:
        run_grid(grid["settings"], grid["envs"], grid["seeds"], grid["timesteps"], remeasure=args.remeasure, **dispatch)
    except (RunsFailed, FingerprintMismatch) as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    # the importable module's main: its functions, not copies of __main__'s, go to the workers
    from benchmarks.run import main as imported_main

    imported_main()
