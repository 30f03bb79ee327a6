"""
The command lines as a user runs them: the installed console scripts and ``python -m``, as subprocesses. A bad
argument ends in one line on stderr and exit status 2, never a traceback; RL Zoo's value syntax is accepted; the
optional dependencies' absence (the progress bar's tqdm and rich, the zoo's rl_zoo3 and optuna) is one line.
"""

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch as th
from stable_baselines3.common.utils import LinearSchedule

from sb3_ppo_kl import PPOKL

BIN = Path(sys.executable).parent
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}
SHORT = ["--timesteps", "64", "--param", "n_steps=64", "--param", "batch_size=32", "--eval-episodes", "1"]


def _run(command: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout, check=False)


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return _run([sys.executable, "-c", code], cwd)


def test_console_scripts_are_installed_with_the_package():
    scripts = {
        e.name: e.value for e in importlib.metadata.entry_points(group="console_scripts") if e.dist.name == "sb3-ppo-kl"
    }
    assert scripts == {"sb3-ppo-kl": "sb3_ppo_kl.__main__:cli", "sb3-ppo-kl-zoo": "sb3_ppo_kl.zoo.__main__:main"}
    for name in scripts:
        assert (BIN / name).exists(), name


def test_the_distribution_declares_its_licence_and_authors():
    metadata = importlib.metadata.metadata("sb3-ppo-kl")
    assert metadata["License-Expression"] == "MIT"
    assert "LICENSE" in metadata.get_all("License-File")
    assert metadata["Author"] == "The sb3_ppo_kl developers"
    assert "Topic :: Scientific/Engineering :: Artificial Intelligence" in metadata.get_all("Classifier")
    licence = (Path(__file__).resolve().parents[1] / "LICENSE").read_text(encoding="utf-8")
    assert licence.startswith("MIT License") and "The sb3_ppo_kl developers" in licence


# Each bad argument once in a subprocess through the console script (True), or in-process through main() (False):
# the same parser and checks; the subprocesses show that nothing escapes as a traceback from the installed command.
BAD_ARGUMENTS = [
    (["--timesteps", "-5"], "argument --timesteps: must be an integer > 0, got -5", True),
    (["--timesteps", "0"], "argument --timesteps: must be an integer > 0, got 0", False),
    (["--n-envs", "0"], "argument --n-envs: must be an integer > 0, got 0", True),
    (["--eval-episodes", "0"], "argument --eval-episodes: must be an integer > 0, got 0", True),
    (["--param", "kl_target=-1"], "--param: `kl_target` must be a finite number > 0", False),
    (["--param", "nonsense=1"], "got an unexpected keyword argument 'nonsense'", True),
    (["--param", "n_steps=lin_5"], "n_steps=lin_5: a lin_<x> schedule is for learning_rate, clip_range", False),
    (["--param", "learning_rate=lin_fast"], "learning_rate=lin_fast: lin_<x> needs a finite number x", False),
    (["--param", "policy_kwargs=dict(net_arch=[64)"], "policy_kwargs=dict(net_arch=[64): not valid Python syntax", True),
    (["--param", "policy_kwargs=dict(f=open('x'))"], "open('x') is not a literal, dict(...), nn.<name> or lin_<x>", False),
    (["--param", "policy_kwargs=dict(activation_fn=nn.Relu)"], "nn.Relu is not a torch.nn module class", False),
    (["--param", "policy_kwargs=dict(net_arch=[64], nonsense=1)"], "unexpected keyword argument 'nonsense'", False),
    (["--param", "batch_size=1"], "--param: `batch_size` must be an integer >= 2", False),
    (["--param", "n_steps=1"], "--param: `n_steps * n_envs` must be > 1", False),
    (["--env", "NotAnEnv-v0"], "--env NotAnEnv-v0: Environment `NotAnEnv` doesn't exist.", False),
]


@pytest.mark.parametrize("argv, message, subprocess_", BAD_ARGUMENTS, ids=[" ".join(case[0]) for case in BAD_ARGUMENTS])
def test_a_bad_argument_is_one_line_and_exit_status_2(argv, message, subprocess_, tmp_path, monkeypatch, capsys):
    if subprocess_:
        result = _run([str(BIN / "sb3-ppo-kl"), *argv, "--no-progress-bar"], tmp_path)
        status, out, err = result.returncode, result.stdout, result.stderr
    else:
        from sb3_ppo_kl.__main__ import main

        monkeypatch.chdir(tmp_path)
        with pytest.raises(SystemExit) as exit_:
            main([*argv, "--no-progress-bar"], prog="sb3-ppo-kl")
        status, (out, err) = exit_.value.code, capsys.readouterr()
    assert status == 2, err[-3000:]
    assert "Traceback" not in err and out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("sb3-ppo-kl: error: "), err
    assert message in lines[0]
    assert not list(tmp_path.iterdir())  # nothing trained, nothing saved


def test_rl_zoo_values_are_accepted(tmp_path):
    """``lin_<x>`` schedules and ``dict(...)`` with ``nn.<name>``, as RL Zoo's -params are written, reach the model."""
    result = _run(
        [
            *(sys.executable, "-m", "sb3_ppo_kl", *SHORT, "--no-progress-bar", "--save", "model"),
            *("--param", "learning_rate=lin_1e-3", "--param", "clip_range=lin_0.2"),
            *("--param", "policy_kwargs=dict(net_arch=dict(pi=[32], vf=[16]), activation_fn=nn.ReLU)"),
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "CartPole-v1: mean reward" in result.stdout and "Traceback" not in result.stderr
    model = PPOKL.load(tmp_path / "model.zip")
    assert isinstance(model.learning_rate, LinearSchedule) and model.learning_rate(0.5) == pytest.approx(5e-4)
    assert model.clip_range(0.25) == pytest.approx(0.05)
    assert model.policy.activation_fn is th.nn.ReLU
    assert [layer.out_features for layer in model.policy.mlp_extractor.policy_net if hasattr(layer, "out_features")] == [32]
    assert [layer.out_features for layer in model.policy.mlp_extractor.value_net if hasattr(layer, "out_features")] == [16]


def test_without_tqdm_and_rich_the_progress_bar_is_skipped_in_one_line(tmp_path):
    """As on an install without the [extra] extra: the two packages cannot be imported, training goes on."""
    code = (
        "import sys; sys.modules['tqdm'] = sys.modules['rich'] = None\n"  # `import tqdm` now fails, as if not installed
        "from sb3_ppo_kl.__main__ import cli\n"
        f"sys.argv = ['sb3-ppo-kl', {', '.join(repr(arg) for arg in SHORT)}]\n"
        "cli()\n"
    )
    result = _python(code, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    message = 'sb3-ppo-kl: no progress bar (tqdm is not installed): pip install "sb3-ppo-kl[extra]" for one, or pass'
    assert result.stderr.splitlines() == [f"{message} --no-progress-bar"]
    assert "CartPole-v1: mean reward" in result.stdout and (tmp_path / "ppokl_CartPole-v1.zip").exists()


def test_the_zoo_command_without_the_zoo_extra_says_how_to_install_it(tmp_path):
    code = (
        "import sys; sys.modules['rl_zoo3'] = sys.modules['optuna'] = None\n"  # as if the [zoo] extra were missing
        "sys.argv = ['sb3-ppo-kl-zoo', 'train', '--algo', 'ppo_kl', '--env', 'CartPole-v1']\n"
        "from sb3_ppo_kl.zoo.__main__ import main\n"
        "main()\n"
    )
    result = _python(code, tmp_path)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.splitlines() == [
        'sb3-ppo-kl-zoo: RL Zoo is not installed (rl_zoo3, optuna missing): pip install "sb3-ppo-kl[zoo]"'
    ]


def test_help_describes_the_value_syntax(tmp_path):
    result = _run([str(BIN / "sb3-ppo-kl"), "--help"], tmp_path)
    assert result.returncode == 0 and result.stdout.startswith("usage: sb3-ppo-kl ")
    for text in ("Python literal", "dict(key=value, ...)", "nn.<name>", "lin_<x>", "a string"):
        assert text in result.stdout, text
