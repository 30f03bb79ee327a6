"""
The report's figures, drawn after its text (:class:`Figures`).

rliable's performance profiles, and per family of settings the learning curves, and d, beta and the action std over
training.
"""

import os
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks.results import ResultsDir
from benchmarks.table1.data import Curve, Run, curves_for, env_order, present
from benchmarks.table1.grid import BASELINE, ORDER, TRIALS, setting
from benchmarks.table1.stats import BOOTSTRAP_REPS


class Figures:
    """The figures a report links to, drawn into the results folder once its text is written."""

    def __init__(self, results: ResultsDir, report: Path) -> None:
        self.results, self.report = results, report
        self.pending: dict[str, Callable[[Path], None]] = {}

    def link(self, name: str, draw: Callable[[Path], None]) -> str:
        """Register ``draw`` for the file ``name`` of the results folder; its path relative to the report."""
        self.pending[name] = draw
        return Path(os.path.relpath(self.results / name, self.report.parent)).as_posix()

    def draw(self) -> None:
        """Draw every registered figure."""
        self.results.root.mkdir(parents=True, exist_ok=True)
        for name, draw in self.pending.items():
            draw(self.results / name)


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
    "kl-adaptive-0.03+clip-0.2": "sienna",
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
    "kl-logprop-0.01": "tab:olive",
    "kl-adaptive-0.01+stop": "deeppink",
    "kl-logprop-0.01+stop": "indigo",
}
# issue 32's stop trials share the "other settings" panels with clip-0.2 (blue): a colour each, none of them blue
COLORS.update(
    zip(
        TRIALS,
        ["tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:gray", "gold", "black"],
        strict=True,
    )
)

# the performance profile's panels: each family of settings beside clip-0.2
PROFILE_PANELS = {
    "clipping": ["no-clip-no-penalty", "clip-0.1", "clip-0.2", "clip-0.3"],
    "adaptive KL penalty (PPO1)": ["kl-adaptive-0.003", "kl-adaptive-0.01", "kl-adaptive-0.03", "clip-0.2"],
    "fixed KL penalty": ["kl-fixed-0.3", "kl-fixed-1", "kl-fixed-3", "kl-fixed-10", "clip-0.2"],
    "beyond the paper": ["kl-adaptive-0.01+clip-0.2", "kl-adaptive-0.03+clip-0.2", "trpo", "clip-0.2"],
    "beta's band (issue 32)": ["kl-logprop-0.01", "kl-adaptive-0.01+stop", "kl-logprop-0.01+stop", "clip-0.2"],
}


def families(settings: list[str]) -> dict[str, list[str]]:
    """
    The given settings grouped as :data:`PROFILE_PANELS`, in its order, with clip-0.2 (when given) in every group
    for reference; a runnable setting in no family (add it to one) forms a group of other settings, and the removed
    candidates a last group. A group with nothing besides the reference is left out.
    """
    groups = {title: [s for s in names if s in settings] for title, names in PROFILE_PANELS.items()}
    listed = {s for names in PROFILE_PANELS.values() for s in names}
    reference = [BASELINE] if BASELINE in settings else []
    unlisted = [s for s in settings if s not in listed]
    groups["other settings"] = [s for s in unlisted if not setting(s).removed] + reference
    groups["removed candidates (issue 11)"] = [s for s in unlisted if setting(s).removed] + reference
    return {title: names for title, names in groups.items() if [s for s in names if s != BASELINE]}


def plot_profile(matrices: dict[str, np.ndarray], timesteps: int, path: Path) -> None:
    """
    rliable's performance profiles: the fraction of runs whose normalised score exceeds tau, with 95% bands; one
    panel per family of settings (:data:`PROFILE_PANELS`), each with clip-0.2 for reference, and one for the
    removed candidates with the same runs (every setting of the runner is in a family).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from rliable import library, plot_utils

    everything = np.concatenate([m.ravel() for m in matrices.values()])
    taus = np.linspace(min(0.0, everything.min()), everything.max() + 0.05, 81)
    state = np.random.get_state()
    np.random.seed(0)  # rliable resamples with NumPy's global generator
    try:
        profiles, bands = library.create_performance_profile(matrices, taus, reps=BOOTSTRAP_REPS)
    finally:
        np.random.set_state(state)
    panels = families(list(profiles))
    columns = min(2, len(panels)) or 1
    rows = max(1, -(-len(panels) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(6.5 * columns, 3.8 * rows), squeeze=False, sharex=True, sharey=True)
    for ax, (title, names) in zip(axes.ravel(), panels.items(), strict=False):
        plot_utils.plot_performance_profiles(
            {s: profiles[s] for s in names},
            taus,
            performance_profile_cis={s: bands[s] for s in names},
            colors={s: COLORS.get(s, "black") for s in names},
            xlabel=r"normalised score $\tau$ (random 0, best of the paper's settings 1)",
            ylabel=r"fraction of runs with score $> \tau$",
            ax=ax,
            labelsize="small",
            ticklabelsize="small",
        )
        handles = [Line2D([], [], color=COLORS.get(s, "black"), lw=2) for s in names]
        ax.legend(handles, names, fontsize=7, loc="lower left")
        ax.set_title(title, fontsize=10)
    for ax in axes.ravel()[len(panels) :]:
        ax.set_visible(False)
    n_runs, n_envs = next(iter(matrices.values())).shape
    fig.suptitle(f"Performance profiles, {timesteps:,} steps ({n_runs} seeds x {n_envs} envs; bands: 95% CI)", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def _thousands(ax) -> None:
    from matplotlib.ticker import FuncFormatter

    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x / 1e3:.0f}k"))


def _finish(fig, axes, title: str, path: Path) -> None:
    """The per-family figures' last steps: x labels under the bottom row, a two-line title above the env names."""
    import matplotlib.pyplot as plt

    for ax in axes[-1]:
        ax.set_xlabel("timesteps", fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.55 / fig.get_figheight()))  # room for the two-line title
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def plot_curves(runs: list[Run], timesteps: int, path: Path) -> None:
    """
    Reward against timesteps: one row of panels per family of settings (:func:`families`, clip-0.2 in each for
    reference), one column per env; each setting's mean over seeds, with its min-max band.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    envs = env_order(runs)
    groups = families(present(ORDER, runs))
    fig, axes = plt.subplots(
        len(groups), len(envs), figsize=(2.9 * len(envs) + 2.6, 2.4 * len(groups)), squeeze=False, sharex=True
    )
    for row, (title, settings) in enumerate(groups.items()):
        seeds: dict[str, set[int]] = defaultdict(set)  # the row's settings: how many seeds each env's curve has
        for col, env in enumerate(envs):
            ax = axes[row, col]
            for name in settings:
                curves = curves_for(runs, name, env, timesteps)
                if not curves:
                    continue
                seeds[name].add(len(curves))
                length = min(len(c["timesteps"]) for c in curves)
                steps = curves[0]["timesteps"][:length]
                reward = np.array([c["reward"][:length] for c in curves])
                color = COLORS.get(name)
                ax.plot(steps, np.nanmean(reward, 0), color=color, lw=1.2)
                ax.fill_between(steps, np.nanmin(reward, 0), np.nanmax(reward, 0), color=color, alpha=0.15)
            if row == 0:
                ax.set_title(env, fontsize=9)
            _thousands(ax)
            ax.tick_params(labelsize=6)
        axes[row, 0].set_ylabel(f"{title}\nreward, last 100 ep.", fontsize=7)
        if seeds:  # one legend entry per setting of the row: "clip-0.2 (3-5)" where envs have different seed counts
            handles = [Line2D([], [], color=COLORS.get(s), lw=1.5) for s in seeds]
            labels = [f"{s} ({min(n)})" if len(n) == 1 else f"{s} ({min(n)}-{max(n)})" for s, n in seeds.items()]
            axes[row, -1].legend(handles, labels, fontsize=7, loc="center left", bbox_to_anchor=(1.04, 0.5))
    _finish(
        fig,
        axes,
        f"Table 1 protocol, {timesteps:,} steps per run: one row per family, clip-0.2 in each\n"
        "(legend: setting (seeds); line: mean over seeds, band: min-max)",
        path,
    )


def _smooth(values: np.ndarray, window: int = 10) -> np.ndarray:
    """Trailing mean over ``window`` updates (NaN where a curve has no value)."""
    out = np.full_like(values, np.nan)
    for i in range(len(values)):
        chunk = values[max(0, i - window + 1) : i + 1]
        if np.isfinite(chunk).any():
            out[i] = np.nanmean(chunk)
    return out


def plot_kl(runs: list[Run], timesteps: int, path: Path) -> None:
    """
    Per family of settings (:func:`families`, clip-0.2 in each for reference) and env: d (every setting), beta (in
    the families with an adaptive setting) and the mean action std (Gaussian policies): for each setting the mean
    over its seeds of a 10-update trailing mean. Dashed: an adaptive setting's kl_target.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import NullFormatter

    envs = env_order(runs)
    groups = families([s for s in present(ORDER, runs) if s != "no-clip-no-penalty"])
    gaussian = any(r.final_std is not None for r in runs)
    # one row of panels per (family, quantity): (family, its settings, curve column, y label, log scale)
    panels: list[tuple[str, list[str], str, str, bool]] = []
    for title, settings in groups.items():
        panels.append((title, settings, "kl", "d per update", True))
        if any(setting(s).adaptive for s in settings):
            panels.append((title, settings, "kl_coef", "beta after the update", True))
        if gaussian:
            panels.append((title, settings, "std", "mean action std", False))
    read = {(s, env): curves_for(runs, s, env, timesteps) for names in groups.values() for s in names for env in envs}
    fig, axes = plt.subplots(
        len(panels), len(envs), figsize=(2.9 * len(envs) + 2.6, 1.9 * len(panels)), squeeze=False, sharex=True
    )
    for row, (title, settings, column, ylabel, log) in enumerate(panels):
        for col, env in enumerate(envs):
            ax = axes[row, col]
            for name in settings:
                curves = read[name, env]
                if not curves:
                    continue
                color = COLORS.get(name)
                length = min(len(c["timesteps"]) for c in curves)
                steps = curves[0]["timesteps"][:length]
                values = np.array([_smooth(c[column][:length]) for c in curves])
                if np.isfinite(values).any():
                    with np.errstate(all="ignore"):
                        ax.plot(steps, np.nanmean(values, 0), color=color, lw=1.1)
                target = setting(name).kl_target
                if column == "kl" and target is not None:
                    values = [target(1 - t / timesteps) for t in steps] if callable(target) else [target] * len(steps)
                    ax.plot(steps, values, color=color, ls="--", lw=0.8)
            if row == 0:
                ax.set_title(env, fontsize=9)
            _thousands(ax)
            if log and ax.lines:
                ax.set_yscale("log")
                ax.yaxis.set_minor_formatter(NullFormatter())
            if not ax.lines:
                ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes, fontsize=7)
            ax.tick_params(labelsize=6)
        axes[row, 0].set_ylabel(f"{title}\n{ylabel}", fontsize=7)
        if row == 0 or panels[row - 1][0] != title:  # the family's legend, beside its first row
            shown = [s for s in settings if any(read[s, env] for env in envs)]
            handles = [Line2D([], [], color=COLORS.get(s), lw=1.5) for s in shown]
            axes[row, -1].legend(handles, shown, fontsize=7, loc="upper left", bbox_to_anchor=(1.04, 1.0))
    _finish(
        fig,
        axes,
        f"{timesteps:,} steps per run, one group of rows per family, clip-0.2 in each: mean over seeds of a "
        "10-update trailing mean\n(dashed: PPOKL's kl_target). d is measured the same way for every algorithm.",
        path,
    )


def plot_band(curves: dict[str, Curve], env: str, seed: int, timesteps: int, path: Path) -> None:
    """
    ``d / kl_target`` update by update for one run of each given setting (setting -> its curve) on one task, on a
    log scale, with the band ``[1 / 1.5, 1.5]`` shaded and the target at 1.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 3.6))
    ax.axhspan(1 / 1.5, 1.5, color="tab:green", alpha=0.12, lw=0, label="band [target / 1.5, target x 1.5]")
    ax.axhline(1.0, color="tab:green", lw=0.8)
    for name, curve in curves.items():
        target = setting(name).kl_target
        assert isinstance(target, float)
        ax.plot(curve["timesteps"], curve["kl"] / target, color=COLORS.get(name), lw=0.9, label=name)
    ax.set_yscale("log")
    _thousands(ax)
    ax.set_xlabel("timesteps", fontsize=8)
    ax.set_ylabel("d / kl_target", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7, loc="upper right")
    ax.set_title(f"{env}, seed {seed}, {timesteps:,} steps: d over the target after each update", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
