"""The report's statistics: the paper's normalisation, rliable's inputs, beta's band and the recommendation's conditions."""

import numpy as np
import pytest

from benchmarks.results import ResultsDir, append_row, write_rows
from benchmarks.table1 import band, decision, figures, grid, report, stats
from benchmarks.table1.data import Run, load
from benchmarks.table1.figures import Figures

ENVS = ["HalfCheetah-v5", "Hopper-v5"]
RANDOM = {"HalfCheetah-v5": -300.0, "Hopper-v5": 20.0}


def runs_of(scores: dict[str, dict[str, list[float]]], timesteps: int = 300_000) -> list[Run]:
    """Runs from setting -> env -> the scores of seeds 0, 1, 2..."""
    return [
        Run(setting=setting, env=env, seed=seed, timesteps=timesteps, score=score)
        for setting, by_env in scores.items()
        for env, values in by_env.items()
        for seed, score in enumerate(values)
    ]


def results_with(folder, rows: list[dict], curves: dict[tuple[str, str, int, int], list[dict]]) -> list[Run]:
    """Write ``rows`` and their ``curves`` (by setting, env, seed, timesteps) into a results folder; load it back."""
    results = ResultsDir(folder)
    for row in rows:
        append_row(results / grid.RESULTS_CSV, grid.FIELDS, row)
    for key, curve in curves.items():
        write_rows(results / grid.curve_name(*key), grid.CURVE_FIELDS, curve)
    return load(results).runs


def test_paper_normalisation_takes_the_best_of_the_papers_settings():
    runs = runs_of(
        {
            "clip-0.2": {"HalfCheetah-v5": [700.0, 500.0, 600.0], "Hopper-v5": [1020.0, 1020.0, 1020.0]},
            "kl-adaptive-0.01": {"HalfCheetah-v5": [100.0, 200.0, 300.0], "Hopper-v5": [520.0, 520.0, 520.0]},
            # outside the paper's 11: scored against the same two points, never the 1
            "trpo": {"HalfCheetah-v5": [1700.0, 1700.0, 1700.0], "Hopper-v5": [20.0, 20.0, 20.0]},
        }
    )
    norm = stats.normalised(runs, RANDOM)
    assert norm["clip-0.2"]["HalfCheetah-v5"] == pytest.approx({0: 1.0 / 0.9, 1: 0.8 / 0.9, 2: 1.0})  # best mean 600 is the 1
    assert norm["kl-adaptive-0.01"]["Hopper-v5"] == {0: 0.5, 1: 0.5, 2: 0.5}
    assert norm["trpo"]["HalfCheetah-v5"][0] == pytest.approx(2.0 / 0.9)
    assert norm["trpo"]["Hopper-v5"][0] == 0.0  # the random policy's score

    matrices, envs, seeds = stats.score_matrices(norm)
    assert envs == ENVS and seeds == [0, 1, 2]
    assert matrices["kl-adaptive-0.01"].shape == (3, 2)  # (runs, envs), rliable's layout
    np.testing.assert_allclose(matrices["kl-adaptive-0.01"][:, 1], 0.5)

    # a setting without every run of clip-0.2's envs and seeds is left out of rliable's statistics
    partial = stats.normalised(runs + runs_of({"clip-0.1": {"HalfCheetah-v5": [600.0]}}), RANDOM)
    assert "clip-0.1" not in stats.score_matrices(partial)[0]

    # nor does it compete for the 1 until it has seeds 0-2: one lucky seed must not rescale every other setting
    lucky = stats.normalised(runs + runs_of({"clip-0.3": {"HalfCheetah-v5": [1200.0]}}), RANDOM)
    assert lucky["clip-0.2"]["HalfCheetah-v5"] == norm["clip-0.2"]["HalfCheetah-v5"]
    assert lucky["clip-0.3"]["HalfCheetah-v5"][0] == pytest.approx(1.5 / 0.9)
    complete = stats.normalised(runs + runs_of({"clip-0.3": {"HalfCheetah-v5": [1200.0, 1200.0, 1200.0]}}), RANDOM)
    assert complete["clip-0.2"]["HalfCheetah-v5"][2] == pytest.approx(0.9 / 1.5)

    points, intervals = stats.aggregates(matrices)
    iqm, mean = points["kl-adaptive-0.01"]
    # 6 runs, 25% cut from each end (one each): 4/9 and 6/9 go, three Hopper runs at 0.5 and 5/9 stay
    assert iqm == pytest.approx((3 * 0.5 + 5 / 9) / 4)
    assert mean == pytest.approx(np.mean(matrices["kl-adaptive-0.01"]))
    assert intervals["kl-adaptive-0.01"][0][1] <= mean <= intervals["kl-adaptive-0.01"][1][1]

    # the intervals are the same on every render, and a setting's do not depend on which others have rows
    alone = stats.aggregates({"kl-adaptive-0.01": matrices["kl-adaptive-0.01"]})[1]["kl-adaptive-0.01"]
    np.testing.assert_array_equal(alone, intervals["kl-adaptive-0.01"])

    poi, _ = stats.improvement_over_baseline(matrices)
    assert set(poi) == {"kl-adaptive-0.01"}  # PPOKL settings only: not TRPO, not clip-0.2 itself
    assert float(poi["kl-adaptive-0.01"]) == 0.0  # every run below every clip-0.2 run on both envs


def test_spearman_against_the_paper():
    same = {s: value for s, value in grid.PAPER_TABLE1.items()}
    rho, n, sentence = stats.spearman(same)
    assert (rho, n) == (pytest.approx(1.0), 11) and sentence == "the two orderings are the same"
    reversed_order = {s: -value for s, value in grid.PAPER_TABLE1.items()}
    rho, _, sentence = stats.spearman(reversed_order)
    assert rho == pytest.approx(-1.0) and "no-clip-no-penalty (ours 1, paper 11 of 11)" in sentence
    assert np.isnan(stats.spearman({"clip-0.2": 1.0, "clip-0.1": 0.5})[0])


def test_band_shares_and_targets():
    d = np.array([0.001, 0.006, 0.007, 0.01, 0.015, 0.016, np.nan])  # the band for 0.01 is [0.00667, 0.015]
    below, inside, above = stats.band_shares(d, 0.01)
    assert (below, inside, above) == pytest.approx((2 / 6, 3 / 6, 1 / 6))
    assert stats.constant_target("kl-adaptive-0.003") == 0.003
    assert stats.constant_target("kl-adaptive-0.03+clip-0.2") == 0.03
    assert stats.constant_target("kl-fixed-1") is None and stats.constant_target("clip-0.2") is None
    assert stats.constant_target("kl-perstate-meanonly-0.03") is None  # removed: its options, target included, are gone


def test_decision_conditions():
    clip = {env: [1000.0, 1100.0, 1200.0] for env in grid.ENVS}
    random = dict.fromkeys(grid.ENVS, 0.0)
    better = {env: [1100.0, 1100.0, 1100.0] for env in grid.ENVS}  # relative 1.0 everywhere, within one s.e.
    text = "\n".join(decision.decision(runs_of({"clip-0.2": clip, "kl-adaptive-0.03+clip-0.2": better}), random))
    assert "| kl-adaptive-0.03+clip-0.2 | 300,000 | 1.000 [0.97, 1.03]: met | 1100.0 ± 0.0 vs 1100.0 ± 57.7: met |" in text
    assert "| kl-adaptive-0.03+clip-0.2 | 1,000,000 | pending (0 of 21 runs) |" in text
    assert "| kl-adaptive-0.01+clip-0.2 | 300,000 | pending (0 of 21 runs) | pending (0 of 3 seeds) |" in text
    worse = {env: [550.0, 550.0, 550.0] for env in grid.ENVS}
    text = "\n".join(decision.decision(runs_of({"clip-0.2": clip, "kl-adaptive-0.01+clip-0.2": worse}), random))
    assert (
        "| kl-adaptive-0.01+clip-0.2 | 300,000 | 0.500 [0.49, 0.52]: short by 0.500 | 550.0 ± 0.0 vs 1100.0 ± 57.7: short by 492.3 |"
        in text
    )
    # short at 300k: not run at 1M, and the verdict names each condition it misses, with its numbers
    assert "| kl-adaptive-0.01+clip-0.2 | 1,000,000 | not run: short at 300,000 | not run |" in text
    assert (
        "- **kl-adaptive-0.01+clip-0.2: not recommended.** (a) 0.500 [0.49, 0.52], short by 0.500; "
        "(c) at 300,000 550.0 ± 0.0 against 1100.0 ± 57.7, short by 492.3." in text
    )
    assert "- kl-adaptive-0.03+clip-0.2: undecided until (a) and (c) at 300,000 and (b) and (c) at 1,000,000 are in." in text

    # met at both budgets by both: each qualifies, and the better at 1M is named
    above = {env: [1200.0, 1200.0, 1200.0] for env in grid.ENVS}  # relative 1.09 against the other's 1.0
    at_1m = {"clip-0.2": clip, "kl-adaptive-0.03+clip-0.2": above, "kl-adaptive-0.01+clip-0.2": clip}
    runs = runs_of(at_1m) + runs_of(at_1m, timesteps=1_000_000)
    text = "\n".join(decision.decision(runs, random))
    assert "- **kl-adaptive-0.03+clip-0.2: meets all three conditions.**" in text
    assert "- **kl-adaptive-0.01+clip-0.2: meets all three conditions.**" in text
    assert "- Both qualify; the better at 1M, by (b), is kl-adaptive-0.03+clip-0.2." in text


def update(i: int, **values: float) -> dict:
    """Update ``i`` of a curve (the columns not given are blank, as a clipping run's beta is)."""
    return dict.fromkeys(grid.CURVE_FIELDS, "") | {"timesteps": 2048 * (i + 1)} | values


def row(name: str, env: str = "Hopper-v5", seed: int = 0, **values) -> dict:
    return dict(setting=name, env=env, seed=seed, timesteps=300_000, score=1.0) | values


def test_band_table_says_how_often_d_leaves_the_band(tmp_path):
    # seeds 0 and 1 of the default on one env: 2 updates below the band, 3 inside, 1 above
    d_by_seed = {0: [0.001, 0.01, 0.012], 1: [0.006, 0.009, 0.02]}
    runs = results_with(
        tmp_path,
        [row("kl-adaptive-0.01", seed=seed) for seed in d_by_seed],
        {
            ("kl-adaptive-0.01", "Hopper-v5", seed, 300_000): [update(i, kl=value) for i, value in enumerate(d)]
            for seed, d in d_by_seed.items()
        },
    )
    lines = report.band_table(runs, 300_000)
    assert "| kl-adaptive-0.01 | Hopper-v5 | 6 | 33% | 50% | 17% | 0.95 |" in lines
    assert (
        "- kl-adaptive-0.01: beta left `d` inside its band in 50% of the updates and outside it in 50% "
        "(33% below, 17% above), with the median `d` at 0.95 of the target." in lines
    )


def test_penalty_effect_tells_a_parked_penalty_from_one_that_acts(tmp_path):
    measured = {
        "clip-0.2": ([0.01, 0.02, 0.05, 0.01], [float("nan")] * 4),
        "kl-adaptive-0.01+clip-0.2": ([0.01, 0.01, 0.012, 0.009], [1.0, 0.5, 1e-4, 1.0]),
        "kl-adaptive-0.03+clip-0.2": ([0.01, 0.02, 0.05, 0.01], [1e-4, 1e-4, 1e-4, 2e-4]),
    }
    curves = {
        (name, "Hopper-v5", 0, 300_000): [
            update(i, reward=10.0 * (i + 1), kl=value, kl_coef=coef)
            for i, (value, coef) in enumerate(zip(d, beta, strict=True))
        ]
        for name, (d, beta) in measured.items()
    }
    lines = decision.penalty_effect(results_with(tmp_path, [row(name) for name in measured], curves), 300_000)
    assert "| clip-0.2 | 4 | 0.0150 | 0.0410 | 0.0491 | 0.05 | 50.0% | 25.0% | (no penalty) |" in lines
    assert any(line.startswith("| kl-adaptive-0.01+clip-0.2 | 4 | 0.0100 |") and line.endswith("| 25% |") for line in lines)
    assert any(line.startswith("| kl-adaptive-0.03+clip-0.2 | 4 |") and line.endswith("| 75% |") for line in lines)
    # only the penalty parked at its floor in most updates is called out
    notes = [line for line in lines if line.startswith("- ") and "lower bound" in line]
    assert len(notes) == 1 and notes[0].startswith("- kl-adaptive-0.03+clip-0.2: beta sat at its lower bound in 75%")
    # and each setting's largest step is located, with the training reward around it
    assert (
        "- clip-0.2's largest `d`, 0.05, came on Hopper-v5 (seed 0) at 6,144 steps; the training reward was 20 before "
        "that update and 40 1 update later." in lines
    )


def test_relative_to_clip_compares_the_seeds_both_have():
    clip = {"HalfCheetah-v5": [400.0, 500.0, 600.0, 900.0, 900.0], "Hopper-v5": [1020.0, 1020.0, 1020.0]}
    ours = {"HalfCheetah-v5": [200.0, 200.0, 200.0], "Hopper-v5": [520.0]}
    relative = stats.relative_to_clip(runs_of({"clip-0.2": clip, "kl-fixed-1": ours}), RANDOM)
    # HalfCheetah: seeds 0-2 only, (200 + 300) / (500 + 300), not against clip-0.2's five-seed mean of 660
    assert relative["kl-fixed-1"] == pytest.approx({"HalfCheetah-v5": 500 / 800, "Hopper-v5": 0.5})
    assert relative["clip-0.2"] == pytest.approx({"HalfCheetah-v5": 1.0, "Hopper-v5": 1.0})


def test_relative_interval_of_runs_without_spread_is_the_point():
    ours, clip = np.full((3, 7), 2.0), np.full((3, 7), 1.0)
    assert stats.relative_interval(ours, clip) == pytest.approx((2.0, 2.0))
    # one env where clipping's seeds spread: the interval widens around the point, 2 on the 6 others
    clip[:, 0] = [0.5, 1.0, 1.5]
    low, high = stats.relative_interval(ours, clip)
    assert low < 2.0 < high and 2.0 + (2 / 1.5 - 2) / 7 <= low and high <= 2.0 + (2 / 0.5 - 2) / 7


def test_families_group_the_settings_with_clip_in_each():
    groups = figures.families(["clip-0.2", "clip-0.1", "kl-fixed-1", "kl-meanonly-0.02", "trpo"])
    assert groups == {
        "clipping": ["clip-0.1", "clip-0.2"],
        "fixed KL penalty": ["kl-fixed-1", "clip-0.2"],
        "beyond the paper": ["trpo", "clip-0.2"],
        "removed candidates (issue 11)": ["kl-meanonly-0.02", "clip-0.2"],
    }
    # a family with nothing besides the reference is left out; without the reference, none is added
    assert figures.families(["clip-0.2"]) == {}
    assert figures.families(["kl-adaptive-0.01"]) == {"adaptive KL penalty (PPO1)": ["kl-adaptive-0.01"]}


def test_a_settings_name_is_read_in_one_place():
    # the KL figure draws a beta row for a family only when one of its settings moves beta, and its target dashed
    assert grid.setting("kl-adaptive-0.01").adaptive and grid.setting("kl-adaptive-0.03+clip-0.2").adaptive
    assert grid.setting("kl-adaptive-0.03+clip-0.2").kl_target == 0.03
    removed = grid.setting("kl-meanonly-0.02")  # a removed candidate: adaptive PPOKL, its options gone
    assert removed.adaptive and removed.algo == "ppo_kl" and removed.kl_target is None
    assert removed.label == "kl-meanonly-0.02 (removed)" and grid.setting("clip-0.2").label == "clip-0.2"
    assert not grid.setting("kl-fixed-1").adaptive and grid.setting("kl-fixed-1").kl_target is None
    assert not grid.setting("clip-0.2").adaptive and not grid.setting("trpo").adaptive
    with pytest.raises(ValueError, match="unknown Table 1 setting 'kl-nonsense'"):
        grid.setting("kl-nonsense")


def test_a_row_of_an_unknown_setting_stops_the_report(tmp_path):
    with pytest.raises(ValueError, match="unknown Table 1 setting 'kl-nonsense'"):
        results_with(tmp_path, [row("kl-nonsense")], {})


def test_trpo_bound_scales_with_the_action_dimension(tmp_path):
    measured = {"HalfCheetah-v5": [0.03, 0.05], "InvertedPendulum-v5": [0.008, 0.011]}
    runs = results_with(
        tmp_path,
        [row("trpo", env=env, final_kl=np.mean(d)) for env, d in measured.items()],
        {("trpo", env, 0, 300_000): [update(i, kl=value) for i, value in enumerate(d)] for env, d in measured.items()},
    )
    lines = report.trpo_bound(runs)
    # sb3-contrib's default target_kl 0.01, times 6 action dims for HalfCheetah and 1 for InvertedPendulum
    assert "| HalfCheetah-v5 | 6 | 0.06 | 0.0400 (1) | 0.0500 |" in lines
    assert "| InvertedPendulum-v5 | 1 | 0.01 | 0.0095 (1) | 0.0110 |" in lines
    assert report.trpo_bound([r for r in runs if r.setting != "trpo"]) == []  # no TRPO rows: no section


def test_score_matrices_keep_the_complete_envs_while_an_env_lands():
    complete = {"HalfCheetah-v5": [700.0, 500.0, 600.0]}
    runs = runs_of({"clip-0.2": complete, "kl-adaptive-0.01": {"HalfCheetah-v5": [100.0, 200.0, 300.0]}})
    # seed 0 of a third env has landed for both settings: the statistics stay on the env with seeds 0-2
    runs += runs_of({"clip-0.2": {"Hopper-v5": [520.0]}, "kl-adaptive-0.01": {"Hopper-v5": [270.0]}})
    matrices, envs, seeds = stats.score_matrices(stats.normalised(runs, RANDOM))
    assert envs == ["HalfCheetah-v5"] and seeds == [0, 1, 2]
    assert matrices["kl-adaptive-0.01"].shape == (3, 1)
    # before any env is complete, the seeds clip-0.2 has everywhere
    matrices, envs, seeds = stats.score_matrices(
        stats.normalised(runs_of({"clip-0.2": {"HalfCheetah-v5": [700.0, 500.0], "Hopper-v5": [520.0]}}), RANDOM)
    )
    assert envs == ENVS and seeds == [0]


def test_report_writes_into_its_results_folder_and_help_writes_nothing(tmp_path, capsys):
    """--results-dir DIR: DIR's results in, DIR/RESULTS.md and its figures out, linked beside it; --help: nothing."""
    from benchmarks import report as command

    with pytest.raises(SystemExit) as done:
        command.main(["--help"])
    assert done.value.code == 0 and "--results-dir DIR" in capsys.readouterr().out
    assert not list(tmp_path.iterdir())

    scores = {"clip-0.2": [500.0, 600.0, 700.0], "kl-adaptive-0.01": [400.0, 500.0, 600.0]}
    rows = [row(name, seed=seed, score=score) for name, values in scores.items() for seed, score in enumerate(values)]
    curves = {
        (name, "Hopper-v5", seed, 300_000): [update(i, reward=score, kl=0.01, kl_coef=1.0, std=0.9) for i in range(3)]
        for name, values in scores.items()
        for seed, score in enumerate(values)
    }
    results_with(tmp_path, rows, curves)
    append_row(tmp_path / grid.RANDOM_CSV, grid.RANDOM_FIELDS, dict(env="Hopper-v5", episodes=3, mean=20.0, std=1.0))
    command.main(["--results-dir", str(tmp_path)])
    text = (tmp_path / "RESULTS.md").read_text()
    for figure in ("table1_300000_profile.png", "table1_300000_curves.png", "table1_300000_kl.png"):
        assert f"]({figure})" in text and (tmp_path / figure).stat().st_size > 0
    assert "| Hopper-v5 | clip-0.2 | 3 | 600.0 ± 57.7 |" in text


def test_beta_response_and_autocorrelation_against_hand_computed_values():
    # log beta 0, 1, 1, 0, 0: the beta of updates 1-3 changed by +1, 0, -1 before them; log d changed by -2, 1, 2
    log_beta = np.array([0.0, 1.0, 1.0, 0.0, 0.0])
    log_d = np.array([0.0, 0.0, -2.0, -1.0, 1.0])
    # x = (1, 0, -1), y = (-2, 1, 2): sum((x - 0)(y - 1/3)) / sum(x^2) = (-7/3 - 5/3) / 2 = -2
    assert stats.beta_response(np.exp(log_d), np.exp(log_beta)) == pytest.approx(-2.0)
    # log d = c - a log beta exactly, with beta of update t read from row t - 1: the slope is -a
    log_beta = np.log([1.0, 2.0, 2.0, 1.0, 0.5, 1.0, 2.0, 4.0])
    log_d = np.concatenate([[0.0], 0.3 - 1.7 * log_beta[:-1]])
    assert stats.beta_response(np.exp(log_d), np.exp(log_beta)) == pytest.approx(-1.7)
    # a blank update drops its pairs; a beta that never moved has no slope
    assert np.isnan(stats.beta_response(np.full(6, 0.01), np.ones(6)))
    assert np.isnan(stats.beta_response(np.array([0.01, np.nan, 0.02, 0.01]), np.array([1.0, 2.0, 1.0, 2.0])))

    target = 0.01
    # log(d / target) 1, 0, 0, 1: pairs (1, 0), (0, 0), (0, 1); means 1/3; covariance -1/3, variances 2/3: -0.5
    assert stats.lag1_autocorrelation(target * np.exp([1.0, 0.0, 0.0, 1.0]), target) == pytest.approx(-0.5)
    assert stats.lag1_autocorrelation(target * np.exp([1.0, -1.0, 1.0, -1.0]), target) == pytest.approx(-1.0)
    assert stats.lag1_autocorrelation(target * np.exp([0.0, 1.0, 2.0, 3.0]), target) == pytest.approx(1.0)
    assert np.isnan(stats.lag1_autocorrelation(np.full(5, target), target))  # no spread


def band_curve(log_d: list[float], log_beta: list[float], **columns: list[float]) -> list[dict]:
    """A curve of d = 0.01 * exp(log_d) and beta = exp(log_beta), with other columns by update."""
    return [
        update(i, kl=0.01 * np.exp(ld), kl_coef=np.exp(lb), **{k: v[i] for k, v in columns.items()})
        for i, (ld, lb) in enumerate(zip(log_d, log_beta))
    ]


def test_band_section_renders_with_pending_settings(tmp_path):
    log_d, log_beta = [0.0, 0.0, -2.0, -1.0, 1.0], [0.0, 1.0, 1.0, 0.0, 0.0]
    env = band.FIGURE_ENV
    curves = {
        ("kl-adaptive-0.01", env, 0, 300_000): band_curve(log_d, log_beta),
        ("clip-0.2", env, 0, 300_000): [update(i, kl=0.02) for i in range(5)],
        # the stop: 2 of the 5 updates stopped, after 1.5 and 2.5 epochs
        ("kl-logprop-0.01+stop", env, 0, 300_000): band_curve(
            [0.0] * 5, [0.0] * 5, epochs=[10, 1.5, 10, 2.5, 10], minibatches=[320, 48, 320, 80, 320], stopped=[0, 1, 0, 1, 0]
        ),
    }
    runs = results_with(tmp_path, [row(name, env=env) for name, *_ in curves], curves)
    figures = Figures(ResultsDir(tmp_path), tmp_path / "RESULTS.md")
    lines = band.band_section(runs, {env: -300.0}, figures)
    # d / target: e^0, e^0, e^-2, e^-1, e^1: 1 inside, 2 below (e^-2, e^-1 < 1/1.5), 1 above of 5; the -0.5-like swing
    swing = stats.lag1_autocorrelation(0.01 * np.exp(log_d), 0.01)
    assert f"| kl-adaptive-0.01 | {env} | -2.00 | {swing:.2f} | 40% | 40% | 20% | - | - |" in lines
    # the stop's columns: mean epochs (10 + 1.5 + 10 + 2.5 + 10) / 5 = 6.8, 2 of 5 stopped; beta never moved: no slope
    assert f"| kl-logprop-0.01+stop | {env} | n/a | n/a | 0% | 100% | 0% | 6.8 | 40% |" in lines
    assert not any(line.startswith("| clip-0.2 |") for line in lines)  # no beta, no band
    # the figure: the paper's rule against the only new setting with a run on its task
    assert any("kl-adaptive-0.01 (the paper's rule) against kl-logprop-0.01+stop" in line for line in lines)
    # the verdict: every setting pending until its 21 runs are in, with the runs in so far (clip-0.2 scores as they do)
    assert (
        "| kl-adaptive-0.01 | pending (1 of 21 runs; so far 40% inside, 1.00 of clip-0.2 on 1 task) | | about 40% (the "
        "paper's rule) | | | pending |" in lines
    )
    assert any(line.startswith("| kl-logprop-0.01 | pending (0 of 21 runs) |") for line in lines)
    assert "- kl-logprop-0.01+stop: pending (1 of 21 runs; so far 100% inside, 1.00 of clip-0.2 on 1 task)." in lines
    figures.draw()
    assert (tmp_path / f"table1_300000_band_{env}.png").stat().st_size > 0

    # without a new setting's run the figure shows the paper's rule alone, and says so
    alone = band.band_section([r for r in runs if r.setting != "kl-logprop-0.01+stop"], {env: -300.0}, figures)
    assert any("kl-adaptive-0.01 (the paper's rule) alone: none of issue 32's settings" in line for line in alone)


def test_band_verdict_says_which_setting_meets_the_goal(tmp_path):
    random = dict.fromkeys(grid.ENVS, 0.0)
    # per setting: d / target on every update, and every seed's score on every env
    settings = {
        "clip-0.2": (None, 100.0),
        "kl-adaptive-0.01": ([0.5, 1.0, 2.0, 1.0], 90.0),  # inside on 2 of 4 updates
        "kl-logprop-0.01": ([1.0, 1.2, 0.9, 1.0], 95.0),  # always inside, a better score: meets the goal
        "kl-adaptive-0.01+stop": ([1.0, 1.0, 1.0, 3.0], 80.0),  # inside on 3 of 4, and a worse score
    }
    rows, curves = [], {}
    for name, (ratios, score) in settings.items():
        for env in grid.ENVS:
            for seed in grid.SEEDS:
                rows.append(row(name, env=env, seed=seed, score=score))
                ratios_or_blank = ratios or [np.nan] * 4
                curves[name, env, seed, 300_000] = [
                    update(i, kl=0.01 * r, kl_coef=1.0 if ratios else "") for i, r in enumerate(ratios_or_blank)
                ]
    runs = results_with(tmp_path, rows, curves)
    lines = band.verdict_part(runs, random)
    # clip-0.2 is the best of the paper's settings here: every normalised score is score / 100, as is its relative
    assert "| kl-adaptive-0.01 | 50% | 30% | about 40% (the paper's rule) | 0.90 | 0.90 | the reference |" in lines
    assert "- kl-logprop-0.01: **meets the goal**." in lines
    assert (
        "- kl-adaptive-0.01+stop: short: d inside the band on 75%, 5% short of 80%; relative to clip-0.2 0.80 against "
        "kl-adaptive-0.01's 0.90; IQM 0.80 against kl-adaptive-0.01's 0.90." in lines
    )
    assert "- kl-logprop-0.01+stop: pending (0 of 21 runs)." in lines


def test_the_stop_trials_table_sets_each_trial_beside_the_rule(tmp_path):
    env = "InvertedDoublePendulum-v5"
    curves = {
        # d / target 1, 2, 0.5, 1: 2 inside, 1 above, 1 below; 10 epochs (no stop)
        ("kl-adaptive-0.01", env, 0, 300_000): [update(i, kl=0.01 * r, kl_coef=1.0) for i, r in enumerate([1, 2, 0.5, 1])],
        # always inside, after 2 and 3 epochs
        ("trial-stop-backtrack", env, 0, 300_000): [
            update(i, kl=0.01, kl_coef=1.0, epochs=e, minibatches=32 * e, stopped=1) for i, e in enumerate([2, 3])
        ],
        ("trial-stop-untold", env, 1, 300_000): [update(0, kl=0.01, kl_coef=1.0, epochs=2, minibatches=64, stopped=1)],
    }
    rows = [
        row("kl-adaptive-0.01", env=env, score=7000.0, eval_score=6900.0),
        row("trial-stop-backtrack", env=env, score=350.0, eval_score=500.0),
        row("trial-stop-untold", env=env, seed=1, score=1.0),  # another seed: not a trial's row
    ]
    lines = band.trials_part(results_with(tmp_path, rows, curves))
    assert f"| kl-adaptive-0.01 | {env} | 25% | 50% | 25% | 10 | 7000 | 6900 |" in lines
    assert f"| trial-stop-backtrack | {env} | 0% | 100% | 0% | 2.5 | 350 | 500 |" in lines
    assert not any("trial-stop-untold |" in line for line in lines)
    # without a trial's run there is no table
    assert (
        band.trials_part(
            results_with(tmp_path / "none", rows[:1], {k: v for k, v in curves.items() if k[0] == "kl-adaptive-0.01"})
        )
        == []
    )


def test_the_one_seed_table_sets_band_against_score_over_the_seven_tasks(tmp_path):
    random = dict.fromkeys(grid.ENVS, 0.0)
    # seed 0 on every task: the rule inside on 2 of 4 updates (score 90, evaluation 100); a trial always inside after
    # 3 and 5 epochs (score 60, evaluation 50); clip-0.2 100 and 100. trial-stop-top lacks a task: no row.
    rows, curves = [], {}
    for env in grid.ENVS:
        rows += [
            row("clip-0.2", env=env, score=100.0, eval_score=100.0),
            row("kl-adaptive-0.01", env=env, score=90.0, eval_score=100.0),
            row("trial-stop-late", env=env, score=60.0, eval_score=50.0),
        ]
        curves["clip-0.2", env, 0, 300_000] = [update(i, kl=0.02) for i in range(4)]
        curves["kl-adaptive-0.01", env, 0, 300_000] = [
            update(i, kl=0.01 * r, kl_coef=1.0) for i, r in enumerate([0.5, 1.0, 2.0, 1.0])
        ]
        curves["trial-stop-late", env, 0, 300_000] = [
            update(i, kl=0.01, kl_coef=1.0, epochs=e, minibatches=32 * e, stopped=1) for i, e in enumerate([3, 5, 3, 5])
        ]
    rows.append(row("trial-stop-top", env="Hopper-v5", score=1.0))
    curves["trial-stop-top", "Hopper-v5", 0, 300_000] = [update(0, kl=0.01, kl_coef=1.0)]
    lines = band.one_seed_part(results_with(tmp_path, rows, curves), random)
    assert "| kl-adaptive-0.01 | 25% | 50% | 25% | 10 | 0.90 | 1.00 |" in lines
    assert "| trial-stop-late | 0% | 100% | 0% | 4.0 | 0.60 | 0.50 |" in lines
    assert not any(line.startswith("| trial-stop-top |") for line in lines)
    # the rule alone is no comparison: no table
    alone = [r for r in rows if r["setting"] != "trial-stop-late"]
    assert band.one_seed_part(results_with(tmp_path / "alone", alone, curves), random) == []
