"""
The summary of a protocol's comparison (``python -m benchmarks.finetune --protocol 5seed --summary``).

Per task and method, the mean ± standard error over seeds of four measures of each run, from its curve:

- **lowest**: the lowest evaluation of the run, step 0 (the clone) included;
- **early mean**: the mean evaluation over the first 20% of the budget (steps 1 to 100,000 of 500,000), step 0
  excluded: it is the clone, the same for every method, so that the measure is what the early updates did to it;
- **final**: the mean of the last 3 evaluations;
- **steps to expert**: the step of the first evaluation at or above the expert's return; a run that never gets there
  counts as its last evaluation's step (the whole run), so that the mean is a lower bound whenever some runs never
  reached it (the table says how many did);

with the KL to the clone at the end. Then the goal's verdict, per method and task: it **protects** when its mean
lowest is at least the higher of SB3 PPO's (``ppo``) and the fixed reference's (``ppokl-ref``) mean lowest, less
that one's standard error; it **ends as high as PPO** when its mean final is at least PPO's, less PPO's standard
error. The standard error is the seeds' standard deviation (``ddof=1``) over the square root of their number.

Two figures per task in the results folder: ``finetune_<task>_curves.png``, the returns as small multiples (one
panel per method, PPO and the fixed reference drawn in each), and ``finetune_<task>_kl.png``, the KL to the clone
over time. A method without rows yet is *pending*.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.finetune.protocol import MODELS_CSV, RESULTS_CSV, Protocol, method_label, methods_with_rows
from benchmarks.finetune.report import Curves, read_curves, setup_text
from benchmarks.results import ResultsDir, read_rows

EARLY_FRACTION = 0.2  # the early mean: the evaluations in the first 20% of the budget
FINAL_EVALUATIONS = 3  # the final: the mean of the last 3 evaluations
PPO, FIXED = "ppo", "ppokl-ref"  # the goal's baselines: SB3 PPO and the fixed reference
MEASURES = ["lowest", "early", "final", "steps_to_expert", "kl_to_clone"]


def run_measures(row: dict[str, str], curve: dict[str, np.ndarray]) -> dict[str, float]:
    """The measures of one run (its CSV row and its curve's columns)."""
    steps, returns = curve["timesteps"], curve["return"]
    early = (steps > 0) & (steps <= EARLY_FRACTION * int(row["timesteps"]))
    reached = np.flatnonzero(returns >= float(row["expert_return"]))
    return dict(
        lowest=float(returns.min()),
        early=float(returns[early].mean()),
        final=float(returns[-FINAL_EVALUATIONS:].mean()),
        steps_to_expert=float(steps[reached[0]] if len(reached) else steps[-1]),
        reached=float(len(reached) > 0),
        kl_to_clone=float(row["final_kl_to_clone"]) if row["final_kl_to_clone"] != "" else np.nan,
    )


@dataclass(frozen=True)
class Stats:
    """A method's measures on a task over its seeds: ``mean[m]`` and ``se[m]`` per measure (s.e. NaN for one seed)."""

    seeds: int
    reached: int
    mean: dict[str, float]
    se: dict[str, float]


def mean_se(values: list[float]) -> tuple[float, float]:
    """The mean of ``values`` and its standard error (NaN for fewer than two values)."""
    array = np.asarray(values, dtype=float)
    se = float(array.std(ddof=1) / np.sqrt(len(array))) if len(array) > 1 else np.nan
    return float(array.mean()), se


def method_stats(rows: list[dict[str, str]], curves: Curves) -> dict[tuple[str, str], Stats]:
    """The :class:`Stats` of every (task, method) with rows whose curves are in ``curves``."""
    per_run: dict[tuple[str, str], list[dict[str, float]]] = {}
    for row in rows:
        curve = curves.get((row["task"], row["method"], int(row["seed"])))
        if curve is not None:
            per_run.setdefault((row["task"], row["method"]), []).append(run_measures(row, curve))
    stats = {}
    for key, runs in per_run.items():
        pairs = {m: mean_se([run[m] for run in runs]) for m in MEASURES}
        reached = int(sum(run["reached"] for run in runs))
        stats[key] = Stats(len(runs), reached, {m: p[0] for m, p in pairs.items()}, {m: p[1] for m, p in pairs.items()})
    return stats


@dataclass(frozen=True)
class Verdict:
    """The goal's two halves for a method on a task, with the bars and the method's margins over them."""

    protect_bar: float
    end_bar: float
    protect_margin: float
    end_margin: float

    @property
    def protects(self) -> bool:
        return self.protect_margin >= 0

    @property
    def ends_as_ppo(self) -> bool:
        return self.end_margin >= 0


def verdict(stats: dict[tuple[str, str], Stats], task_id: str, method: str) -> Verdict | None:
    """The verdict of ``method`` on ``task_id``; None (pending) until it, PPO and the fixed reference have 2 seeds."""
    mine, ppo, fixed = (stats.get((task_id, m)) for m in (method, PPO, FIXED))
    if mine is None or ppo is None or fixed is None or min(mine.seeds, ppo.seeds, fixed.seeds) < 2:
        return None
    best = max((ppo, fixed), key=lambda s: s.mean["lowest"])
    protect_bar = best.mean["lowest"] - best.se["lowest"]
    end_bar = ppo.mean["final"] - ppo.se["final"]
    return Verdict(protect_bar, end_bar, mine.mean["lowest"] - protect_bar, mine.mean["final"] - end_bar)


def _pm(stats: Stats, measure: str, digits: int = 1) -> str:
    mean, se = stats.mean[measure], stats.se[measure]
    if np.isnan(mean):
        return ""
    return f"{mean:,.{digits}f} ± " + ("n/a" if np.isnan(se) else f"{se:,.{digits}f}")


def _methods(protocol: Protocol, rows: list[dict[str, str]], task_id: str | None = None) -> list[str]:
    """The protocol's methods (on ``task_id``, or on any of its tasks), then any other method with rows in the folder
    (removed ones after the others)."""
    tasks = protocol.tasks if task_id is None else [task_id]
    planned = list(dict.fromkeys(m for t in tasks for m in protocol.methods_of(t)))
    return methods_with_rows(planned, rows)


def task_table(
    task_id: str, protocol: Protocol, rows: list[dict[str, str]], models: list[dict[str, str]], stats: dict
) -> list[str]:
    """Markdown lines for one task: the setup, then per method its seeds and measures (or pending)."""
    lines = [f"### {task_id}", ""]
    if not rows:
        return [*lines, "No runs yet: every method is pending.", ""]
    budget = int(rows[0]["timesteps"])
    setup = (
        f"{setup_text(task_id, rows, models)}; mean ± s.e. over seeds. Early mean: the evaluations after step 0 and "
        f"up to {EARLY_FRACTION * budget:,.0f} steps; final: the mean of the last {FINAL_EVALUATIONS} evaluations; "
        "steps to expert: a run that never reached the expert counts as its last evaluation's step."
    )
    lines += [
        setup,
        "",
        "| method | seeds | lowest | early mean | final | steps to expert (reached) | KL to clone, end |",
        "|---|---|---|---|---|---|---|",
    ]
    for method in _methods(protocol, rows, task_id):
        s = stats.get((task_id, method))
        if s is None:
            lines.append(f"| {method_label(method)} | pending | | | | | |")
            continue
        lines.append(
            f"| {method_label(method)} | {s.seeds}/{len(protocol.seeds)} | {_pm(s, 'lowest')} | {_pm(s, 'early')} | {_pm(s, 'final')} | "
            f"{_to_expert(s)} | {_pm(s, 'kl_to_clone', 4)} |"
        )
    return [*lines, ""]


def _to_expert(stats: Stats) -> str:
    reached = f"({stats.reached}/{stats.seeds})"
    return f"never {reached}" if stats.reached == 0 else f"{_pm(stats, 'steps_to_expert', 0)} {reached}"


def _seeds(n: int) -> str:
    return f"{n} seed" if n == 1 else f"{n} seeds"


def verdict_table(tasks: list[str], protocol: Protocol, rows: list[dict[str, str]], stats: dict) -> list[str]:
    """Markdown lines: the bars per task, then per method whether it protects and ends as high as PPO on each."""
    lines = ["### The goal: protects and ends as high as PPO", ""]
    for task_id in tasks:
        v = verdict(stats, task_id, PPO)
        lines.append(
            f"- {task_id}: bars pending ({PPO} and {FIXED} need 2 seeds each)"
            if v is None
            else f"- {task_id}: protects at a mean lowest >= {v.protect_bar:.1f}, ends as high as PPO at a mean final "
            f">= {v.end_bar:.1f}."
        )
    lines.append("")
    lines.append("Each cell: yes or no, with the method's margin over the bar.")
    header = "| method | " + " | ".join(f"{t}: protects | {t}: ends as PPO" for t in tasks) + " | both, on every task run |"
    lines += ["", header, "|---|" + "---|---|" * len(tasks) + "---|"]
    partial = False
    # per task, the methods it runs or has rows of: any other is "not run" there
    ran = {task_id: _methods(protocol, [r for r in rows if r["task"] == task_id], task_id) for task_id in tasks}
    for method in _methods(protocol, rows):
        cells, met = [], True
        for task_id in tasks:
            v = verdict(stats, task_id, method)
            if v is None and method not in ran[task_id]:
                cells += ["not run", "not run"]
                continue
            if v is None:
                cells += ["pending", "pending"]
                met = False
                continue
            seeds = min(stats[task_id, m].seeds for m in (method, PPO, FIXED))
            mark = "*" if seeds < len(protocol.seeds) else ""
            partial = partial or bool(mark)
            cells += [_yes_no(v.protects, v.protect_margin) + mark, _yes_no(v.ends_as_ppo, v.end_margin) + mark]
            met = met and v.protects and v.ends_as_ppo
        pending = any(cell == "pending" for cell in cells)
        lines.append(
            f"| {method_label(method)} | " + " | ".join(cells) + f" | {'pending' if pending else 'yes' if met else 'no'} |"
        )
    if partial:
        lines += ["", f"\\* on fewer seeds than the protocol's {len(protocol.seeds)}: not final."]
    return [*lines, ""]


def _yes_no(value: bool, margin: float) -> str:
    return f"{'yes' if value else 'no'} ({margin:+.1f})"


def _seed_curves(curves: Curves, task_id: str, method: str, column: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The steps and a (seeds, evaluations) array of ``column`` for a method's runs, cut to the shortest; or None."""
    found = [c for (t, m, _), c in sorted(curves.items()) if t == task_id and m == method]
    if not found:
        return None
    length = min(len(c["timesteps"]) for c in found)
    return found[0]["timesteps"][:length], np.array([c[column][:length] for c in found])


def _mean_band(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = values.mean(0)
    se = values.std(0, ddof=1) / np.sqrt(len(values)) if len(values) > 1 else np.zeros_like(mean)
    return mean, se


def plot_panels(task_id: str, protocol: Protocol, rows: list[dict[str, str]], curves: Curves, path: Path) -> None:
    """The returns as small multiples: one panel per method (mean, ± s.e. band), PPO and the fixed reference in each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = _methods(protocol, rows, task_id)
    ncols = 3
    nrows = -(-len(methods) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.0 * nrows), sharex=True, sharey=True, squeeze=False)
    colours = {PPO: "tab:blue", FIXED: "tab:orange"}
    for ax, method in zip(axes.flat, methods, strict=False):
        for baseline in (PPO, FIXED):
            drawn = _seed_curves(curves, task_id, baseline, "return")
            if baseline != method and drawn is not None:
                ax.plot(drawn[0], drawn[1].mean(0), color=colours[baseline], lw=1.0, alpha=0.8, label=f"{baseline} (mean)")
        drawn = _seed_curves(curves, task_id, method, "return")
        if drawn is None:
            ax.text(0.5, 0.5, "pending: no runs yet", transform=ax.transAxes, ha="center", va="center", color="grey")
            ax.set_title(f"{method_label(method)} (pending)", fontsize=9)
        else:
            steps, returns = drawn
            mean, se = _mean_band(returns)
            colour = colours.get(method, "black")
            ax.plot(steps, mean, color=colour, lw=1.8, label=f"{method_label(method)} (mean ± s.e.)")
            ax.fill_between(steps, mean - se, mean + se, color=colour, alpha=0.2)
            ax.set_title(f"{method_label(method)} ({_seeds(len(returns))})", fontsize=9)
        ax.axhline(float(rows[0]["expert_return"]), color="black", ls="--", lw=0.8)
        ax.axhline(float(rows[0]["clone_return"]), color="grey", ls="-.", lw=0.8)
        ax.legend(fontsize=6.5, loc="best")
        ax.set_xlim(left=0)
    for ax in axes.flat[len(methods) :]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("fine-tuning timesteps")
    for ax in axes[:, 0]:
        ax.set_ylabel(f"return, {rows[0]['eval_episodes']} episodes")
    fig.suptitle(f"{task_id}: fine-tuning the clone (dashed: the expert, dash-dot: the clone)", fontsize=10)
    _save(fig, path)


def plot_kl(task_id: str, protocol: Protocol, rows: list[dict[str, str]], curves: Curves, path: Path) -> None:
    """The KL[clone || policy] over the latest rollout's states against steps: mean over seeds, ± s.e., log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.2))
    for method in _methods(protocol, rows, task_id):
        drawn = _seed_curves(curves, task_id, method, "kl_to_clone")
        if drawn is None:
            continue
        steps, kls = drawn
        measured = ~np.isnan(kls).any(0)  # step 0 has no rollout yet
        mean, se = _mean_band(kls[:, measured])
        (line,) = ax.plot(steps[measured], mean, lw=1.4, label=f"{method_label(method)} ({_seeds(len(kls))})")
        ax.fill_between(steps[measured], np.maximum(mean - se, mean / 10), mean + se, color=line.get_color(), alpha=0.15)
    ax.set_yscale("log")
    ax.set_xlim(left=0)
    ax.set_xlabel("fine-tuning timesteps")
    ax.set_ylabel("KL[clone || policy], latest rollout")
    ax.set_title(f"{task_id}: the KL to the original clone (line: mean over seeds, band: ± s.e.)", fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _save(fig, path)


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def protocol_report(results: ResultsDir, protocol: Protocol, tasks: list[str]) -> str:
    """
    Print the protocol's tables and verdict for ``tasks`` from the rows in ``results`` (methods without rows are
    pending), and draw each task's two figures there; returns the text.
    """
    rows = read_rows(results / RESULTS_CSV)
    models = read_rows(results / MODELS_CSV)
    curves = read_curves(results, rows)
    stats = method_stats(rows, curves)
    by_task = {task_id: [r for r in rows if r["task"] == task_id] for task_id in tasks}
    lines = [line for task_id in tasks for line in task_table(task_id, protocol, by_task[task_id], models, stats)]
    lines += verdict_table(tasks, protocol, rows, stats)
    text = "\n".join(lines)
    print(text, flush=True)
    for task_id, task_rows in by_task.items():
        if task_rows:
            plot_panels(task_id, protocol, task_rows, curves, results / f"finetune_{task_id}_curves.png")
            plot_kl(task_id, protocol, task_rows, curves, results / f"finetune_{task_id}_kl.png")
    return text
