"""
Wall-clock per timestep of PPOKL and its variants against their SB3 / sb3-contrib counterparts.

The same hyperparameters, side by side.

Each pair runs in one process, alternating (original, ours, ours, original, ...) so that load on a shared
machine hits both alike. Each run trains ``--timesteps`` steps from scratch; the first round is a discarded
warm-up. Reported: median seconds per 1000 timesteps and the ratio ours / original (below 1.0 means ours is
faster). The pairs:

- ``CartPole-v1``, ``Pendulum-v1``: PPOKL (and PPOKL with clipping 0.2 on top) against SB3 PPO, at SB3 PPO's
  defaults (n_steps 2048, batch_size 64, n_epochs 10), one env;
- ``mask``: MaskablePPOKL against MaskablePPO on sb3-contrib's ``InvalidActionEnvDiscrete`` (10 actions,
  4 masked), MaskablePPO's defaults, one env;
- ``lstm``: RecurrentPPOKL against RecurrentPPO on CartPole-v1 with 8 envs, n_steps 128, batch_size 256,
  10 epochs, lr 7e-4, LSTM 64;
- ``finite_check``: the cost of PPOKL's check of the environment's observations and rewards
  (``check_finite_env``): PPOKL with it against PPOKL without it, both without torch's distribution checks, on
  CartPole-v1 (the cheapest step, so the largest share), one env, SB3 PPO's defaults. Not in the default set of
  pairs.
- ``HalfCheetah-v5``: PPOKL against SB3 PPO on the paper's protocol (one env, n_steps 2048, batch_size 64, 10 epochs,
  lr 3e-4: SB3 PPO's defaults). Not in the default set (MuJoCo).

PPOKL's ``learn()`` makes two torch settings SB3 PPO does not, neither of which changes a number: on CPU it steps its
default Adam with torch's multi-tensor implementation (``sb3_ppo_kl/common/optim.py``), and while it checks the
environment's outputs it skips torch's checks of the action distributions (``distribution_validation_skipped`` in
``sb3_ppo_kl/common/finite.py``). The Pendulum-v1 and HalfCheetah-v5 pairs therefore also run ``ppo_foreach``, SB3 PPO
with the first, and ``ppo_as_ppokl``, SB3 PPO with both, and report ours against them too: against ``ppo_as_ppokl``
the ratio is PPOKL's own extra work per step.

Besides the ratio of the medians, every pair reports the median of the per-round ratios (``ratio_pairs_...``: round r's
ours over round r's original, the two run side by side), and where the time goes: the seconds per 1000 steps spent in
``train()`` (the update) and outside it (the rollout: ``collect_rollouts`` and the callbacks).

    python -m benchmarks.speed --rounds 5
    python -m benchmarks.speed --rounds 5 --pairs lstm mask --timesteps 8192
    python -m benchmarks.speed --rounds 10 --pairs finite_check
    python -m benchmarks.speed --rounds 5 --pairs Pendulum-v1 HalfCheetah-v5
"""

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch as th

from benchmarks.results import ResultsDir


def _skip_validation(model: Any) -> None:
    """Let ``model.learn()`` run without torch's checks of distribution arguments, as PPOKL's does by default."""
    from sb3_ppo_kl.common.finite import distribution_validation_skipped

    learn = model.learn

    def learn_unvalidated(*args: Any, **kwargs: Any) -> Any:
        with distribution_validation_skipped(True):
            return learn(*args, **kwargs)

    model.learn = learn_unvalidated


def _ppo(clip: bool | None, multi_tensor_adam: bool = False, unvalidated: bool = False) -> Callable[[str, int], Any]:
    def make(env_id: str, seed: int) -> Any:
        from stable_baselines3 import PPO
        from stable_baselines3.common.env_util import make_vec_env

        from sb3_ppo_kl import PPOKL
        from sb3_ppo_kl.common.optim import use_multi_tensor_adam

        env = make_vec_env(env_id, n_envs=1, seed=seed)
        # SB3 PPO's defaults, which are PPOKL's too: n_steps=2048, batch_size=64, n_epochs=10, lr=3e-4
        if clip is None:
            model = PPO("MlpPolicy", env, seed=seed, device="cpu")
            if multi_tensor_adam:  # the multi-tensor step PPOKL's learn() switches its Adam to on CPU
                use_multi_tensor_adam(model.policy.optimizer)
            if unvalidated:  # torch's distribution checks, which PPOKL's learn() skips while it checks the env
                _skip_validation(model)
            return model
        return PPOKL("MlpPolicy", env, seed=seed, device="cpu", clip_range=0.2 if clip else None)

    return make


def _finite_check(check: bool) -> Callable[[str, int], Any]:
    def make(env_id: str, seed: int) -> Any:
        from stable_baselines3.common.env_util import make_vec_env

        from sb3_ppo_kl import PPOKL

        model = PPOKL("MlpPolicy", make_vec_env(env_id, n_envs=1, seed=seed), seed=seed, device="cpu")
        model.check_finite_env = check
        if not check:  # without the check PPOKL has torch validate its distributions: skip that too, as with it
            _skip_validation(model)
        return model

    return make


def _maskable(ours: bool) -> Callable[[str, int], Any]:
    def make(env_id: str, seed: int) -> Any:
        from sb3_contrib import MaskablePPO
        from sb3_contrib.common.envs import InvalidActionEnvDiscrete
        from stable_baselines3.common.env_util import make_vec_env

        from sb3_ppo_kl import MaskablePPOKL

        env = make_vec_env(lambda: InvalidActionEnvDiscrete(dim=10, n_invalid_actions=4), n_envs=1, seed=seed)
        return (MaskablePPOKL if ours else MaskablePPO)("MlpPolicy", env, seed=seed, device="cpu")

    return make


def _recurrent(ours: bool) -> Callable[[str, int], Any]:
    def make(env_id: str, seed: int) -> Any:
        from sb3_contrib import RecurrentPPO
        from stable_baselines3.common.env_util import make_vec_env

        from sb3_ppo_kl import RecurrentPPOKL

        env = make_vec_env(env_id, n_envs=8, seed=seed)
        kwargs = dict(n_steps=128, batch_size=256, n_epochs=10, learning_rate=7e-4, policy_kwargs=dict(lstm_hidden_size=64))
        return (RecurrentPPOKL if ours else RecurrentPPO)("MlpLstmPolicy", env, seed=seed, device="cpu", **kwargs)

    return make


# pair name -> (env id, {algorithm name: factory}); the first algorithm is the baseline of the ratios
PAIRS: dict[str, tuple[str, dict[str, Callable[[str, int], Any]]]] = {
    "CartPole-v1": ("CartPole-v1", {"ppo": _ppo(None), "ppo_kl": _ppo(False), "ppo_kl_clip": _ppo(True)}),
    "Pendulum-v1": (
        "Pendulum-v1",
        {
            "ppo": _ppo(None),
            "ppo_kl": _ppo(False),
            "ppo_kl_clip": _ppo(True),
            "ppo_foreach": _ppo(None, True),
            "ppo_as_ppokl": _ppo(None, True, True),
        },
    ),
    "mask": ("InvalidActionEnvDiscrete", {"maskable_ppo": _maskable(False), "maskable_ppo_kl": _maskable(True)}),
    "lstm": ("CartPole-v1", {"recurrent_ppo": _recurrent(False), "recurrent_ppo_kl": _recurrent(True)}),
    "finite_check": ("CartPole-v1", {"ppo_kl_unchecked": _finite_check(False), "ppo_kl": _finite_check(True)}),
    "HalfCheetah-v5": (
        "HalfCheetah-v5",
        {"ppo": _ppo(None), "ppo_kl": _ppo(False), "ppo_foreach": _ppo(None, True), "ppo_as_ppokl": _ppo(None, True, True)},
    ),
}


def time_run(make: Callable[[str, int], Any], env_id: str, timesteps: int, seed: int) -> tuple[float, float]:
    """Seconds of one run's ``learn()``, and of those the seconds in ``train()`` (the updates)."""
    model = make(env_id, seed)
    train, in_train = model.train, [0.0]

    def timed_train() -> None:
        start = time.perf_counter()
        train()
        in_train[0] += time.perf_counter() - start

    model.train = timed_train
    start = time.perf_counter()
    model.learn(timesteps)
    return time.perf_counter() - start, in_train[0]


def measure(pair: str, rounds: int, timesteps: int) -> dict[str, Any]:
    """Alternating runs of every algorithm of ``pair``; the median seconds per 1000 steps and the ratios."""
    env_id, makers = PAIRS[pair]
    names = list(makers)
    times: dict[str, list[float]] = {name: [] for name in names}
    updates: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(rounds + 1):
        for name in names if round_ % 2 == 0 else names[::-1]:
            seconds, in_train = time_run(makers[name], env_id, timesteps, round_)
            if round_ > 0:  # round 0 warms up
                times[name].append(seconds)
                updates[name].append(in_train)
    per_k = {name: 1000 * statistics.median(t) / timesteps for name, t in times.items()}
    update_k = {name: 1000 * statistics.median(t) / timesteps for name, t in updates.items()}
    rollout_k = {
        name: 1000 * statistics.median(a - u for a, u in zip(times[name], updates[name])) / timesteps for name in names
    }
    # the ratios of every other algorithm to the first; and of ours to SB3 PPO with PPOKL's torch settings, if run
    baselines = [names[0]] + [name for name in names if name in ("ppo_foreach", "ppo_as_ppokl")]
    compared = [(name, base) for base in baselines for name in names if name != base and name not in baselines]
    ratios = {f"ratio_{name}_to_{base}": per_k[name] / per_k[base] for name, base in compared}
    pairs = {
        f"ratio_pairs_{name}_to_{base}": statistics.median(o / b for o, b in zip(times[name], times[base]))
        for name, base in compared
    }
    pairs |= {
        f"ratio_pairs_update_{name}_to_{base}": statistics.median(o / b for o, b in zip(updates[name], updates[base]))
        for name, base in compared
    }
    return {
        "env": env_id,
        "seconds_per_1000_steps": per_k,
        "update_seconds_per_1000_steps": update_k,
        "rollout_seconds_per_1000_steps": rollout_k,
        **ratios,
        **pairs,
        "runs": times,
        "update_runs": updates,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--timesteps", type=int, default=16_384)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--pairs",
        nargs="+",
        choices=list(PAIRS),
        default=[pair for pair in PAIRS if pair not in ("finite_check", "HalfCheetah-v5")],
    )
    parser.add_argument("--out", type=Path, default=ResultsDir() / "speed.json", help="the JSON file of the results")
    args = parser.parse_args()
    th.set_num_threads(args.threads)

    # a partial run (--pairs) updates its pairs and keeps the others' last results
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    for pair in args.pairs:
        results[pair] = {
            **measure(pair, args.rounds, args.timesteps),
            "rounds": args.rounds,
            "timesteps_per_run": args.timesteps,
        }
        per_k = results[pair]["seconds_per_1000_steps"]
        ratios = ", ".join(f"{k.removeprefix('ratio_')} {v:.3f}" for k, v in results[pair].items() if k.startswith("ratio_"))
        print(f"{pair}: " + ", ".join(f"{name} {s:.3f} s/1k steps" for name, s in per_k.items()) + f"; {ratios}", flush=True)
        split = results[pair]
        print(
            "  update (train) / rollout, s/1k steps: "
            + ", ".join(
                f"{name} {split['update_seconds_per_1000_steps'][name]:.3f} / {split['rollout_seconds_per_1000_steps'][name]:.3f}"
                for name in per_k
            ),
            flush=True,
        )
        results["setup"] = {
            "torch_threads": args.threads,
            "torch": th.__version__,
            "machine": f"{platform.machine()}, {platform.processor() or 'unknown cpu'}",
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
