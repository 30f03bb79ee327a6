"""
The grid runners on a real Ray cluster (``ray start`` subprocesses on this machine): the rows equal the local pool's,
a killed driver resumes without duplicates, a run that raises is reported while the others are written, and a node
that runs other code is refused.
"""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from benchmarks.results import ResultsDir, read_rows
from benchmarks.table1.run import run_grid

pytest.importorskip("ray")

ROOT = Path(__file__).parents[1]
RAY = str(Path(sys.executable).parent / "ray")
KEY = ["setting", "env", "seed", "timesteps"]
# columns that depend on where and how fast a run ran
TIMING = {"wall_seconds", "fps", "machine"}
GRID = ["--settings", "clip-0.2", "kl-adaptive-0.01", "--seeds", "0", "1", "--timesteps", "2048"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def ray_node(log: Path, pythonpath: Path, *args: str) -> Iterator[Callable[[], None]]:
    """
    ``ray start --block`` whose workers import from ``pythonpath``, in its own process group: stopping it stops this
    node's processes and no other Ray on the machine. Yields a function that waits until the node is up.
    """
    ports = ["--dashboard-agent-listen-port", str(free_port()), "--ray-client-server-port", str(free_port())]
    node = subprocess.Popen(
        [RAY, "start", "--block", "--disable-usage-stats", "--object-store-memory", str(100 * 2**20), *ports, *args],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(pythonpath)},
        start_new_session=True,
    )

    def started() -> None:
        deadline = time.monotonic() + 90
        while "Ray runtime started" not in log.read_text():
            if node.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray start failed:\n{log.read_text()}")
            time.sleep(0.1)

    try:
        yield started
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(node.pid, signal.SIGKILL)
        node.wait()


@contextlib.contextmanager
def ray_head(pythonpath: Path, cpus: int) -> Iterator[tuple[str, Path, Callable[[], None]]]:
    """A head node with ``cpus`` CPUs: (its address, its folder, a function that waits until it is up)."""
    folder = Path(tempfile.mkdtemp(prefix="ray-"))  # short: a path in /tmp/pytest-of-*/ is too long for Ray's sockets
    port = free_port()
    head = ["--head", "--port", str(port), "--num-cpus", str(cpus), "--include-dashboard=false"]
    try:
        with ray_node(
            folder / "head.log", pythonpath, *head, "--dashboard-port", str(free_port()), "--temp-dir", str(folder)
        ) as started:
            yield f"127.0.0.1:{port}", folder, started
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def runner(*args: str) -> list[str]:
    return [sys.executable, "-m", "benchmarks.run", *args]


def cli_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def by_key(rows: list[dict[str, str]]) -> dict[tuple[str, ...], dict[str, str]]:
    keys = [tuple(row[k] for k in KEY) for row in rows]
    assert len(keys) == len(set(keys)), f"a run is recorded twice: {keys}"
    return dict(zip(keys, rows, strict=True))


@pytest.fixture(scope="module")
def ray_cluster():
    """A one-node Ray cluster of 2 CPUs, its workers importing this checkout: (its address, wait until it is up)."""
    with ray_head(ROOT, cpus=2) as (address, _, started):
        yield address, started


def test_ray_grid_equals_local_pool_resumes_and_reports_failures(ray_cluster, tmp_path):
    local = tmp_path / "local"
    run_grid(ResultsDir(local), ["clip-0.2", "kl-adaptive-0.01"], ["CartPole-v1"], [0, 1], 2048, workers=2)  # while Ray starts
    expected = by_key(read_rows(local / "table1.csv"))
    assert len(expected) == 4
    address, started = ray_cluster
    started()

    # The same grid on Ray, plus a task that does not exist: each of its runs raises. The driver is killed once the
    # first row is in; the same command again runs only the missing runs.
    results = tmp_path / "ray"
    command = runner(*GRID, "--envs", "CartPole-v1", "NoSuchEnv-v0", "--ray", address, "--results-dir", str(results))
    driver = subprocess.Popen(command, cwd=ROOT, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not read_rows(results / "table1.csv"):
        assert driver.poll() is None and time.monotonic() < deadline, "the driver ended before its first row"
        time.sleep(0.05)
    driver.kill()
    driver.wait()
    first = by_key(read_rows(results / "table1.csv"))
    assert 1 <= len(first) < 4  # at most 2 CPUs: the third and fourth runs were still to come

    again = subprocess.run(command, cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=300, check=False)
    assert again.returncode == 1, again.stderr
    assert f"{8 - len(first)} runs to do" in again.stdout
    assert "4 run(s) failed (the others were recorded)" in again.stderr
    assert again.stderr.count("NameNotFound: Environment `NoSuchEnv` doesn't exist") >= 4
    rows = by_key(read_rows(results / "table1.csv"))  # every run exactly once
    assert set(rows) == set(expected)
    for key, row in rows.items():
        assert {k: v for k, v in row.items() if k not in TIMING} == {
            k: v for k, v in expected[key].items() if k not in TIMING
        }, key
        name = "__".join(key) + ".csv"
        assert read_rows(results / "table1_curves" / name) == read_rows(local / "table1_curves" / name)


def test_a_node_running_other_code_is_refused(tmp_path):
    """A worker node whose code differs by one line: the driver refuses it, names it, and writes nothing."""
    other = tmp_path / "other"
    for package in ("sb3_ppo_kl", "benchmarks"):
        shutil.copytree(ROOT / package, other / package, ignore=shutil.ignore_patterns("results", "__pycache__"))
    init = other / "sb3_ppo_kl" / "__init__.py"
    init.write_text(init.read_text() + "# one changed line\n")
    results = tmp_path / "results"
    # The head has no CPU for runs: every run goes to the other node.
    with ray_head(ROOT, cpus=0) as (address, folder, head_started):
        head_started()
        with ray_node(folder / "other.log", other, "--address", address, "--num-cpus", "1") as other_started:
            other_started()
            # the driver runs outside the checkout: Ray puts the driver's folder first on its workers' paths
            done = subprocess.run(
                runner(*GRID, "--envs", "CartPole-v1", "--ray", address, "--results-dir", str(results)),
                cwd=tmp_path,
                env=cli_env(),
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
    assert done.returncode == 1
    assert f"worker node {socket.gethostname()} (" in done.stderr and "node id" in done.stderr, done.stderr
    assert "runs other code than this driver" in done.stderr
    assert not (results / "table1.csv").exists()
