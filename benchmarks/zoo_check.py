"""
Check the shipped RL Zoo hyperparameters (sb3_ppo_kl/zoo/hyperparams/ppo_kl.yml) by running them.

For each (env, seed): ``python -m sb3_ppo_kl.zoo train`` with the shipped entry and its full
timestep budget, then ``python -m sb3_ppo_kl.zoo enjoy --deterministic`` for ``--eval-steps``
steps, as RL Zoo's benchmark does. One CSV row per finished run, with a fingerprint of the entry it ran
(``entry``); a rerun skips the runs finished with the entry as it is now, and the summary counts only those
(rows from before the fingerprint was recorded count while no row of theirs records one).

    python -m benchmarks.zoo_check --envs CartPole-v1 Pendulum-v1 --seeds 0 1 2
    python -m benchmarks.zoo_check --algo ppo --envs MountainCarContinuous-v0   # SB3 PPO, RL Zoo's own entry, same seeds
    python -m benchmarks.zoo_check --envs Ant-v5 --seeds 0 --params kl_target:0.03   # a variant of the shipped entry
    python -m benchmarks.zoo_check --summary
"""

import argparse
import hashlib
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rl_zoo3
import yaml
from tqdm import tqdm

from benchmarks.dispatch import exit_on_failure, parse_arguments, run_jobs
from benchmarks.results import ResultsDir, append_new_row, read_rows
from sb3_ppo_kl.zoo import ALGOS, default_config

RESULTS_CSV = "zoo_check.csv"
# the RL Zoo algorithm each of ours is compared with, on the same seeds
SB3_COUNTERPART = {"ppo_kl": "ppo", "ppo_kl_lstm": "ppo_lstm", "ppo_kl_mask": "ppo_mask"}
FIELDS = ["algo", "env", "seed", "n_timesteps", "mean_reward", "std_reward", "episodes", "train_seconds", "params", "entry"]

# RL Zoo's published PPO scores (benchmark.md of rl-baselines3-zoo; MuJoCo rows are -v3, Box2D -v2)
ZOO_PPO_SCORE = {
    "CartPole-v1": 500.0,
    "Acrobot-v1": -73.506,
    "MountainCar-v0": -110.423,
    "MountainCarContinuous-v0": 88.343,
    "Pendulum-v1": -172.225,
    "LunarLander-v3": 242.119,
    "LunarLanderContinuous-v3": 270.863,
    "BipedalWalker-v3": 213.299,
    "HalfCheetah-v5": 5819.099,
    "Hopper-v5": 2410.435,
    "Walker2d-v5": 3478.798,
    "Ant-v5": 1327.158,
    "Swimmer-v5": 281.561,
}


def zoo_entry(algo: str, env: str) -> tuple[str, dict]:
    """
    The hyperparameter file and entry that ``train --algo algo --env env`` uses: ours for our
    algorithms, RL Zoo's for its own. RL Zoo 2.9 tunes MuJoCo at -v4; for a -v5 env without an
    entry of its own, its -v4 entry is used (written to a temporary file passed as ``-conf``).
    """
    config = default_config(algo) if algo in ALGOS else str(Path(rl_zoo3.__file__).parent / "hyperparams" / f"{algo}.yml")
    with open(config) as file:
        entries = yaml.load(file, Loader=yaml.UnsafeLoader)  # RL Zoo's files use !!float tags
    if env not in entries and env.endswith("-v5") and env[:-1] + "4" in entries:
        return config, entries[env[:-1] + "4"]
    return config, entries[env]


def entry_id(entry: dict) -> str:
    """A short fingerprint of a hyperparameter entry: rows record the entry they ran, so a changed entry's old
    rows are not mixed with its new ones."""
    return hashlib.sha1(json.dumps(entry, sort_keys=True, default=str).encode()).hexdigest()[:10]


def current_rows(rows: list[dict], algo: str, env: str) -> list[dict]:
    """
    The rows of ``algo`` on ``env`` with the entry as it is now (no ``--params``). Rows from before the entry
    was recorded count only where no row records it: they ran some earlier version of the entry.
    """
    rows = [r for r in rows if r["algo"] == algo and r["env"] == env and not r["params"]]
    try:
        current = entry_id(zoo_entry(algo, env)[1])
    except KeyError:  # no entry for env (any more): no row is current
        return []
    recorded = [r for r in rows if r.get("entry")]
    return [r for r in recorded if r["entry"] == current] if recorded else rows


def run_one(algo: str, env: str, seed: int, eval_steps: int, params: list[str]) -> dict:
    _, entry = zoo_entry(algo, env)
    with tempfile.TemporaryDirectory() as folder:
        conf = Path(folder) / "conf.yml"
        conf.write_text(yaml.dump({env: entry}))
        zoo = [sys.executable, "-m", "sb3_ppo_kl.zoo"]
        start = time.perf_counter()
        subprocess.run(
            [
                *zoo,
                "train",
                "--algo",
                algo,
                "--env",
                env,
                "-f",
                folder,
                "--seed",
                str(seed),
                "--num-threads",
                "1",
                "--log-interval",
                "-2",
                "-conf",
                str(conf),
                *(["-params", *params] if params else []),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        train_seconds = time.perf_counter() - start
        out = subprocess.run(
            [
                *zoo,
                "enjoy",
                "--algo",
                algo,
                "--env",
                env,
                "-f",
                folder,
                "--no-render",
                "--deterministic",
                "-n",
                str(eval_steps),
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    mean, std = map(float, re.search(r"Mean reward: (\S+) \+/- (\S+)", out).groups())
    episodes = int(re.findall(r"(\d+) Episodes", out)[-1])
    return dict(
        algo=algo,
        env=env,
        seed=seed,
        n_timesteps=int(float(entry["n_timesteps"])),
        mean_reward=mean,
        std_reward=std,
        episodes=episodes,
        train_seconds=round(train_seconds),
        params=" ".join(params),
        entry=entry_id(entry),
    )


def run_job(job: tuple[str, str, int, int, tuple[str, ...]]) -> dict:
    """:func:`run_one` of (algo, env, seed, eval steps, params)."""
    algo, env, seed, eval_steps, params = job
    return run_one(algo, env, seed, eval_steps, list(params))


def summary(results: ResultsDir, algo: str) -> str:
    """The markdown table of ``algo``'s shipped entries (current rows only) beside its counterpart's, then any variants."""
    rows = read_rows(results / RESULTS_CSV)
    counterpart = SB3_COUNTERPART[algo]
    lines = [
        f"| env | budget | {algo} mean ± std over seeds | seeds | {counterpart}, RL Zoo's entry, same seeds | RL Zoo PPO score |",
        "|---|---|---|---|---|---|",
    ]
    with open(default_config(algo)) as file:
        shipped = yaml.safe_load(file)
    for env in shipped:
        sel = current_rows(rows, algo, env)
        zoo = ZOO_PPO_SCORE.get(env)
        zoo_text = "n/a" if zoo is None else f"{zoo:g}"
        ppo = np.array([float(r["mean_reward"]) for r in current_rows(rows, counterpart, env)])
        ppo_text = f"{ppo.mean():.1f} ± {ppo.std():.1f} ({len(ppo)} seed{'s' * (len(ppo) > 1)})" if len(ppo) else "not run"
        if not sel:
            lines.append(f"| {env} | | not run | | {ppo_text} | {zoo_text} |")
            continue
        scores = np.array([float(r["mean_reward"]) for r in sel])
        per_seed = ", ".join(f"{x:.1f}" for x in scores)
        lines.append(
            f"| {env} | {int(sel[0]['n_timesteps']):,} | {scores.mean():.1f} ± {scores.std():.1f} ({per_seed}) | {len(sel)} "
            f"| {ppo_text} | {zoo_text} |"
        )
    variants = [r for r in rows if r["algo"] == algo and r["params"]]
    if variants:
        lines += ["", "Variants of shipped entries (`--params`), not part of the table above:", ""]
        lines += ["| env | -params | seed | budget | mean reward |", "|---|---|---|---|---|"]
        for r in variants:
            lines.append(
                f"| {r['env']} | `{r['params']}` | {r['seed']} | {int(r['n_timesteps']):,} | {float(r['mean_reward']):.1f} |"
            )
    return "\n".join(lines)


def run(
    results: ResultsDir, algo: str, envs: list[str], seeds: list[int], eval_steps: int, params: list[str], **dispatch
) -> None:
    """
    The unfinished runs of ``algo`` on ``envs``, recorded in ``results``: a run is done when a row with its seed and
    ``params`` records the entry as it is now (a row from before the entry was recorded does not count: it may have
    run an earlier version).
    """
    path = results / RESULTS_CSV
    rows = read_rows(path)
    jobs = []
    for env in envs:
        current = entry_id(zoo_entry(algo, env)[1])
        done = {
            int(r["seed"])
            for r in rows
            if r["algo"] == algo and r["env"] == env and r["params"] == " ".join(params) and r.get("entry") == current
        }
        jobs += [(algo, env, seed, eval_steps, tuple(params)) for seed in seeds if seed not in done]
    for _, row in run_jobs(run_job, jobs, **dispatch, describe=lambda job: " ".join(map(str, job[:3]))):
        if append_new_row(path, FIELDS, ["algo", "env", "seed", "params", "entry"], row):
            tqdm.write(str(row))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algo", default="ppo_kl")
    parser.add_argument("--envs", nargs="+", default=[])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--eval-steps", type=int, default=10_000)
    parser.add_argument("--params", nargs="+", default=[], help="RL Zoo -params on top of the entry (recorded per row)")
    parser.add_argument("--summary", action="store_true")
    args, dispatch, results = parse_arguments(parser, workers=1)
    if args.summary:
        print(summary(results, args.algo))
        return
    with exit_on_failure():
        run(results, args.algo, args.envs, args.seeds, args.eval_steps, args.params, **dispatch)


if __name__ == "__main__":
    # the importable module's main: its functions, not copies of __main__'s, go to the workers
    from benchmarks.zoo_check import main as imported_main

    imported_main()
