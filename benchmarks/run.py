"""
The paper's Table 1 grid (Schulman et al. 2017, https://arxiv.org/abs/1707.06347): runs (setting x env x seed).

Settings are named after the rows of Table 1, plus three beyond the paper:

- ``no-clip-no-penalty``: the plain importance-sampled surrogate (PPOKL with beta 0, fixed, no clipping);
- ``clip-0.1``, ``clip-0.2``, ``clip-0.3``: SB3 PPO with that clip range;
- ``kl-adaptive-0.003``, ``kl-adaptive-0.01``, ``kl-adaptive-0.03``: PPOKL, adaptive beta with that d_targ
  (``kl-adaptive-0.01`` is PPOKL's defaults);
- ``kl-fixed-0.3``, ``kl-fixed-1``, ``kl-fixed-3``, ``kl-fixed-10``: PPOKL, beta fixed at that value;
- ``kl-adaptive-0.01+clip-0.2``: PPOKL's adaptive penalty with clipping 0.2 on top (RLlib's PPO design);
- ``kl-adaptive-0.03+clip-0.2``: the same with the target near clipping's own ``d``, so that the penalty acts only
  where an update overshoots;
- ``trpo``: sb3-contrib TRPO (its defaults: target KL 0.01, line search), on the same network and rollout.

Issue 32's settings, for a beta that keeps ``d`` inside ``[kl_target / 1.5, kl_target * 1.5]``, are removed options
(issue 45): ``kl-logprop-0.01`` (``LogProportionalKLController``), ``kl-adaptive-0.01+stop`` (``kl_stop=1.0``,
``kl_stop_interval=4``) and ``kl-logprop-0.01+stop`` (both) lost on score, and the options are gone from the package;
commit e562871 runs them. So are the stop's design trials (``TRIALS`` in ``benchmarks/table1/grid.py``): commit
9ec2d75 runs the first seven, 295c1bd ``trial-stop-late`` and e562871 ``trial-stop-top``. Their rows stay in the
results, marked as removed.

Issue 11 searched for a PPOKL setting that learns at least as well as clipping: nine candidates in three
stages and a discrete check (``benchmarks/RESULTS.md``). None qualified, and their options were removed
from the package; their rows stay in the results, and ``REMOVED`` in ``benchmarks/table1/grid.py`` describes each. The code that ran
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

Every run is measured the same way, whatever its algorithm (``benchmarks.table1.run.UpdateMeasures``): after each update,
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

from benchmarks.dispatch import exit_on_failure, parse_arguments
from benchmarks.table1.grid import GRIDS, SETTINGS, TRIALS
from benchmarks.table1.run import measure_random, run_grid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", choices=list(GRIDS), default="full", help="preset; the options below override it")
    open_trials = [name for name, (_, _, commit) in TRIALS.items() if commit is None]  # the trials this code runs
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS) + open_trials)
    parser.add_argument("--envs", nargs="+")
    parser.add_argument("--seeds", nargs="+", type=int)
    parser.add_argument("--timesteps", type=int)
    parser.add_argument("--random", action="store_true", help="measure the random policy's score on the envs and exit")
    parser.add_argument(
        "--remeasure",
        action="store_true",
        help="rerun the grid's finished runs that lack a deterministic evaluation, replacing their rows",
    )
    args, dispatch, results = parse_arguments(parser)
    grid = dict(GRIDS[args.grid])
    for key in ("settings", "envs", "seeds", "timesteps"):
        if getattr(args, key) is not None:
            grid[key] = getattr(args, key)
    if args.random:
        measure_random(results, grid["envs"])
        return
    with exit_on_failure():
        run_grid(
            results, grid["settings"], grid["envs"], grid["seeds"], grid["timesteps"], remeasure=args.remeasure, **dispatch
        )


if __name__ == "__main__":
    main()
