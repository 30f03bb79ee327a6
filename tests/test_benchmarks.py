"""The Table 1 benchmark runner and report: settings map to the right models, runs resume, the report renders."""

import csv

import pytest
from sb3_contrib import TRPO
from stable_baselines3 import PPO

from benchmarks.dispatch import RunsFailed, run_jobs
from benchmarks.results import ResultsDir, append_new_row, append_row, read_rows
from benchmarks.table1 import grid, run
from benchmarks.table1.data import load
from benchmarks.table1.report import write_report
from sb3_ppo_kl import PPOKL

ENV = "InvertedPendulum-v5"


@pytest.mark.parametrize("setting", list(grid.SETTINGS))
def test_setting_builds_the_paper_protocol(setting):
    model = run.make_model(setting, ENV, seed=0)
    algo, kwargs = grid.SETTINGS[setting]
    assert type(model) is {"ppo": PPO, "ppo_kl": PPOKL, "trpo": TRPO}[algo]
    assert model.n_steps == 2048 and model.gamma == 0.99 and model.gae_lambda == 0.95
    assert model.policy.net_arch == dict(pi=[64, 64], vf=[64, 64])
    # no shared layers: the shared features extractor is a parameter-free Flatten
    assert not list(model.policy.features_extractor.parameters())
    if algo == "trpo":
        return
    assert (model.batch_size, model.n_epochs, model.learning_rate, model.ent_coef) == (64, 10, 3e-4, 0.0)
    if algo == "ppo":
        assert model.clip_range(1.0) == kwargs["clip_range"]
    else:
        assert model.kl_coef == kwargs.get("kl_coef", 1.0)
        assert model.kl_controller.adaptive_kl == kwargs.get("adaptive_kl", True)
        assert model.kl_controller.kl_target == kwargs.get("kl_target", 0.01)
        assert (model.clip_range is None) == ("clip_range" not in kwargs)


def test_removed_settings_cannot_run_and_every_grid_can():
    """Removed candidates keep their rows and descriptions, but no grid names them (their options are gone)."""
    assert set(grid.REMOVED).isdisjoint(grid.SETTINGS)
    for preset in grid.GRIDS.values():
        assert set(preset["settings"]) <= set(grid.SETTINGS)
    with pytest.raises(ValueError, match="was removed"):
        run.make_model("kl-perstate-meanonly-0.03", ENV, seed=0)
    assert grid.PAPER_SETTINGS == list(grid.SETTINGS)[:11]  # the paper's 11, in Table 1's order


def test_band_settings_are_removed_options_that_keep_their_arguments():
    """Issue 32's three settings lost and their options were removed (issue 45): they no longer run, and keep their
    arguments (the band report reads kl_stop and kl_target) and their rows, labelled as removed."""
    for name in grid.BAND_SETTINGS:
        spec = grid.setting(name)
        assert spec.removed and spec.kl_target == 0.01 and spec.label == f"{name} (removed)"
        assert name in grid.ORDER and name not in grid.SETTINGS
        assert all(name not in preset["settings"] for preset in grid.GRIDS.values())
        with pytest.raises(ValueError, match="was removed"):
            run.make_model(name, ENV, seed=0)
    assert grid.setting("kl-adaptive-0.01+stop").kwargs["kl_stop"] == 1.0
    assert "kl_stop" not in grid.setting("kl-logprop-0.01").kwargs
    assert grid.setting("kl-perstate-0.02").kl_target is None  # issue 11's candidates keep no arguments


def test_settled_stop_trials_keep_their_rows_but_no_longer_run():
    assert all(name.startswith("trial-") and grid.setting(name).adaptive for name in grid.TRIALS)
    assert all(grid.setting(name).trial and grid.setting(name).kl_target == 0.01 for name in grid.TRIALS)
    assert grid.setting("trial-logprop-stop-i2").kwargs["kl_stop_interval"] == 2
    assert set(grid.TRIALS).isdisjoint(grid.SETTINGS)
    assert all(set(grid.TRIALS).isdisjoint(preset["settings"]) for preset in grid.GRIDS.values())
    with pytest.raises(ValueError, match=r"'trial-stop-untold' is one of issue 32's settled design trials .* 9ec2d75"):
        run.make_model("trial-stop-untold", ENV, seed=0)
    with pytest.raises(ValueError, match=r"'trial-stop-late' is one of issue 32's settled design trials .* 295c1bd"):
        run.make_model("trial-stop-late", ENV, seed=0)
    with pytest.raises(ValueError, match=r"'trial-stop-top' is one of issue 32's settled design trials .* e562871"):
        run.make_model("trial-stop-top", ENV, seed=0)
    assert not grid.setting("kl-adaptive-0.01+stop").trial


@pytest.mark.parametrize("setting", ["kl-adaptive-0.01", "clip-0.2"])
def test_update_measures_d_is_ppokl_train_kl(setting):
    """The callback's d, taken the same way for every algorithm, is PPOKL's own train/kl (the true KL)."""
    model = run.make_model(setting, ENV, seed=0)
    model.n_epochs = 2
    logged = []

    class Logged(run.UpdateMeasures):
        def _on_rollout_start(self) -> None:
            logged.append(self.logger.name_to_value.get("train/kl"))
            super()._on_rollout_start()

    measures = Logged()
    model.learn(3 * 2048, callback=measures)
    measures.finish()
    assert [row["timesteps"] for row in measures.rows] == [2048, 4096, 6144]
    d = [row["kl"] for row in measures.rows]
    assert all(value > 0 for value in d)
    assert all(0 < row["std"] < 2 for row in measures.rows)
    if setting.startswith("kl"):
        assert d[:2] == pytest.approx(logged[1:3], rel=1e-5)  # train/kl of update k is in the logger at rollout k + 1
        assert d[2] == pytest.approx(model.logger.name_to_value["train/kl"], rel=1e-5)
        assert [row["kl_coef"] for row in measures.rows][-1] == model.kl_coef


def test_old_csv_gains_new_columns(tmp_path):
    path = tmp_path / "old.csv"
    append_row(path, ["a", "b"], dict(a=1, b=2))
    append_row(path, ["a", "b", "c"], dict(a=3, b=4, c=5))
    assert read_rows(path) == [dict(a="1", b="2", c=""), dict(a="3", b="4", c="5")]
    with pytest.raises(ValueError, match=r"has columns \['b'\]"):
        append_row(path, ["a", "c"], dict(a=6, c=7))


def test_a_run_is_recorded_once(tmp_path):
    path = tmp_path / "rows.csv"
    assert append_new_row(path, ["a", "b", "c"], ["a", "b"], dict(a=1, b=2, c=3))
    assert not append_new_row(path, ["a", "b", "c"], ["a", "b"], dict(a=1, b=2, c=4))  # the same run again
    assert append_new_row(path, ["a", "b", "c"], ["a", "b"], dict(a=1, b=3, c=4))
    assert read_rows(path) == [dict(a="1", b="2", c="3"), dict(a="1", b="3", c="4")]


@pytest.mark.parametrize("workers", [1, 2])
def test_local_pool_reports_a_failing_run_after_the_others(workers):
    """run_jobs yields every run that finishes; one that raises is listed at the end (RunsFailed), with its error."""
    finished = []
    with pytest.raises(RunsFailed) as failed:
        for job, result in run_jobs(int, ["1", "x", "3"], workers=workers, describe=repr):
            finished.append((job, result))
    assert sorted(finished) == [("1", 1), ("3", 3)]
    [(run, error)] = failed.value.failures
    assert run == "'x'" and "ValueError: invalid literal for int() with base 10: 'x'" in error
    assert "1 run(s) failed" in str(failed.value)


def test_grid_resumes_and_report_renders(tmp_path):
    results = ResultsDir(tmp_path)
    settings = ["clip-0.2", "kl-adaptive-0.01"]
    run.run_grid(results, settings, [ENV], seeds=[0], timesteps=4096, workers=2)
    rows = read_rows(tmp_path / "table1.csv")
    assert sorted(r["setting"] for r in rows) == settings
    for row in rows:
        assert int(row["episodes"]) > 0 and float(row["fps"]) > 0
        assert int(row["eval_episodes"]) == grid.EVAL_EPISODES and float(row["eval_score"]) > 0
        assert float(row["final_kl"]) > 0 and float(row["final_std"]) > 0
    curves = {r.setting: r.curve for r in load(results).runs}
    assert list(curves["kl-adaptive-0.01"]["timesteps"]) == [2048, 4096]
    assert (curves["kl-adaptive-0.01"]["kl"] > 0).all() and (curves["kl-adaptive-0.01"]["kl_coef"] > 0).all()  # d, beta
    assert (curves["clip-0.2"]["kl"] > 0).all()  # d for clipping too

    run.run_grid(results, settings, [ENV], seeds=[0], timesteps=4096, workers=2)  # finished rows are skipped
    assert len(read_rows(tmp_path / "table1.csv")) == 2

    # --remeasure: a row from before the evaluation column is rerun and replaced; the seeded run reproduces it
    before = read_rows(tmp_path / "table1.csv")
    old = [
        {**r, "eval_score": "", "eval_episodes": "", "final_kl": "", "final_std": ""} if r["setting"] == "clip-0.2" else r
        for r in before
    ]
    with (tmp_path / "table1.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, grid.FIELDS)
        writer.writeheader()
        writer.writerows(old)
    run.run_grid(results, settings, [ENV], seeds=[0], timesteps=4096, workers=1, remeasure=True)
    after = read_rows(tmp_path / "table1.csv")
    assert [r["setting"] for r in after] == [r["setting"] for r in before]  # replaced in place, nothing appended
    for old_row, new_row in zip(before, after):
        assert (old_row["score"], old_row["eval_score"]) == (new_row["score"], new_row["eval_score"])

    run.measure_random(results, [ENV], episodes=3)
    report = tmp_path / "report" / "RESULTS.md"  # anywhere: the figures stay in the results folder, linked from it
    write_report(results, report)
    text = report.read_text()
    assert "| clip-0.2 |" in text and "| kl-adaptive-0.01 |" in text and "0.82" in text  # ours beside the paper's
    assert f"| {ENV} | clip-0.2 | 1 |" in text  # the measurements table, with the deterministic evaluation
    for name in ("curves", "kl", "profile"):  # rliable's performance profile too
        assert (tmp_path / f"table1_4096_{name}.png").stat().st_size > 0
        assert f"](../table1_4096_{name}.png)" in text
    assert "P(> clip-0.2)" in text and f"| kl-adaptive-0.01 | {ENV} |" in text  # rliable; beta's band


def test_zoo_check_entries_and_summary(tmp_path):
    from benchmarks import zoo_check

    config, entry = zoo_check.zoo_entry("ppo", "Ant-v5")  # RL Zoo 2.9 has no Ant-v5 entry: its Ant-v4 one is used
    assert config.endswith("rl_zoo3/hyperparams/ppo.yml") and entry["n_timesteps"] == 1e6 and "kl_target" not in entry
    config, entry = zoo_check.zoo_entry("ppo_kl", "Ant-v5")
    assert config.endswith("sb3_ppo_kl/zoo/hyperparams/ppo_kl.yml") and entry["kl_target"] == 0.01

    results = ResultsDir(tmp_path)
    path = results / zoo_check.RESULTS_CSV
    row = dict(
        algo="ppo_kl",
        env="Pendulum-v1",
        seed=0,
        n_timesteps=100_000,
        mean_reward=-170.0,
        std_reward=1.0,
        episodes=50,
        train_seconds=1,
        params="",
    )
    append_row(path, zoo_check.FIELDS, row)
    append_row(path, zoo_check.FIELDS, {**row, "mean_reward": -900.0, "params": "kl_target:0.03"})  # a variant
    append_row(path, zoo_check.FIELDS, {**row, "algo": "ppo", "mean_reward": -180.0})
    text = zoo_check.summary(results, "ppo_kl")
    line = next(x for x in text.splitlines() if x.startswith("| Pendulum-v1 |"))
    # the variant is not part of the shipped entry's score; SB3 PPO on the same seeds sits beside it
    assert line == "| Pendulum-v1 | 100,000 | -170.0 ± 0.0 (-170.0) | 1 | -180.0 ± 0.0 (1 seed) | -172.225 |"
    assert "| Pendulum-v1 | `kl_target:0.03` | 0 | 100,000 | -900.0 |" in text  # listed apart, below the table

    # Rows that record their entry: once one does, only those with the entry as it is now count
    current = zoo_check.entry_id(zoo_check.zoo_entry("ppo_kl", "Pendulum-v1")[1])
    append_row(path, zoo_check.FIELDS, {**row, "seed": 1, "mean_reward": -150.0, "entry": current})
    append_row(path, zoo_check.FIELDS, {**row, "seed": 2, "mean_reward": -999.0, "entry": "0123456789"})
    line = next(x for x in zoo_check.summary(results, "ppo_kl").splitlines() if x.startswith("| Pendulum-v1 |"))
    assert line == "| Pendulum-v1 | 100,000 | -150.0 ± 0.0 (-150.0) | 1 | -180.0 ± 0.0 (1 seed) | -172.225 |"


def test_finetune_pipeline_resumes_and_summary_renders(tmp_path, capsys):
    """Expert, behaviour clone and every fine-tuning method on a tiny CartPole budget; rerun skips; summary."""
    import dataclasses

    from benchmarks.finetune import protocol
    from benchmarks.finetune.report import report
    from benchmarks.finetune.run import run as finetune

    results = ResultsDir(tmp_path)
    task = dataclasses.replace(
        protocol.TASKS["CartPole-v1"],
        expert_timesteps=4096,
        timesteps=2048,
        eval_every=512,
        eval_episodes=2,
        bc_transitions=200,
        bc_epochs=2,
    )
    tasks = {"CartPole-v1": task}
    methods = list(protocol.METHODS)
    options = protocol.MethodOptions(ref_kl_coef=0.5)
    finetune(results, tasks, {"CartPole-v1": methods}, seeds=[0], options=options, workers=1)

    models = {r["kind"]: r for r in read_rows(tmp_path / "finetune_models.csv")}
    assert set(models) == {"expert", "clone", "random"}
    assert (tmp_path / "finetune_experts" / f"{models['expert']['name']}.zip").exists()
    assert (tmp_path / "finetune_experts" / f"{models['clone']['name']}.zip").exists()
    assert float(models["clone"]["bc_loss"]) >= 0 and models["clone"]["bc_transitions"] == "200"
    rows = read_rows(tmp_path / "finetune.csv")
    assert sorted(r["method"] for r in rows) == sorted(methods)
    for row in rows:
        spec = protocol.METHODS[row["method"]]
        step0, dip, final = float(row["step0_return"]), float(row["dip"]), float(row["final_return"])
        # step 0 is the clone itself, evaluated on the same episodes as in the models file
        assert step0 == float(row["clone_return"]) == float(models["clone"]["eval_return"])
        assert float(row["expert_return"]) == float(models["expert"]["eval_return"])
        assert float(row["lowest"]) <= dip <= step0 and int(row["dip_step"]) <= 0.1 * 2048 and final > 0
        curve = read_rows(tmp_path / "finetune_curves" / f"CartPole-v1__{row['method']}__0.csv")
        steps = [int(r["timesteps"]) for r in curve]
        assert steps[0] == 0 and steps[-1] == int(row["timesteps"]) >= 2048 and steps == sorted(steps)
        assert float(curve[-1]["return"]) == final
        reached = [int(r["timesteps"]) for r in curve if float(r["return"]) >= float(row["expert_return"])]
        assert row["steps_to_expert"] == (str(reached[0]) if reached else "")
        assert float(row["final_kl_to_clone"]) >= 0 and curve[0]["kl_to_clone"] == ""
        if row["method"] == "ppokl-ref":  # fixed coefficient, frozen reference (ref_tau=0 given explicitly)
            assert row["final_ref_kl_coef"] == "0.5" and row["params"] == "ref_kl_coef=0.5 ref_kl_target=None"
        elif spec.ref_tau > 0:  # fixed coefficient, a moving reference
            assert row["final_ref_kl_coef"] == "0.5"
            assert row["params"].endswith(f"ref_tau={spec.ref_tau} ref_update_interval=1")
        else:
            assert not spec.reference and row["final_ref_kl_coef"] == "" and row["params"] == ""

    finetune(results, tasks, {"CartPole-v1": methods}, seeds=[0], options=options, workers=1)  # finished rows are skipped
    assert len(read_rows(tmp_path / "finetune.csv")) == len(methods)
    assert len(read_rows(tmp_path / "finetune_models.csv")) == 3
    with pytest.raises(ValueError, match="other settings"):
        finetune(
            results,
            tasks,
            {"CartPole-v1": ["ppokl-ref"]},
            seeds=[1],
            options=protocol.MethodOptions(ref_kl_coef=2.0),
            workers=1,
        )

    capsys.readouterr()
    text = report(results)
    assert "### CartPole-v1" in text
    for method in methods:
        assert f"| {method} | 0 |" in text and f"| **{method}** | **mean** |" in text
    assert (tmp_path / "finetune_CartPole-v1.png").stat().st_size > 0


def test_speed_baseline_as_ppokl_makes_ppokl_s_two_torch_settings():
    """`ppo_as_ppokl` is SB3 PPO with the multi-tensor Adam and torch's distribution checks skipped during learn()."""
    from stable_baselines3.common.callbacks import BaseCallback
    from torch.distributions import Distribution

    from benchmarks.speed import PAIRS

    seen = set()

    class Record(BaseCallback):
        def _on_step(self) -> bool:
            seen.add(Distribution._validate_args)
            return True

    model = PAIRS["Pendulum-v1"][1]["ppo_as_ppokl"]("CartPole-v1", 0)
    assert type(model) is PPO and model.policy.optimizer.param_groups[0]["foreach"] is True
    model.learn(16, callback=Record())
    assert seen == {False} and Distribution._validate_args
