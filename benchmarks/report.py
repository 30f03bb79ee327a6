"""
Turn the Table 1 grid's results (``python -m benchmarks.run``) into ``benchmarks/RESULTS.md`` and figures.

For each budget (timesteps per run) found in ``results/table1.csv``:

- the normalised Table 1: per env, the random policy scores 0 (``results/table1_random.csv``, measured with
  ``python -m benchmarks.run --random``) and the setting with the best mean score on that env scores 1; a
  setting's value is the mean over all its runs, beside the paper's number;
- raw scores per env (mean ± std over seeds);
- ``results/table1_<budget>_curves.png``: reward (mean of the last 100 episodes) against timesteps, per env;
- ``results/table1_<budget>_kl.png``: d (the KL of each update) and beta over training, for the PPOKL settings.

    python -m benchmarks.report
"""

import csv
from collections import defaultdict
from pathlib import Path

import numpy as np

from benchmarks.common import read_rows
from benchmarks.run import CURVE_FIELDS, CURVES, ENVS, FINAL_UPDATES, GRIDS, RANDOM, REMOVED, RESULTS, SETTINGS, machine

REPORT = Path(__file__).parent / "RESULTS.md"
# every setting with rows: the runnable ones, then the removed candidates (their rows stay in the results)
ORDER = list(SETTINGS) + list(REMOVED)


def _name(setting: str) -> str:
    return f"{setting} (removed)" if setting in REMOVED else setting


# Table 1 of Schulman et al. (2017): average normalised score over 7 MuJoCo tasks x 3 seeds, 1M steps
PAPER_TABLE1 = {
    "no-clip-no-penalty": -0.39,
    "clip-0.1": 0.76,
    "clip-0.2": 0.82,
    "clip-0.3": 0.70,
    "kl-adaptive-0.003": 0.68,
    "kl-adaptive-0.01": 0.74,
    "kl-adaptive-0.03": 0.71,
    "kl-fixed-0.3": 0.62,
    "kl-fixed-1": 0.71,
    "kl-fixed-3": 0.72,
    "kl-fixed-10": 0.69,
}
BASELINE = "clip-0.2"
COLORS = {
    "clip-0.2": "tab:blue",
    "kl-adaptive-0.01": "tab:red",
    "kl-fixed-1": "tab:green",
    "clip-0.1": "tab:cyan",
    "clip-0.3": "navy",
    "kl-adaptive-0.003": "salmon",
    "kl-adaptive-0.03": "darkred",
    "kl-fixed-0.3": "lime",
    "kl-fixed-3": "olive",
    "kl-fixed-10": "darkgreen",
    "no-clip-no-penalty": "gray",
    "kl-adaptive-0.01+clip-0.2": "tab:purple",
    "trpo": "tab:orange",
    "kl-0.02+cutoff": "tab:brown",
    "kl-sched-0.01-0.03+cutoff": "tab:pink",
    "kl-meanonly-0.01": "gold",
    "kl-meanonly-0.02": "darkgoldenrod",
    "kl-perstate-meanonly-0.02": "teal",
    "kl-perstate-meanonly-0.03": "darkviolet",
    "kl-perstate-0.02": "lightseagreen",
    "kl-perstate-0.03": "orchid",
    "kl-proportional-0.02": "black",
    "kl-meanonly-sched-0.01-0.03": "magenta",
}


def _fmt(values: list[float]) -> str:
    return f"{np.mean(values):.1f} ± {np.std(values):.1f}"


def normalised(rows: list[dict[str, str]], random: dict[str, float]) -> dict[str, list[float]]:
    """Per setting, the normalised score of each of its runs: random policy 0, best setting (by mean) 1, per env."""
    by_env: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        by_env[r["env"]][r["setting"]].append(float(r["score"]))
    result: dict[str, list[float]] = defaultdict(list)
    for env, settings in by_env.items():
        best = max(np.mean(scores) for scores in settings.values())
        for setting, scores in settings.items():
            result[setting] += [(s - random[env]) / (best - random[env]) for s in scores]
    return result


def relative_to_clip(rows: list[dict[str, str]], random: dict[str, float]) -> dict[str, dict[str, float]]:
    """
    Per setting and env: ``(mean score - random) / (clip-0.2's mean score - random)``, issue 11's criterion
    (1 = as good as clipping). Only envs where clip-0.2 ran.
    """
    means: dict[str, dict[str, float]] = defaultdict(dict)
    for setting in {r["setting"] for r in rows}:
        for env in {r["env"] for r in rows if r["setting"] == setting}:
            means[setting][env] = float(
                np.mean([float(r["score"]) for r in rows if r["setting"] == setting and r["env"] == env])
            )
    clip = means.get(BASELINE, {})
    return {
        setting: {
            env: (m - random[env]) / (clip[env] - random[env]) for env, m in by_env.items() if env in clip and env in random
        }
        for setting, by_env in means.items()
    }


def read_curve(setting: str, env: str, seed: int, timesteps: int) -> dict[str, np.ndarray] | None:
    path = CURVES / f"{setting}__{env}__{seed}__{timesteps}.csv"
    if not path.exists():
        return None
    with path.open() as f:
        rows = list(csv.DictReader(f))

    def column(name: str) -> np.ndarray:
        # curves written before a column existed (std, and d for clipping) read as NaN there
        return np.array([float(r[name]) if r.get(name) not in ("", None) else np.nan for r in rows])

    return {name: column(name) for name in CURVE_FIELDS}


def _thousands(ax) -> None:
    from matplotlib.ticker import FuncFormatter

    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x / 1e3:.0f}k"))


def _envs(rows: list[dict[str, str]]) -> list[str]:
    """The envs that have rows: the MuJoCo tasks in the paper's order, then any other (the discrete check's)."""
    return [env for env in ENVS if any(r["env"] == env for r in rows)] + sorted({r["env"] for r in rows} - set(ENVS))


def plot_curves(rows: list[dict[str, str]], timesteps: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    envs = _envs(rows)
    settings = [s for s in ORDER if any(r["setting"] == s for r in rows)]
    cols = 4
    nrows = (len(envs) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.2 * nrows), squeeze=False)
    for ax, env in zip(axes.flat, envs):
        for setting in settings:
            seeds = sorted(int(r["seed"]) for r in rows if r["env"] == env and r["setting"] == setting)
            curves = [c for c in (read_curve(setting, env, seed, timesteps) for seed in seeds) if c is not None]
            if not curves:
                continue
            length = min(len(c["timesteps"]) for c in curves)
            steps = curves[0]["timesteps"][:length]
            reward = np.array([c["reward"][:length] for c in curves])
            color = COLORS.get(setting)
            ax.plot(steps, np.nanmean(reward, 0), color=color, lw=1.3, label=f"{setting} ({len(curves)})")
            ax.fill_between(steps, np.nanmin(reward, 0), np.nanmax(reward, 0), color=color, alpha=0.15)
        ax.set_title(env, fontsize=10)
        _thousands(ax)
        ax.set_xlabel("timesteps", fontsize=8)
        ax.set_ylabel("mean reward, last 100 episodes", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes.flat[len(envs) :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    spare = axes.flat[len(envs)] if len(envs) < axes.size else None
    legend = dict(fontsize=8, title="setting (seeds)\nline: mean, band: min-max", title_fontsize=8)
    if spare:
        spare.legend(handles, labels, loc="center", **legend)
    else:  # every panel is taken: the legend goes to the right of the figure
        fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), **legend)
    fig.suptitle(f"Table 1 protocol, {timesteps:,} steps per run", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def _smooth(values: np.ndarray, window: int = 10) -> np.ndarray:
    """Trailing mean over ``window`` updates (NaN where a curve has no value)."""
    out = np.full_like(values, np.nan)
    for i in range(len(values)):
        chunk = values[max(0, i - window + 1) : i + 1]
        if np.isfinite(chunk).any():
            out[i] = np.nanmean(chunk)
    return out


def plot_kl(rows: list[dict[str, str]], timesteps: int, path: Path) -> None:
    """
    Per env: d (every setting), beta (PPOKL settings) and the mean action std (every setting): for each setting
    the mean over its seeds of a 10-update trailing mean.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    envs = _envs(rows)
    settings = [s for s in ORDER if s != "no-clip-no-penalty" and any(r["setting"] == s for r in rows)]
    panels = [("kl", "d: KL(before || after) per update", True), ("kl_coef", "beta after the update", True)]
    if any(r.get("final_std") for r in rows):  # Gaussian policies only
        panels.append(("std", "mean action std", False))
    fig, axes = plt.subplots(len(panels), len(envs), figsize=(max(3.3 * len(envs), 8), 2.8 * len(panels)), squeeze=False)
    for col, env in enumerate(envs):
        for setting in settings:
            seeds = sorted(int(r["seed"]) for r in rows if r["env"] == env and r["setting"] == setting)
            curves = [c for c in (read_curve(setting, env, seed, timesteps) for seed in seeds) if c is not None]
            if not curves:
                continue
            color = COLORS.get(setting)
            length = min(len(c["timesteps"]) for c in curves)
            steps = curves[0]["timesteps"][:length]
            for row, (name, _, _) in enumerate(panels):
                values = np.array([_smooth(c[name][:length]) for c in curves])
                if np.isfinite(values).any():
                    with np.errstate(all="ignore"):
                        mean = np.nanmean(values, 0)
                    axes[row, col].plot(steps, mean, color=color, lw=1.2, label=f"{setting} ({len(curves)})")
            algo, kwargs = SETTINGS.get(setting, ("removed", {}))
            target = kwargs.get("kl_target")
            if algo == "ppo_kl" and kwargs.get("adaptive_kl", True) and target is not None:
                values = [target(1 - t / timesteps) for t in steps] if callable(target) else [target] * len(steps)
                axes[0, col].plot(steps, values, color=color, ls="--", lw=0.8)
        axes[0, col].set_title(env, fontsize=9)
        for row, (_, _, log) in enumerate(panels):
            _thousands(axes[row, col])
            if log and axes[row, col].lines:
                axes[row, col].set_yscale("log")
                axes[row, col].yaxis.set_minor_formatter(NullFormatter())
            if not axes[row, col].lines:
                axes[row, col].text(0.5, 0.5, "not recorded", ha="center", va="center", transform=axes[row, col].transAxes)
            axes[row, col].tick_params(labelsize=7)
        axes[-1, col].set_xlabel("timesteps", fontsize=8)
    for row, (_, ylabel, _) in enumerate(panels):
        axes[row, 0].set_ylabel(ylabel, fontsize=8)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(
        handles, labels, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), title="setting (seeds)", title_fontsize=7
    )
    fig.suptitle(
        f"{timesteps:,} steps per run: mean over seeds of a 10-update trailing mean (dashed: PPOKL's kl_target). "
        "d is measured the same way for every algorithm.",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def _mean_sem(values: list[float]) -> str:
    if not values:
        return "n/a"
    sem = np.std(values, ddof=1) / np.sqrt(len(values)) if len(values) > 1 else np.nan
    return f"{np.mean(values):.1f} ± {sem:.1f}"


def _floats(rows: list[dict[str, str]], key: str) -> list[float]:
    return [float(r[key]) for r in rows if r.get(key) not in ("", None)]


def measurements_table(rows: list[dict[str, str]]) -> list[str]:
    """Per env and setting: training and deterministic-evaluation scores (mean ± s.e.), and d and std at the end."""
    out = [
        (
            "| env | setting | runs | training score | deterministic eval | d, last "
            f"{FINAL_UPDATES} updates | action std at the end |"
        ),
        "|---|---|---|---|---|---|---|",
    ]
    envs = _envs(rows)
    for env in envs:
        for setting in ORDER:
            runs = [r for r in rows if r["env"] == env and r["setting"] == setting]
            if not runs:
                continue
            kls, stds = _floats(runs, "final_kl"), _floats(runs, "final_std")
            out.append(
                f"| {env} | {_name(setting)} | {len(runs)} | {_mean_sem(_floats(runs, 'score'))} | "
                f"{_mean_sem(_floats(runs, 'eval_score'))} ({len(_floats(runs, 'eval_score'))}) | "
                f"{f'{np.mean(kls):.4f}' if kls else 'n/a'} | {f'{np.mean(stds):.3f}' if stds else 'n/a'} |"
            )
    return out


def budget_section(
    rows: list[dict[str, str]],
    timesteps: int,
    random: dict[str, float],
    title: str = "",
    stem: str = "table1",
    intro: str = "",
) -> list[str]:
    settings = [s for s in ORDER if any(r["setting"] == s for r in rows)]
    envs = _envs(rows)
    norm = normalised(rows, random)
    out = [f"## {title or f'{timesteps:,} steps per run'}", ""] + ([intro, ""] if intro else [])
    out += [
        "### Normalised score (Table 1)",
        "",
        (
            "Per env, the random policy is 0 and the best of the settings below (by mean over seeds) is 1; a setting's "
            "value is the mean over its runs. Only the settings in this table compete for the 1, so the values compare "
            "settings within this table; the paper's column normalises against its 11 settings at 1M steps."
        ),
        "",
        "",
        (
            f"Relative to {BASELINE}: per env `(mean score - random) / ({BASELINE}'s mean score - random)`, then the mean over "
            "the envs the setting ran on (1 = as good as clipping). A setting run on fewer envs than the others is "
            "compared on those envs only: read the envs column."
        ),
        "",
        f"| setting | normalised score (mean over runs ± standard error) | runs | envs | relative to {BASELINE} | paper (1M, -v1) |",
        "|---|---|---|---|---|---|",
    ]
    relative = relative_to_clip(rows, random)
    for s in sorted(settings, key=lambda s: -np.mean(norm[s])):
        paper = PAPER_TABLE1.get(s) if stem == "table1" else None  # the paper's Table 1 is MuJoCo only
        sem = np.std(norm[s], ddof=1) / np.sqrt(len(norm[s])) if len(norm[s]) > 1 else np.nan
        paper_cell = "" if paper is None else f"{paper:.2f}"
        n_envs = len({r["env"] for r in rows if r["setting"] == s})
        rel = relative.get(s, {})
        rel_cell = f"{np.mean(list(rel.values())):.2f}" if rel else "n/a"
        out.append(
            f"| {_name(s)} | {np.mean(norm[s]):.2f} ± {sem:.2f} | {len(norm[s])} | {n_envs} | {rel_cell} | {paper_cell} |"
        )
    out += [
        "",
        "### Every setting measured the same way",
        "",
        (
            "Mean ± standard error over seeds. Training score: the mean reward of the last 100 training episodes (the "
            "paper's). Deterministic eval: the mean return of 10 episodes of the mean action at the end of the run, on a "
            "separately seeded env (runs from before this column existed are not counted; their number is in brackets). "
            "d: the KL between the policy before and after each update over its rollout, measured by the same callback "
            "for every algorithm. The std is the mean of the Gaussian policy's state-independent std."
        ),
        "",
        *measurements_table(rows),
    ]
    out += ["", "### Raw scores: mean reward of the last 100 training episodes, mean ± std over seeds", ""]
    out += ["| setting | " + " | ".join(envs) + " |", "|---|" + "---|" * len(envs)]
    for s in settings:
        cells = []
        for env in envs:
            scores = [float(r["score"]) for r in rows if r["setting"] == s and r["env"] == env]
            cells.append(f"{_fmt(scores)} ({len(scores)})" if scores else "not run")
        out.append(f"| {_name(s)} | " + " | ".join(cells) + " |")
    out.append("| random policy | " + " | ".join(f"{random[env]:.1f}" for env in envs) + " |")
    curves = f"results/{stem}_{timesteps}_curves.png"
    kl = f"results/{stem}_{timesteps}_kl.png"
    out += ["", f"![learning curves]({curves})", "", f"![KL and beta]({kl})", ""]
    (REPORT.parent / "results").mkdir(parents=True, exist_ok=True)
    plot_curves(rows, timesteps, REPORT.parent / curves)
    plot_kl(rows, timesteps, REPORT.parent / kl)
    return out


def missing(rows: list[dict[str, str]]) -> list[str]:
    """Rows of the full grid (every setting, 7 envs, seeds 0-2, 1M steps) that are not in the CSV yet."""
    grid = GRIDS["full"]
    have = {(r["setting"], r["env"], int(r["seed"])) for r in rows if int(r["timesteps"]) == grid["timesteps"]}
    lines = []
    for setting in grid["settings"]:
        gaps = {env: [seed for seed in grid["seeds"] if (setting, env, seed) not in have] for env in grid["envs"]}
        gaps = {env: seeds for env, seeds in gaps.items() if seeds}
        if len(gaps) == len(grid["envs"]) and all(len(seeds) == len(grid["seeds"]) for seeds in gaps.values()):
            lines.append(f"- {setting}: not run")
        elif gaps:
            lines.append(f"- {setting}: " + "; ".join(f"{env} seeds {seeds}" for env, seeds in gaps.items()))
    return lines


def main() -> None:
    rows = read_rows(RESULTS)
    random = {r["env"]: float(r["mean"]) for r in read_rows(RANDOM)}
    out = [
        "# Benchmarks: PPOKL against SB3 PPO, TRPO and Table 1 of the paper",
        "",
        "Generated by `python -m benchmarks.report` from `results/table1.csv`; do not edit by hand.",
        "",
        (
            "Protocol (Schulman et al. 2017, section 6.1 and table 3, https://arxiv.org/abs/1707.06347): MuJoCo -v5 "
            "tasks, one env, 2x64 tanh MLPs for policy and value (no shared layers), state-independent log-std, no "
            "entropy bonus, T=2048, Adam 3e-4, 10 epochs, minibatch 64, gamma 0.99, lambda 0.95; raw observations and "
            "rewards; SB3's advantage normalisation and gradient-norm clipping 0.5 in every setting. Score of a run: "
            "the mean total reward of its last 100 training episodes. Settings: see `benchmarks/run.py`."
        ),
        "",
        "Commands (from the repository root, after the README's install command):",
        "",
        "```",
        "python -m benchmarks.run --random                      # random-policy scores, results/table1_random.csv",
        "python -m benchmarks.run --grid paper-lite --workers 2 # 3 settings x 7 envs x 3 seeds x 300k",
        "python -m benchmarks.run --grid full --workers 2       # 13 settings x 7 envs x 3 seeds x 1M (resumable)",
        "python -m benchmarks.report                            # this file and the figures",
        "```",
        "",
        (
            f"Machine: {'; '.join(sorted({r['machine'] for r in rows})) or machine()}; one torch thread per run; runs in parallel "
            "as given by `--workers`."
        ),
        "",
    ]
    mujoco = [r for r in rows if r["env"] in ENVS]
    for timesteps in sorted({int(r["timesteps"]) for r in mujoco}):
        out += budget_section([r for r in mujoco if int(r["timesteps"]) == timesteps], timesteps, random)
    discrete = GRIDS["discrete"]
    checked = [r for r in rows if r["env"] in discrete["envs"] and int(r["timesteps"]) == discrete["timesteps"]]
    if checked:
        out += budget_section(
            checked,
            discrete["timesteps"],
            random,
            title=f"Discrete check: {' and '.join(discrete['envs'])}, {discrete['timesteps']:,} steps per run",
            stem="discrete",
            intro=(
                "Issue 11's discrete check: the same hyperparameters as above, which are SB3 PPO's defaults, on two "
                "discrete-action tasks (Categorical policies). A Categorical KL has no variance term to drop, so "
                "kl-perstate-meanonly-0.03 ran there as kl-perstate-0.03, the per-state penalty at kl_target 0.03."
            ),
        )
    if any(r["setting"] in REMOVED for r in rows):
        out += [
            "## Removed candidates",
            "",
            (
                "Issue 11's candidates for a PPOKL setting that learns as well as clipping. Stage 1: HalfCheetah-v5, 300k "
                "steps, 5 seeds; stage 2: the best two on the 7 tasks, 3 seeds, 300k; stage 3: the best at 1M on "
                "HalfCheetah, Hopper, Walker2d and Swimmer, 3 seeds; and the discrete check. None qualified, so their "
                "options were removed from the package; their rows above are the record of what they scored. "
                "Mean-only: the Gaussian KL without its variance term. Per-state: beta times the mean over states of "
                "max(0, KL_s - kl_target)."
            ),
            "",
            *[f"- `{setting}`: {description}" for setting, description in REMOVED.items()],
            "",
        ]
    gaps = missing(rows)
    out += ["## Not run yet: rows of the full 1M protocol", ""] + (gaps or ["None: the full grid is complete."]) + [""]
    REPORT.write_text("\n".join(out))
    print(f"wrote {REPORT}")


if __name__ == "__main__":
    main()
