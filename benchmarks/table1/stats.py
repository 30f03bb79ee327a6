"""
The report's statistics, from typed runs.

The paper's normalisation, rliable's estimates, Spearman's rank correlation with the paper, beta's band, and scores
relative to clipping.
"""

from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks.table1.data import Run
from benchmarks.table1.grid import BASELINE, ENVS, PAPER_SETTINGS, PAPER_TABLE1, SEEDS, setting

# Bootstrap replications for rliable's intervals (the probability of improvement is slower: a rank test per task)
BOOTSTRAP_REPS = 2000
POI_REPS = 1000


def normalised(runs: list[Run], random: dict[str, float]) -> dict[str, dict[str, dict[int, float]]]:
    """
    The paper's normalisation: per env, the random policy scores 0 and the best of the paper's 11 settings with
    every seed of ``SEEDS`` there (by mean score over its runs) scores 1. Returns setting -> env -> seed -> the
    run's normalised score. Settings outside the 11 are normalised by the same two points; they do not compete for
    the 1, and neither does a setting still missing seeds, whose mean would move the 1 as its runs land.
    """
    by_env: dict[str, dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    for r in runs:
        by_env[r.env][r.setting][r.seed] = r.score
    result: dict[str, dict[str, dict[int, float]]] = defaultdict(dict)
    for env, settings in by_env.items():
        means = {name: np.mean(list(seeds.values())) for name, seeds in settings.items()}
        paper = {name: mean for name, mean in means.items() if name in PAPER_SETTINGS}
        complete = [mean for name, mean in paper.items() if all(seed in settings[name] for seed in SEEDS)]
        competing = complete or list(paper.values()) or list(means.values())
        best = max(competing)
        for name, seeds in settings.items():
            result[name][env] = {seed: (score - random[env]) / (best - random[env]) for seed, score in seeds.items()}
    return result


def score_matrices(norm: dict[str, dict[str, dict[int, float]]]) -> tuple[dict[str, np.ndarray], list[str], list[int]]:
    """
    rliable's input: setting -> (runs, envs) matrix of normalised scores. The envs are those on which clip-0.2 has
    seeds 0-2, and the seeds those three; only where it has them on no env, the seeds it has on every env it ran
    (an env whose runs are still landing does not cut the others' seeds). The settings are those with every one of
    these runs (a stratified bootstrap needs the same runs on every task). Returns the matrices, the envs and the
    seeds.
    """
    baseline = norm.get(BASELINE, {})
    order = [env for env in ENVS + sorted(set(baseline) - set(ENVS)) if env in baseline]
    envs = [env for env in order if all(seed in baseline[env] for seed in SEEDS)]
    seeds = list(SEEDS) if envs else [seed for seed in SEEDS if baseline and all(seed in runs for runs in baseline.values())]
    envs = envs or (order if seeds else [])
    matrices = {
        name: np.array([[by_env[env][seed] for env in envs] for seed in seeds])
        for name, by_env in norm.items()
        if envs and all(seed in by_env.get(env, {}) for env in envs for seed in seeds)
    }
    return matrices, envs, seeds


def _estimates(scores: dict[str, Any], func: Callable[..., Any], reps: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """
    rliable's ``get_interval_estimates`` for each key on its own, with the bootstrap seeded afresh for each: a
    setting's interval depends only on its runs (and clip-0.2's), not on which other settings have rows, and the
    report's numbers do not move between renders. rliable draws its resamples from NumPy's global generator (its
    ``random_state`` argument does not reach them), so that generator is seeded here and restored afterwards.
    """
    from rliable import library

    points, intervals = {}, {}
    state = np.random.get_state()
    try:
        for key, value in scores.items():
            np.random.seed(0)
            point, interval = library.get_interval_estimates({key: value}, func, reps=reps)
            points[key], intervals[key] = point[key], interval[key]
    finally:
        np.random.set_state(state)
    return points, intervals


def aggregates(matrices: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """rliable's IQM and mean of each setting's normalised scores, with stratified-bootstrap 95% intervals."""
    from rliable import metrics

    return _estimates(
        matrices, lambda scores: np.array([metrics.aggregate_iqm(scores), metrics.aggregate_mean(scores)]), BOOTSTRAP_REPS
    )


def improvement_over_baseline(matrices: dict[str, np.ndarray]) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """rliable's probability of improvement of every PPOKL setting over clip-0.2, with its 95% interval."""
    from rliable import metrics

    # every PPOKL setting: the runnable ones and the removed candidates (all PPOKL)
    pairs = {name: [scores, matrices[BASELINE]] for name, scores in matrices.items() if setting(name).algo == "ppo_kl"}
    if BASELINE not in matrices or not pairs:
        return {}, {}
    return _estimates(pairs, metrics.probability_of_improvement, POI_REPS)


def spearman(ours: dict[str, float]) -> tuple[float, int, str]:
    """
    Spearman's rank correlation between our ordering of the paper's settings (by normalised mean) and the
    paper's, over the settings in ``ours``; with the count and one sentence on the largest rank differences.
    """
    from scipy.stats import rankdata, spearmanr

    names = [s for s in PAPER_SETTINGS if s in ours]
    if len(names) < 3:
        return float("nan"), len(names), "too few settings to rank"
    rho = float(spearmanr([ours[s] for s in names], [PAPER_TABLE1[s] for s in names]).statistic)
    our_rank = dict(zip(names, rankdata([-ours[s] for s in names])))
    paper_rank = dict(zip(names, rankdata([-PAPER_TABLE1[s] for s in names])))
    moved = sorted(names, key=lambda s: -abs(our_rank[s] - paper_rank[s]))[:3]
    moved = [s for s in moved if our_rank[s] != paper_rank[s]]
    if not moved:
        return rho, len(names), "the two orderings are the same"
    parts = [f"{s} (ours {our_rank[s]:g}, paper {paper_rank[s]:g} of {len(names)})" for s in moved]
    return rho, len(names), "largest rank differences: " + "; ".join(parts)


def constant_target(name: str) -> float | None:
    """The constant ``kl_target`` of an adaptive PPOKL setting (None for any other setting, or a scheduled target)."""
    target = setting(name).kl_target
    return None if callable(target) else target


def band_shares(d: np.ndarray, target: float, tolerance: float = 1.5) -> tuple[float, float, float]:
    """Shares of the updates with d below ``target / tolerance``, inside the band, and above ``target * tolerance``."""
    d = d[np.isfinite(d)]
    below = float(np.mean(d < target / tolerance))
    above = float(np.mean(d > target * tolerance))
    return below, 1.0 - below - above, above


def relative_to_clip(runs: list[Run], random: dict[str, float]) -> dict[str, dict[str, float]]:
    """
    Per setting and env: ``(mean score - random) / (clip-0.2's mean score - random)``, issue 11's criterion
    (1 = as good as clipping). Both means are over the seeds that the setting and clip-0.2 share on that env, so
    that clip-0.2's extra seeds on one env do not shift another setting's figure. Only envs where both ran.
    """
    scores: dict[str, dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    for r in runs:
        scores[r.setting][r.env][r.seed] = r.score
    clip = scores.get(BASELINE, {})
    result: dict[str, dict[str, float]] = {}
    for name, by_env in scores.items():
        result[name] = {}
        for env, seeds in by_env.items():
            shared = sorted(set(seeds) & set(clip.get(env, {})))
            if shared and env in random:
                ours, base = (np.mean([source[seed] for seed in shared]) for source in (seeds, clip[env]))
                result[name][env] = float((ours - random[env]) / (base - random[env]))
    return result


def relative_interval(ours: np.ndarray, clip: np.ndarray) -> tuple[float, float]:
    """
    The 95% stratified-bootstrap interval (rliable, the runs of each env resampled independently for both
    settings) of condition (a)'s figure: the mean over envs of ``mean(ours - random) / mean(clip - random)``.
    ``ours`` and ``clip``: (runs, envs) arrays of ``score - random``.
    """
    _, intervals = _estimates(
        {"relative": [ours, clip]}, lambda x, y: np.mean(x.mean(axis=0) / y.mean(axis=0)), BOOTSTRAP_REPS
    )
    low, high = np.asarray(intervals["relative"]).ravel()
    return float(low), float(high)


def sem(values: list[float]) -> float:
    """The standard error of the mean over runs (two or more)."""
    return float(np.std(values, ddof=1) / np.sqrt(len(values)))


def mean_sem(values: list[float]) -> str:
    """Mean ± standard error over runs, as the report's tables write it (one run: its value; none: n/a)."""
    if not values:
        return "n/a"
    if len(values) == 1:  # one run has no standard error
        return f"{values[0]:.1f}"
    return f"{np.mean(values):.1f} ± {sem(values):.1f}"


def beta_response(d: np.ndarray, beta: np.ndarray) -> float:
    """
    How ``d`` answers beta, from one run's curve: the least-squares slope (with an intercept) of the update-to-update
    change of ``log d`` on the previous step's change of ``log beta``. Row ``t`` of a curve holds ``d_t``, the KL of
    update ``t``, and ``beta_t``, beta after it, which update ``t + 1`` uses; so the pairs are
    ``(log beta_{t-1} - log beta_{t-2}, log d_t - log d_{t-1})``: the change of the beta that update ``t`` used
    against the change of its ``d``. Pairs with a blank or non-positive value are left out; NaN when beta never
    moved over the pairs (fewer than 3 pairs, or every change 0).
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        log_d, log_beta = np.log(np.asarray(d, dtype=float)), np.log(np.asarray(beta, dtype=float))
    x, y = np.diff(log_beta)[:-1], np.diff(log_d)[1:]
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if len(x) < 3 or not np.any(x != x[0]):
        return float("nan")
    x = x - x.mean()
    return float(np.sum(x * (y - y.mean())) / np.sum(x * x))


def lag1_autocorrelation(d: np.ndarray, target: float) -> float:
    """
    The lag-1 autocorrelation of ``log(d / target)`` over one run's updates: Pearson's correlation of each update's
    value with the next one's (pairs of consecutive updates both recorded and positive). Negative: ``d`` swings from
    one side of the target to the other. NaN with fewer than 3 pairs or no spread.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        error = np.log(np.asarray(d, dtype=float) / target)
    x, y = error[:-1], error[1:]
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if len(x) < 3 or np.std(x) == 0 or np.std(y) == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])
