"""
The fine-tuning summary: per task, a markdown table of the runs and a figure.

The table has every run's measures and their means per method; ``finetune_<task>.png``, the returns against steps.
"""

from pathlib import Path

import numpy as np

from benchmarks.finetune.protocol import (
    CURVE_FIELDS,
    DIP_FRACTION,
    MODELS_CSV,
    RESULTS_CSV,
    TASKS,
    curve_name,
    method_label,
    methods_with_rows,
    random_name,
    steps_text,
)
from benchmarks.results import ResultsDir, read_columns, read_rows

# every run's curve, by (task, method, seed): one array per column of CURVE_FIELDS, a value per evaluation
Curves = dict[tuple[str, str, int], dict[str, np.ndarray]]


def _number(value: str) -> str:
    return "" if value == "" else f"{float(value):.1f}"


def setup_text(task_id: str, rows: list[dict[str, str]], models: list[dict[str, str]]) -> str:
    """A task's models (the expert's, the clone's and the random policy's returns, from the models CSV's rows) and
    the protocol of its runs, from the first of ``rows``."""
    first = rows[0]
    episodes = int(first["eval_episodes"])
    evaluated = {r["name"]: r for r in models if int(r["eval_episodes"]) == episodes}
    clone = evaluated.get(first["clone"], {})
    random_return = evaluated.get(random_name(task_id), {}).get("eval_return", "")
    return (
        f"Expert (SB3 PPO, {int(first['expert'].rsplit('_', 1)[-1]):,} steps): {_number(first['expert_return'])}; "
        f"clone (BC on {clone.get('bc_transitions', '?')} transitions x {clone.get('bc_epochs', '?')} epochs): "
        f"{_number(first['clone_return'])}; random policy: {_number(random_return)}. "
        f"Fine-tuning {int(first['timesteps']):,} steps per run; deterministic evaluation of {episodes} episodes "
        f"every {int(first['eval_every']):,} steps"
    )


def summary_table(task_id: str, rows: list[dict[str, str]], models: list[dict[str, str]]) -> list[str]:
    """Markdown lines for one task: its models (from the models CSV's rows), then per method each seed's measures and
    their means."""
    setup = (
        f"{setup_text(task_id, rows, models)}; dip: the lowest return in the first "
        f"{DIP_FRACTION * int(rows[0]['timesteps']):,.0f} steps."
    )
    lines = [
        f"### {task_id}",
        "",
        setup,
        "",
        "| method | seed | step 0 | dip | final | lowest | steps to expert | KL to clone, end |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for method in _methods(rows):
        runs = sorted((r for r in rows if r["method"] == method), key=lambda r: int(r["seed"]))
        for r in runs:
            lines.append(
                f"| {method_label(method)} | {r['seed']} | {_number(r['step0_return'])} | {_number(r['dip'])} | "
                f"{_number(r['final_return'])} | {_number(r['lowest'])} | {steps_text(r['steps_to_expert'])} | "
                f"{r['final_kl_to_clone']} |"
            )

        def mean(key: str, runs: list[dict[str, str]] = runs) -> str:
            return f"{np.mean([float(r[key]) for r in runs]):.1f}"

        reached = [int(r["steps_to_expert"]) for r in runs if r["steps_to_expert"] != ""]
        to_expert = f"{np.mean(reached):,.0f} ({len(reached)}/{len(runs)} reached)" if reached else f"never (0/{len(runs)})"
        kls = [float(r["final_kl_to_clone"]) for r in runs if r["final_kl_to_clone"] != ""]
        kl = f"{np.mean(kls):.4f}" if kls else ""
        lines.append(
            f"| **{method_label(method)}** | **mean** | {mean('step0_return')} | {mean('dip')} | {mean('final_return')} | "
            f"{mean('lowest')} | {to_expert} | {kl} |"
        )
    return [*lines, ""]


def plot_task(task_id: str, rows: list[dict[str, str]], curves: Curves, path: Path) -> None:
    """Returns against steps from 0: mean over seeds, min-max band, one line per method; the expert dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.2))
    drawn: dict[str, np.ndarray] = {}
    for method in _methods(rows):
        seeds = sorted(int(r["seed"]) for r in rows if r["method"] == method)
        found = [curves[task_id, method, seed] for seed in seeds if (task_id, method, seed) in curves]
        if not found:
            continue
        length = min(len(c["timesteps"]) for c in found)
        steps = found[0]["timesteps"][:length]
        returns = np.array([c["return"][:length] for c in found])
        # a method whose runs came out identical to another's is drawn dashed over it, and says so
        twin = next((other for other, seen in drawn.items() if np.array_equal(seen, returns)), None)
        name = method_label(method)
        label = f"{name} ({len(found)})" if twin is None else f"{name} ({len(found)}; the same runs as {twin})"
        (line,) = ax.plot(steps, returns.mean(0), lw=1.4, ls="-" if twin is None else "--", label=label)
        ax.fill_between(steps, returns.min(0), returns.max(0), color=line.get_color(), alpha=0.15)
        drawn[method] = returns
    ax.axhline(float(rows[0]["expert_return"]), color="black", ls="--", lw=1.0, label="expert")
    ax.axhline(float(rows[0]["clone_return"]), color="grey", ls="-.", lw=0.8, label="clone (step 0)")
    ax.axvline(DIP_FRACTION * int(rows[0]["timesteps"]), color="grey", ls=":", lw=0.8, label="10% of the budget")
    ax.set_xlim(left=0)
    ax.set_xlabel("fine-tuning timesteps")
    ax.set_ylabel(f"return, {rows[0]['eval_episodes']} deterministic episodes")
    ax.set_title(f"{task_id}: fine-tuning a behaviour clone\n(line: mean over seeds, band: min-max)", fontsize=10)
    ax.legend(fontsize=8, title="method (seeds)", title_fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def _methods(rows: list[dict[str, str]]) -> list[str]:
    """The methods that have rows: those of METHODS in its order, then the removed ones, then any other."""
    return methods_with_rows([], rows)


def read_curves(results: ResultsDir, rows: list[dict[str, str]]) -> Curves:
    """The curve of every run in ``rows`` whose file is in ``results``, read once: (task, method, seed) -> columns."""
    curves = {}
    for r in rows:
        curve = read_columns(results / curve_name(r["task"], r["method"], r["seed"]), CURVE_FIELDS)
        if curve is not None:
            curves[r["task"], r["method"], int(r["seed"])] = curve
    return curves


def report(results: ResultsDir) -> str:
    """
    Print the markdown tables of every task with rows in ``results``, then draw its ``finetune_<task>.png`` there;
    returns the text.
    """
    rows = read_rows(results / RESULTS_CSV)
    models = read_rows(results / MODELS_CSV)
    curves = read_curves(results, rows)
    tasks = [t for t in TASKS if any(r["task"] == t for r in rows)]
    tasks += sorted({r["task"] for r in rows} - set(tasks))
    by_task = {task_id: [r for r in rows if r["task"] == task_id] for task_id in tasks}
    lines = [line for task_id, task_rows in by_task.items() for line in summary_table(task_id, task_rows, models)]
    text = "\n".join(lines) if lines else f"no rows in {results / RESULTS_CSV}"
    print(text, flush=True)
    for task_id, task_rows in by_task.items():
        plot_task(task_id, task_rows, curves, results / f"finetune_{task_id}.png")
    return text
