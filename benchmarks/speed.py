"""
Wall-clock per timestep of PPOKL against SB3 PPO with identical hyperparameters, side by side.

Both algorithms run in one process, alternating (PPO, PPOKL, PPOKL, PPO, ...) so that load on a
shared machine hits both alike. Each run trains ``--timesteps`` steps from scratch; the first
round is a discarded warm-up. Reported: median seconds per 1000 timesteps and the ratio
PPOKL / PPO (below 1.0 means PPOKL is faster).

    python -m benchmarks.speed --rounds 5
"""

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch as th

ENVS = ("CartPole-v1", "Pendulum-v1")


def time_run(algo: str, env_id: str, timesteps: int, seed: int, clip: bool) -> float:
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env

    from sb3_ppo_kl import PPOKL

    env = make_vec_env(env_id, n_envs=1, seed=seed)
    # SB3 PPO's defaults, which are PPOKL's too: n_steps=2048, batch_size=64, n_epochs=10, lr=3e-4
    if algo == "ppo":
        model = PPO("MlpPolicy", env, seed=seed, device="cpu")
    else:
        model = PPOKL("MlpPolicy", env, seed=seed, device="cpu", clip_range=0.2 if clip else None)
    start = time.perf_counter()
    model.learn(timesteps)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--timesteps", type=int, default=16_384)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "speed.json")
    args = parser.parse_args()
    th.set_num_threads(args.threads)

    algos = ("ppo", "ppo_kl", "ppo_kl_clip")
    results = {}
    for env_id in ENVS:
        times: dict[str, list[float]] = {a: [] for a in algos}
        for round_ in range(args.rounds + 1):
            order = algos if round_ % 2 == 0 else algos[::-1]
            for algo in order:
                seconds = time_run(algo.removesuffix("_clip"), env_id, args.timesteps, round_, algo.endswith("_clip"))
                if round_ > 0:  # round 0 warms up
                    times[algo].append(seconds)
        per_k = {a: 1000 * statistics.median(t) / args.timesteps for a, t in times.items()}
        results[env_id] = {
            "seconds_per_1000_steps": per_k,
            "ratio_ppo_kl_to_ppo": per_k["ppo_kl"] / per_k["ppo"],
            "ratio_ppo_kl_clip_to_ppo": per_k["ppo_kl_clip"] / per_k["ppo"],
            "runs": times,
        }
        print(
            f"{env_id}: PPO {per_k['ppo']:.3f} s/1k steps, PPOKL {per_k['ppo_kl']:.3f} "
            f"(ratio {per_k['ppo_kl'] / per_k['ppo']:.3f}), PPOKL+clip {per_k['ppo_kl_clip']:.3f} "
            f"(ratio {per_k['ppo_kl_clip'] / per_k['ppo']:.3f})",
            flush=True,
        )
    results["setup"] = {
        "rounds": args.rounds,
        "timesteps_per_run": args.timesteps,
        "torch_threads": args.threads,
        "torch": th.__version__,
        "machine": f"{platform.machine()}, {platform.processor() or 'unknown cpu'}",
        "hyperparameters": "SB3 PPO defaults (n_steps=2048, batch_size=64, n_epochs=10), MlpPolicy, 1 env",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
