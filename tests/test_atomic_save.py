"""
save() is atomic: whenever the process dies and whatever fails, the path holds the old model or the new one, whole.

Real processes, real files and real failures: a child process killed with SIGKILL while it saves, a file-size limit
(RLIMIT_FSIZE, which binds root too) that makes a write fail as a full disk does, a parent path that is a file.
"""

import io
import os
import pathlib
import queue
import random
import signal
import subprocess
import sys
import threading
import zipfile

import numpy as np
import pytest
import torch as th
from sb3_contrib.common.envs import InvalidActionEnvDiscrete
from stable_baselines3.common.callbacks import CheckpointCallback, EvalCallback
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm

from sb3_ppo_kl import PPOKL, MaskablePPOKL, RecurrentPPOKL

ROOT = pathlib.Path(__file__).resolve().parents[1]

posix_only = pytest.mark.skipif(os.name != "posix", reason="fork, SIGKILL and RLIMIT_FSIZE are POSIX")


def _models():
    """One small model of every algorithm of the package."""
    return {
        "PPOKL": PPOKL("MlpPolicy", "Pendulum-v1", n_steps=32, batch_size=32, device="cpu", seed=0),
        "MaskablePPOKL": MaskablePPOKL(
            "MlpPolicy", InvalidActionEnvDiscrete(dim=10, n_invalid_actions=4), n_steps=32, batch_size=32, device="cpu"
        ),
        "RecurrentPPOKL": RecurrentPPOKL("MlpLstmPolicy", "CartPole-v1", n_steps=32, batch_size=32, device="cpu", seed=0),
    }


def _files(directory: pathlib.Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


def _same_parameters(a, b) -> bool:
    return all(th.equal(x, y) for x, y in zip(a.policy.state_dict().values(), b.policy.state_dict().values()))


@pytest.mark.parametrize("name", ["PPOKL", "MaskablePPOKL", "RecurrentPPOKL"])
def test_save_writes_what_sb3_writes_and_leaves_no_temporary_file(tmp_path, name):
    model = _models()[name]
    for _ in range(3):  # over an existing file too
        model.save(tmp_path / "model")  # no suffix: ".zip" is appended, as SB3 does
    model.save(str(tmp_path / "other.pkl"))  # a str, and a suffix of its own
    OnPolicyAlgorithm.save(model, tmp_path / "sb3")  # SB3's own, in-place save, to compare
    assert _files(tmp_path) == ["model.zip", "other.pkl", "sb3.zip"]
    assert _same_parameters(type(model).load(tmp_path / "model.zip"), model)
    with zipfile.ZipFile(tmp_path / "model.zip") as ours, zipfile.ZipFile(tmp_path / "sb3.zip") as sb3:
        assert ours.namelist() == sb3.namelist()
    # the file is created as open(path, "wb") creates it: the same permission bits as SB3's
    assert (tmp_path / "model.zip").stat().st_mode == (tmp_path / "sb3.zip").stat().st_mode


def test_save_keeps_the_permission_bits_of_the_file_it_replaces(tmp_path):
    model = _models()["PPOKL"]
    model.save(tmp_path / "model.zip")
    os.chmod(tmp_path / "model.zip", 0o640)
    model.save(tmp_path / "model.zip")
    assert (tmp_path / "model.zip").stat().st_mode & 0o777 == 0o640


@posix_only
def test_save_through_a_symbolic_link_replaces_the_file_it_points_to(tmp_path):
    model = _models()["PPOKL"]
    (tmp_path / "runs").mkdir()
    model.save(tmp_path / "runs" / "run_1.zip")
    (tmp_path / "latest.zip").symlink_to(tmp_path / "runs" / "run_1.zip")
    model.kl_coef = 3.0
    model.save(tmp_path / "latest")  # as SB3 writes through the link
    assert (tmp_path / "latest.zip").is_symlink() and _files(tmp_path / "runs") == ["run_1.zip"]
    assert PPOKL.load(tmp_path / "runs" / "run_1.zip").kl_coef == 3.0


def test_save_to_a_file_object_is_sb3s(tmp_path):
    model = _models()["PPOKL"]
    buffer = io.BytesIO()
    model.save(buffer)
    buffer.seek(0)
    assert _same_parameters(PPOKL.load(buffer), model)
    assert _files(tmp_path) == []


def test_save_follows_sb3_for_a_missing_directory_and_a_directory_in_the_way(tmp_path):
    model = _models()["PPOKL"]
    with pytest.warns(UserWarning, match="does not exist. Will create it"):
        model.save(tmp_path / "new" / "dir" / "model")
    assert _files(tmp_path / "new" / "dir") == ["model.zip"]
    (tmp_path / "taken.zip").mkdir()
    with pytest.warns(UserWarning, match="is a folder. Will save instead to .*taken.zip_2"):
        model.save(tmp_path / "taken")
    assert (tmp_path / "taken.zip_2").is_file() and _files(tmp_path / "taken.zip") == []


@posix_only
@pytest.mark.parametrize("name", ["PPOKL", "MaskablePPOKL", "RecurrentPPOKL"])
def test_a_failed_save_leaves_the_old_file_untouched(tmp_path, name):
    """A write that fails halfway (a file-size limit, as a full disk) raises, and the old model is still there."""
    import resource

    model = _models()[name]
    model.save(tmp_path / "model.zip")
    old = (tmp_path / "model.zip").read_bytes()
    if name == "PPOKL":
        (tmp_path / "copy.zip").write_bytes(old)
    with th.no_grad():
        for param in model.policy.parameters():
            param.add_(1.0)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (len(old) // 2, hard))  # Python ignores SIGXFSZ: write() fails
    try:
        with pytest.raises(OSError, match="File too large"):
            model.save(tmp_path / "model.zip")
        if name == "PPOKL":  # SB3's own save, under the same limit, destroys the model it overwrites
            with pytest.raises(OSError, match="File too large"):
                OnPolicyAlgorithm.save(model, tmp_path / "copy.zip")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert (tmp_path / "model.zip").read_bytes() == old
    assert _files(tmp_path) == (["copy.zip", "model.zip"] if name == "PPOKL" else ["model.zip"])
    if name == "PPOKL":
        assert (tmp_path / "copy.zip").stat().st_size < len(old)
        with pytest.raises(AssertionError, match="No data found in the saved file"):  # SB3's words for a broken zip
            PPOKL.load(tmp_path / "copy.zip")
    assert not _same_parameters(type(model).load(tmp_path / "model.zip"), model)


def test_a_save_under_a_file_raises_and_leaves_nothing(tmp_path):
    model = _models()["PPOKL"]
    (tmp_path / "file").write_bytes(b"not a directory")
    with pytest.raises(OSError):
        model.save(tmp_path / "file" / "model.zip")
    assert _files(tmp_path) == ["file"] and (tmp_path / "file").read_bytes() == b"not a directory"


def test_sb3_callbacks_save_loadable_models(tmp_path):
    """CheckpointCallback and EvalCallback's best model go through save(): whole files, no temporary file left."""
    model = PPOKL("MlpPolicy", "CartPole-v1", n_steps=32, batch_size=32, n_epochs=1, device="cpu", seed=0)
    checkpoints = CheckpointCallback(save_freq=32, save_path=str(tmp_path / "checkpoints"), name_prefix="ppokl")
    best = EvalCallback(model.get_env(), eval_freq=32, n_eval_episodes=1, best_model_save_path=str(tmp_path / "best"))
    model.learn(96, callback=[checkpoints, best])
    assert _files(tmp_path / "checkpoints") == [f"ppokl_{steps}_steps.zip" for steps in (32, 64, 96)]
    assert _files(tmp_path / "best") == ["best_model.zip"]
    for path in [*(tmp_path / "checkpoints").iterdir(), tmp_path / "best" / "best_model.zip"]:
        assert all(th.isfinite(param).all() for param in PPOKL.load(path).policy.parameters())


# The child of the fault injection: a server process imports the package once, then forks one saver per kill (a fork
# is cheap; a fresh interpreter would spend seconds importing torch). Each saver loads the model, then saves versions
# A and B of it in turn to the same path until it is killed. Torch runs one thread, so that forking is safe.
_SERVER = r"""
import os, sys, traceback
import torch as th
th.set_num_threads(1)
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from sb3_ppo_kl import PPOKL

path, rounds, in_place = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "in-place"
PPOKL.load(path, device="cpu")  # once here, so that every saver starts with the modules load() imports
for _ in range(rounds):
    if sys.stdin.readline().strip() != "go":
        break
    pid = os.fork()
    if pid == 0:
        try:
            model = PPOKL.load(path, device="cpu")
            a = {key: value.clone() for key, value in model.policy.state_dict().items()}
            b = {key: value + 1 for key, value in a.items()}
            print(f"ready {os.getpid()}", flush=True)
            while True:
                for version, kl_coef in ((b, 2.0), (a, 1.0)):
                    model.policy.load_state_dict(version)
                    model.kl_coef = kl_coef
                    (OnPolicyAlgorithm.save if in_place else PPOKL.save)(model, path)
        except BaseException:
            print("error " + traceback.format_exc().replace("\n", " | "), flush=True)
            os._exit(1)
    os.waitpid(pid, 0)
    print("reaped", flush=True)
"""


def _version_at(path: pathlib.Path, versions: dict[str, tuple[dict[str, th.Tensor], float]]) -> str:
    """Which version ``path`` holds, whole (its policy parameters and its beta): a key of ``versions``, or "broken"."""
    try:
        loaded = PPOKL.load(path, device="cpu")
    except Exception:  # noqa: BLE001 (whatever a truncated zip makes load() raise: it no longer loads)
        return "broken"
    state = loaded.policy.state_dict()
    for version, (params, kl_coef) in versions.items():
        if all(th.equal(state[key], value) for key, value in params.items()) and loaded.kl_coef == kl_coef:
            return version
    return "broken"


def kill_while_saving(path: pathlib.Path, kills: int, in_place: bool = False, seed: int = 0) -> dict[str, int]:
    """
    Kill a process that saves a model to ``path`` in a loop with SIGKILL, ``kills`` times at random moments; after each
    kill check what ``path`` holds.

    ``path`` must hold version A of a PPOKL model with ``kl_coef=1.0``; version B has every policy parameter + 1 and
    ``kl_coef=2.0``. Every saver starts from version A. ``in_place`` saves with SB3's own ``save`` instead of the
    package's (to see the test fail).

    :return: how many kills left version A, version B, a file that does not load or holds neither, and how many
        left a temporary file (a kill in the middle of a save)
    """
    rng = random.Random(seed)
    a = PPOKL.load(path, device="cpu")
    versions = {
        "A": ({key: value.clone() for key, value in a.policy.state_dict().items()}, 1.0),
        "B": ({key: value + 1 for key, value in a.policy.state_dict().items()}, 2.0),
    }
    counts = {"A": 0, "B": 0, "broken": 0, "interrupted saves": 0}
    mode = "in-place" if in_place else "atomic"
    server = subprocess.Popen(
        [sys.executable, "-c", _SERVER, str(path), str(kills), mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line.strip()) for line in server.stdout], daemon=True).start()

    def expect(word: str) -> str:
        line = lines.get(timeout=60)
        assert line.startswith(word), line
        return line

    try:
        for _ in range(kills):
            server.stdin.write("go\n")
            server.stdin.flush()
            saver = int(expect("ready").split()[1])  # loaded, and about to save in a loop
            threading.Event().wait(rng.uniform(0.0, 0.2))
            os.kill(saver, signal.SIGKILL)
            expect("reaped")  # the saver is dead: nothing writes to the directory any more
            leftovers = [name for name in _files(path.parent) if name.endswith(".tmp")]
            counts["interrupted saves"] += bool(leftovers)
            for name in leftovers:
                (path.parent / name).unlink()
            counts[_version_at(path, versions)] += 1
            a.save(path)  # the next saver starts from version A again
    finally:
        server.stdin.close()
        server.wait(timeout=60)
    return counts


@posix_only
def test_a_process_killed_while_saving_never_leaves_a_broken_model(tmp_path):
    path = tmp_path / "model.zip"
    model = PPOKL("MlpPolicy", "Pendulum-v1", policy_kwargs=dict(net_arch=[256, 256]), n_steps=64, batch_size=64, seed=0)
    model.save(path)
    counts = kill_while_saving(path, kills=20)
    assert counts["broken"] == 0, counts
    assert counts["A"] + counts["B"] == 20, counts
    # the kills landed in the middle of saves (each left its temporary file), not between them
    assert counts["interrupted saves"] >= 5, counts
    assert np.isfinite(PPOKL.load(path).kl_coef)
