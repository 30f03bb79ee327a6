"""
The Table 1 results of a folder, loaded once into typed runs with their curves.

Every row of ``table1.csv`` becomes a :class:`Run`, its curve read with it; the random policy's scores come along.
"""

from dataclasses import dataclass, field

import numpy as np

from benchmarks.results import ResultsDir, read_columns, read_rows
from benchmarks.table1.grid import CURVE_FIELDS, ENVS, RANDOM_CSV, RESULTS_CSV, curve_name, setting

# a run's curve: one array per column of CURVE_FIELDS, one value per update (NaN where not recorded)
Curve = dict[str, np.ndarray]


@dataclass(frozen=True)
class Run:
    """
    One finished run (a row of ``table1.csv``): the measures the report uses, None where a row from before that
    column existed left it blank, and its curve (None where the file is missing).
    """

    setting: str
    env: str
    seed: int
    timesteps: int
    score: float
    machine: str = ""
    eval_score: float | None = None
    final_kl: float | None = None
    final_std: float | None = None
    curve: Curve | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class Table1Data:
    """Every run of a results folder, in the order of its CSV, and the random policy's mean score per env."""

    runs: list[Run]
    random: dict[str, float]


def _optional(value: str | None) -> float | None:
    return None if value in ("", None) else float(value)


def load(results: ResultsDir) -> Table1Data:
    """Read ``table1.csv``, every run's curve and ``table1_random.csv`` of ``results``; a setting no grid knows is an error."""
    runs = []
    for r in read_rows(results / RESULTS_CSV):
        setting(r["setting"])  # a ValueError for a name that is neither runnable nor removed
        seed, timesteps = int(r["seed"]), int(r["timesteps"])
        runs.append(
            Run(
                setting=r["setting"],
                env=r["env"],
                seed=seed,
                timesteps=timesteps,
                score=float(r["score"]),
                machine=r.get("machine", ""),
                eval_score=_optional(r.get("eval_score")),
                final_kl=_optional(r.get("final_kl")),
                final_std=_optional(r.get("final_std")),
                curve=read_columns(results / curve_name(r["setting"], r["env"], seed, timesteps), CURVE_FIELDS),
            )
        )
    random = {r["env"]: float(r["mean"]) for r in read_rows(results / RANDOM_CSV)}
    return Table1Data(runs, random)


def env_order(runs: list[Run]) -> list[str]:
    """The envs that have runs: the MuJoCo tasks in the paper's order, then any other (the discrete check's)."""
    have = {r.env for r in runs}
    return [env for env in ENVS if env in have] + sorted(have - set(ENVS))


def budgets(runs: list[Run]) -> list[int]:
    """The budgets (timesteps per run) that have runs, in increasing order."""
    return sorted({r.timesteps for r in runs})


def present(order: list[str], runs: list[Run]) -> list[str]:
    """The settings of ``order`` that have runs, in that order."""
    have = {r.setting for r in runs}
    return [s for s in order if s in have]


def select(runs: list[Run], name: str, env: str, timesteps: int | None = None) -> list[Run]:
    """The runs of one setting on one env (at one budget, when given), in the CSV's order."""
    return [r for r in runs if r.setting == name and r.env == env and (timesteps is None or r.timesteps == timesteps)]


def seeded_curves(
    runs: list[Run], name: str, env: str, timesteps: int, seeds: list[int] | None = None
) -> list[tuple[int, Curve]]:
    """(seed, curve) of a setting's runs on one env at ``timesteps``, by seed (of ``seeds`` only, when given)."""
    by_seed = {r.seed: r.curve for r in select(runs, name, env, timesteps)}
    return [(seed, curve) for seed, curve in sorted(by_seed.items()) if curve is not None and (seeds is None or seed in seeds)]


def curves_for(runs: list[Run], name: str, env: str, timesteps: int, seeds: list[int] | None = None) -> list[Curve]:
    """The curves of :func:`seeded_curves`, without their seeds."""
    return [curve for _, curve in seeded_curves(runs, name, env, timesteps, seeds)]
