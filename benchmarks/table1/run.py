"""
Table 1 runs: one run, the resumable grid of them, and the random policy's scores.

A run trains one setting on one env and seed, measures every update the same way and evaluates the result.
"""

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.utils import obs_as_tensor

from benchmarks.dispatch import machine, run_jobs
from benchmarks.results import ResultsDir, append_new_row, append_row, read_rows, replace_row, write_rows
from benchmarks.table1.grid import (
    CURVE_FIELDS,
    EVAL_EPISODES,
    FIELDS,
    FINAL_UPDATES,
    KEY,
    PROTOCOL,
    RANDOM_CSV,
    RANDOM_FIELDS,
    RESULTS_CSV,
    curve_name,
    setting,
)
from sb3_ppo_kl.common.kl import distribution_params, per_state_kl


def make_model(name: str, env_id: str, seed: int):
    """The model of one run: the paper's protocol plus the setting's own arguments."""
    from stable_baselines3 import PPO

    from sb3_ppo_kl import PPOKL

    spec = setting(name)
    if spec.removed:
        raise ValueError(f"setting {name!r} was removed (its options are gone): it can no longer be run")
    if spec.trial_commit is not None:
        raise ValueError(
            f"setting {name!r} is one of issue 32's settled design trials of the stop: commit {spec.trial_commit} can "
            "run it (git checkout it); kl_stop now does what the winners did"
        )
    algo, kwargs = spec.algo, spec.kwargs
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
    the update. (The curves' epochs, minibatches and stopped columns were filled by the stop inside the update,
    ``kl_stop``, removed by issue 45: blank in every new curve.)
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
        self.rows.append(dict.fromkeys(CURVE_FIELDS, "") | dict(timesteps=self.num_timesteps, reward=reward))
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


def run_grid(
    results: ResultsDir,
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
    Run the grid's unfinished runs, recorded in ``results``. With ``remeasure``, rerun instead its finished runs that
    have no deterministic evaluation (rows from before that column existed) and replace their rows: a seeded run
    reproduces its training score, so this adds the evaluation, ``d`` and std columns, and the curve's ``d`` and std.

    The runs go to a pool of ``workers`` local processes, or to the Ray cluster at ``ray_address``
    (:func:`~benchmarks.dispatch.run_jobs`); either way this process alone writes the rows and curves, as each run
    finishes. Raises :class:`~benchmarks.dispatch.RunsFailed` at the end if some runs raised.
    """
    from tqdm import tqdm

    path = results / RESULTS_CSV
    rows = {(r["setting"], r["env"], int(r["seed"]), int(r["timesteps"])): r for r in read_rows(path)}
    grid = list(dict.fromkeys((name, env, seed, timesteps) for seed in seeds for env in envs for name in settings))
    if remeasure:
        jobs = [job for job in grid if job in rows and rows[job]["eval_score"] == ""]
    else:
        jobs = [job for job in grid if job not in rows]
    where = f"Ray cluster {ray_address}" if ray_address else f"{workers} workers"
    print(f"{len(jobs)} runs to {'re-measure' if remeasure else 'do'}, {len(rows)} rows in {path}; {where}", flush=True)
    start = time.perf_counter()
    for job, (row, curve) in run_jobs(
        run_one,
        jobs,
        workers=workers,
        ray_address=ray_address,
        ray_working_dir=ray_working_dir,
        describe=lambda job: " ".join(map(str, job)),
    ):
        write_rows(results / curve_name(*job), CURVE_FIELDS, curve)  # before its row: a row always has its curve
        if remeasure:
            old = replace_row(path, FIELDS, KEY, row)
            same = "reproduced" if float(old["score"]) == row["score"] else f"WAS {old['score']}"
            tqdm.write(f"{row['setting']} {row['env']} seed {row['seed']}: {row['score']} ({same}), eval {row['eval_score']}")
        elif append_new_row(path, FIELDS, KEY, row):
            tqdm.write(f"{row['setting']} {row['env']} seed {row['seed']}: {row['score']} ({row['fps']} fps)")
    if jobs:
        print(f"grid finished in {time.perf_counter() - start:.0f} s", flush=True)


def measure_random(results: ResultsDir, envs: list[str], episodes: int = 100, seed: int = 0) -> None:
    """
    The random policy's score per env, recorded in ``results``: mean total reward of ``episodes`` episodes of uniform
    random actions.
    """
    import gymnasium as gym

    done = {r["env"] for r in read_rows(results / RANDOM_CSV)}
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
            results / RANDOM_CSV,
            RANDOM_FIELDS,
            dict(env=env_id, episodes=episodes, mean=round(float(np.mean(totals)), 2), std=round(float(np.std(totals)), 2)),
        )
        print(env_id, round(float(np.mean(totals)), 2), flush=True)
