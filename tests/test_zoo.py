"""RL Zoo integration: train, enjoy, shipped hyperparameters and (distributed) tuning through rl_zoo3 itself."""

import argparse
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

pytest.importorskip("rl_zoo3")
import optuna
from rl_zoo3.exp_manager import ExperimentManager

from sb3_ppo_kl import PPOKL, KLCoefController, MaskablePPOKL, RecurrentPPOKL
from sb3_ppo_kl.zoo import ALGOS, default_config, register

ZOO = [sys.executable, "-m", "sb3_ppo_kl.zoo"]
# subprocesses find tests/zoo_envs (the maskable env package) on their path
ENV = {
    **os.environ,
    "PYTHONUNBUFFERED": "1",
    "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]),
}


def _zoo(*args: str, cwd: Path, timeout: int = 300) -> str:
    result = subprocess.run([*ZOO, *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@pytest.mark.parametrize("env_id, steps", [("CartPole-v1", "2000"), ("Pendulum-v1", "4096")])
def test_train_then_enjoy_round_trip(tmp_path, env_id, steps):
    out = _zoo(
        "train",
        "--algo",
        "ppo_kl",
        "--env",
        env_id,
        "-f",
        "logs/",
        "-n",
        steps,
        "--num-threads",
        "1",
        "--seed",
        "0",
        cwd=tmp_path,
    )
    assert "ppo_kl.yml" in out  # our shipped hyperparameters, not RL Zoo's
    run = tmp_path / "logs" / "ppo_kl" / f"{env_id}_1"
    assert (run / f"{env_id}.zip").exists()
    config = yaml.unsafe_load((run / env_id / "config.yml").read_text())
    assert dict(config)["kl_target"] == 0.01
    out = _zoo("enjoy", "--algo", "ppo_kl", "--env", env_id, "-f", "logs/", "--no-render", "-n", "300", cwd=tmp_path)
    assert "Mean reward" in out or "Atari Episode" in out or "Episode Reward" in out


def test_params_reach_the_model_and_console_script(tmp_path):
    """-params reach the model through the console script, which sets one torch thread unless told otherwise."""
    script = Path(sys.executable).parent / "sb3-ppo-kl-zoo"
    assert script.exists(), "the console script is installed with the package"
    result = subprocess.run(
        [
            str(script),
            "train",
            "--algo",
            "ppo_kl",
            "--env",
            "CartPole-v1",
            "-f",
            "logs/",
            "-n",
            "256",
            "-params",
            "kl_target:0.02",
            "kl_coef:0.5",
            "--verbose",
            "2",  # rl_zoo3 then says how many torch threads it sets
        ],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,  # checked below, with the output in the message
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Setting torch.num_threads to 1" in result.stdout  # one thread, without --num-threads
    model = PPOKL.load(tmp_path / "logs" / "ppo_kl" / "CartPole-v1_1" / "CartPole-v1.zip")
    assert model.kl_controller.kl_target == 0.02
    assert model.kl_coef in (0.25, 0.5, 1.0)  # started at 0.5, adapted at most once (one update)


def test_explicit_conf_file_is_respected(tmp_path):
    conf = tmp_path / "mine.yml"
    conf.write_text(
        yaml.safe_dump(
            {"CartPole-v1": {"policy": "MlpPolicy", "n_timesteps": 1000, "n_steps": 64, "batch_size": 32, "kl_target": 0.05}}
        )
    )
    out = _zoo(
        "train", "--algo", "ppo_kl", "--env", "CartPole-v1", "-f", "logs/", "-n", "128", "-conf", str(conf), cwd=tmp_path
    )
    assert "mine.yml" in out
    model = PPOKL.load(tmp_path / "logs" / "ppo_kl" / "CartPole-v1_1" / "CartPole-v1.zip")
    assert model.kl_controller.kl_target == 0.05 and model.n_steps == 64


def test_kl_target_schedule_from_a_yml_file(tmp_path):
    """``kl_target: lin_0.02`` anneals as RL Zoo's ``clip_range: lin_0.2`` does."""
    conf = tmp_path / "mine.yml"
    entry = dict(policy="MlpPolicy", n_timesteps=1000, n_steps=64, batch_size=32, kl_target="lin_0.02")
    conf.write_text(yaml.safe_dump({"Pendulum-v1": entry}))
    register()
    manager = ExperimentManager(argparse.Namespace(), "ppo_kl", "Pendulum-v1", str(tmp_path), n_timesteps=1, config=str(conf))
    model, _ = manager.setup_experiment()
    assert model.kl_controller.target(1.0) == pytest.approx(0.02) and model.kl_controller.target(0.25) == pytest.approx(0.005)
    conf.write_text(yaml.safe_dump({"Pendulum-v1": {**entry, "kl_target": "exp_0.02"}}))
    with pytest.raises(ValueError, match="`kl_target` in a hyperparameter file must be a number or 'lin_<start>'"):
        ExperimentManager(
            argparse.Namespace(), "ppo_kl", "Pendulum-v1", str(tmp_path), n_timesteps=1, config=str(conf)
        ).setup_experiment()


def _model_from_yml(tmp_path: Path, env_id: str, **params: object) -> object:
    """The model RL Zoo builds from a hyperparameter file of one entry: ``params`` on top of a short run's settings."""
    conf = tmp_path / "mine.yml"
    entry = dict(policy="MlpPolicy", n_timesteps=1000, n_steps=64, batch_size=32, **params)
    conf.write_text(yaml.safe_dump({env_id: entry}))
    register()
    manager = ExperimentManager(argparse.Namespace(), "ppo_kl", env_id, str(tmp_path), n_timesteps=1, config=str(conf))
    model, _ = manager.setup_experiment()
    return model


def test_kl_controller_class_from_a_yml_file(tmp_path):
    """A yml file names the controller (a class cannot be written there)."""
    model = _model_from_yml(tmp_path, "Pendulum-v1", kl_controller_class="KLCoefController", kl_target=0.02)
    assert isinstance(model, PPOKL)
    assert type(model.kl_controller) is KLCoefController and model.kl_controller.kl_target == 0.02


def test_ref_kl_coef_schedule_from_a_yml_file(tmp_path):
    """``ref_kl_coef: lin_1.0`` with a reference zip: the coefficient falls linearly from 1.0 to 0 over training."""
    PPOKL("MlpPolicy", "CartPole-v1", n_steps=32, batch_size=32, seed=0).save(tmp_path / "expert")
    conf = tmp_path / "mine.yml"
    entry = dict(
        policy="MlpPolicy",
        n_timesteps=1000,
        n_steps=64,
        batch_size=32,
        ref_policy=str(tmp_path / "expert.zip"),
        ref_kl_coef="lin_1.0",
    )
    conf.write_text(yaml.safe_dump({"CartPole-v1": entry}))
    register()
    manager = ExperimentManager(argparse.Namespace(), "ppo_kl", "CartPole-v1", str(tmp_path), n_timesteps=1, config=str(conf))
    model, _ = manager.setup_experiment()
    assert model.ref_policy is not None and model.ref_kl_coef == pytest.approx(1.0)
    model._current_progress_remaining = 0.25
    assert model.ref_kl_coef == pytest.approx(0.25)
    for bad in ("exp_1.0", "lin_x"):
        conf.write_text(yaml.safe_dump({"CartPole-v1": {**entry, "ref_kl_coef": bad}}))
        with pytest.raises(ValueError, match="`ref_kl_coef` in a hyperparameter file must be a number or 'lin_<start>'"):
            ExperimentManager(
                argparse.Namespace(), "ppo_kl", "CartPole-v1", str(tmp_path), n_timesteps=1, config=str(conf)
            ).setup_experiment()


# (algo, env) for every entry of every shipped file; the maskable file's `default` entry is tried on a maskable env
ENTRIES = [
    (algo, "InvalidActionEnvDiscrete-v0" if env == "default" else env)
    for algo in ALGOS
    for env in yaml.safe_load(Path(default_config(algo)).read_text())
]


@pytest.mark.parametrize("algo, env_id", ENTRIES)
def test_every_shipped_entry_constructs_a_model(tmp_path, algo, env_id):
    import zoo_envs  # noqa: F401  (registers InvalidActionEnvDiscrete-v0)

    register()
    manager = ExperimentManager(
        argparse.Namespace(), algo, env_id, str(tmp_path), n_timesteps=1, config=default_config(algo), verbose=0
    )
    model, saved = manager.setup_experiment()
    assert isinstance(model, ALGOS[algo])
    # pure PPO1 unless the entry asks for clipping on top of the penalty
    assert (model.clip_range is None) == ("clip_range" not in saved)
    model.env.close()


def test_recurrent_and_maskable_variants_in_the_zoo(tmp_path):
    _zoo(
        "train",
        "--algo",
        "ppo_kl_lstm",
        "--env",
        "CartPoleNoVel-v1",
        "-f",
        "logs/",
        "-n",
        "512",
        "--num-threads",
        "1",
        cwd=tmp_path,
    )
    assert isinstance(
        RecurrentPPOKL.load(tmp_path / "logs" / "ppo_kl_lstm" / "CartPoleNoVel-v1_1" / "CartPoleNoVel-v1.zip"), RecurrentPPOKL
    )
    out = _zoo(
        "enjoy", "--algo", "ppo_kl_lstm", "--env", "CartPoleNoVel-v1", "-f", "logs/", "--no-render", "-n", "200", cwd=tmp_path
    )
    assert "Episode" in out
    # a maskable environment comes from the user's package, as RL Zoo's --gym-packages allows
    _zoo(
        "train", "--algo", "ppo_kl_mask", "--env", "InvalidActionEnvDiscrete-v0", "--gym-packages", "zoo_envs",
        "-f", "logs/", "-n", "256", "-params", "n_steps:128", "--num-threads", "1", cwd=tmp_path,
    )  # fmt: skip
    model = MaskablePPOKL.load(
        tmp_path / "logs" / "ppo_kl_mask" / "InvalidActionEnvDiscrete-v0_1" / "InvalidActionEnvDiscrete-v0.zip"
    )
    assert model.num_timesteps == 256


def _optimize_workers(storage: str, study: str, tmp_path: Path, n_workers: int = 2, trials_per_worker: int = 2) -> None:
    # As in the README's recipe: create the study (and the storage's tables) once, then start the workers;
    # workers that all create a fresh storage at the same moment race on its schema.
    optuna.create_study(study_name=study, storage=storage, direction="maximize")
    args = [
        "train", "--algo", "ppo_kl", "--env", "CartPole-v1", "-optimize", "--storage", storage, "--study-name", study,
        "--n-trials", str(trials_per_worker), "-n", "512", "--n-evaluations", "1", "--eval-episodes", "2",
        "--sampler", "random", "--pruner", "none", "--num-threads", "1", "-params", "n_envs:1", "-f", "logs/",
    ]  # fmt: skip
    workers = [
        subprocess.Popen(
            [*ZOO, *args, "--seed", str(seed)],
            cwd=tmp_path,
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for seed in range(n_workers)
    ]
    for worker in workers:
        output, _ = worker.communicate(timeout=600)
        assert worker.returncode == 0, output[-3000:]


def _check_study(storage: str, study_name: str, expected_trials: int) -> None:
    trials = optuna.load_study(study_name=study_name, storage=storage).trials
    assert len(trials) == expected_trials
    for trial in trials:
        assert trial.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        # PPOKL's own parameters are sampled and recorded with the usual PPO ones
        assert {"kl_target", "kl_coef", "adaptive_kl", "clip_range", "learning_rate", "n_steps_pow"} <= set(trial.params)


def test_distributed_tuning_sqlite(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    _optimize_workers(storage, "ppokl-sqlite", tmp_path)
    _check_study(storage, "ppokl-sqlite", 4)


@pytest.mark.skipif(
    not os.environ.get("SB3_PPO_KL_POSTGRES_URL"), reason="set SB3_PPO_KL_POSTGRES_URL (.ci/run starts a server)"
)
def test_distributed_tuning_postgresql(tmp_path):
    storage = os.environ["SB3_PPO_KL_POSTGRES_URL"]
    study = f"ppokl-{uuid.uuid4().hex[:8]}"
    _optimize_workers(storage, study, tmp_path)
    _check_study(storage, study, 4)
    optuna.delete_study(study_name=study, storage=storage)
