"""
Where a grid's runs run: a local process pool or a Ray cluster.

:func:`run_jobs` runs the jobs (on Ray, checking each node's code fingerprint); :func:`parse_arguments` adds and
reads the command-line options every grid runner shares.
"""

import argparse
import contextlib
import functools
import hashlib
import importlib.metadata
import multiprocessing as mp
import os
import platform
import socket
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from benchmarks.results import ResultsDir


def machine() -> str:
    """
    The machine a run ran on, for its row: with its CPU's model and the SIMD level of torch's CPU kernels, as two
    CPUs may round differently, and a continuous task's episodes then end elsewhere (``benchmarks.finetune.eval_noise``).
    """
    import torch

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        models = [line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")]
        cpu = models[0].split(":", 1)[1].strip() if models else cpu
    capability = torch.backends.cpu.get_cpu_capability()
    return f"{platform.machine()} {os.cpu_count()} cores ({cpu}, {capability}), Python {platform.python_version()}"


def parse_arguments(
    parser: argparse.ArgumentParser, workers: int | None = None
) -> tuple[argparse.Namespace, dict[str, Any], ResultsDir]:
    """
    Add the options every grid runner shares (where its runs go, :func:`run_jobs`, and where its results land) to
    ``parser``, and parse the command line. ``workers``: the default of ``--workers`` (else 2, or 1 on a machine of
    one core). Returns the arguments, :func:`run_jobs`'s keyword arguments (checked) and the results folder.
    """
    default = min(2, os.cpu_count() or 1) if workers is None else workers
    parser.add_argument("--workers", type=int, default=default, help="parallel local processes (without --ray)")
    parser.add_argument(
        "--ray",
        metavar="ADDRESS",
        help="run on a Ray cluster instead: 'auto' (the cluster this machine belongs to) or HEAD_HOST:PORT; one task of "
        "one CPU per run",
    )
    parser.add_argument(
        "--ray-working-dir",
        metavar="DIR",
        help="with --ray: ship DIR (the repository's root) to every node with Ray's runtime_env (default: the nodes use "
        "the code installed on them)",
    )
    parser.add_argument(
        "--results-dir",
        type=Path,
        metavar="DIR",
        help="write (and resume from) the result files in DIR (default: benchmarks/results)",
    )
    args = parser.parse_args()
    if args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    if args.ray_working_dir is not None and args.ray is None:
        parser.error("--ray-working-dir needs --ray")
    dispatch = dict(workers=args.workers, ray_address=args.ray, ray_working_dir=args.ray_working_dir)
    return args, dispatch, ResultsDir.option(args.results_dir)


class RunsFailed(RuntimeError):
    """Some runs of a grid raised; the others finished and were yielded. ``failures``: (run, error text)."""

    def __init__(self, failures: list[tuple[str, str]]) -> None:
        self.failures = failures
        lines = [f"  {run}: {error.strip().splitlines()[-1]}" for run, error in failures]
        super().__init__(f"{len(failures)} run(s) failed (the others were recorded):\n" + "\n".join(lines))


class FingerprintMismatch(RuntimeError):
    """A Ray worker runs other code (or other library versions) than the driver; its result was refused."""


@contextlib.contextmanager
def exit_on_failure() -> Iterator[None]:
    """A command line's end when some runs failed or a node was refused: the error, and exit status 1."""
    try:
        yield
    except (RunsFailed, FingerprintMismatch) as error:
        sys.exit(f"error: {error}")


FINGERPRINT_LIBRARIES = ("torch", "stable_baselines3", "sb3_contrib", "gymnasium", "numpy")


@functools.cache
def code_fingerprint() -> str:
    """
    A hash of the code a run executes: every ``.py`` and ``.yml`` file of the imported ``sb3_ppo_kl`` and
    ``benchmarks`` packages (path and content, in sorted order), and the versions of the libraries in
    :data:`FINGERPRINT_LIBRARIES`. The same commit with the same libraries gives the same fingerprint on any machine.
    """
    import benchmarks
    import sb3_ppo_kl

    digest = hashlib.sha256()
    for package in (sb3_ppo_kl, benchmarks):
        root = Path(package.__file__).parent
        files = sorted(p for p in root.rglob("*") if p.suffix in (".py", ".yml") and "__pycache__" not in p.parts)
        for file in files:
            digest.update(f"{package.__name__}/{file.relative_to(root).as_posix()}\0".encode())
            digest.update(file.read_bytes())
            digest.update(b"\0")
    for library in FINGERPRINT_LIBRARIES:
        digest.update(f"{library}=={importlib.metadata.version(library.replace('_', '-'))}\0".encode())
    return digest.hexdigest()[:16]


def _attempt(call: tuple[Callable[[Any], Any], int, Any]) -> tuple[int, bool, Any]:
    """Run one job in a pool process: (its index, whether it finished, its result or the error's traceback)."""
    fn, index, job = call
    try:
        return index, True, fn(job)
    except Exception:  # noqa: BLE001 (any error of one run is reported, and the other runs go on)
        return index, False, traceback.format_exc()


def _attempt_on_node(fn: Callable[[Any], Any], job: Any, driver_fingerprint: str) -> tuple[str, str, bool, Any]:
    """
    One Ray task: (this node's code fingerprint, the node's name, whether the job finished, its result or traceback).
    On a node whose code differs from the driver's, the job is not run at all (and the driver refuses the node).
    """
    import ray
    import torch

    torch.set_num_threads(1)
    node = f"{socket.gethostname()} ({ray.util.get_node_ip_address()}, node id {ray.get_runtime_context().get_node_id()})"
    fingerprint = code_fingerprint()
    if fingerprint != driver_fingerprint:
        return fingerprint, node, False, None
    _, finished, value = _attempt((fn, 0, job))
    return fingerprint, node, finished, value


def run_jobs(
    fn: Callable[[Any], Any],
    jobs: list[Any],
    *,
    workers: int = 1,
    ray_address: str | None = None,
    ray_working_dir: str | Path | None = None,
    describe: Callable[[Any], str] = str,
) -> Iterator[tuple[Any, Any]]:
    """
    Run ``fn(job)`` for every job and yield ``(job, result)`` as each finishes, in the order they finish.

    Without ``ray_address`` the jobs run in a pool of ``workers`` local processes (here, in this process, for 1).
    With it, the driver connects to that Ray cluster (``"auto"``, ``"HOST:PORT"``) and each job is one Ray task that
    asks for one CPU, runs ``fn`` with one torch thread wherever a CPU is free, and is re-run by Ray (up to
    ``max_retries`` = 3 times) if its node dies. ``ray_working_dir`` ships that folder to every worker with Ray's
    ``runtime_env``. Each task returns the fingerprint of the code it ran (:func:`code_fingerprint`): a result whose
    fingerprint differs from the driver's is refused with :class:`FingerprintMismatch` naming the node, and the grid
    stops.

    ``fn`` must be a module-level function, and it and its results must pickle; only the caller writes files. A job
    that raises is reported (with ``describe(job)``) and the others go on; once every other job has finished,
    :class:`RunsFailed` lists the failures. A bar shows the runs finished, running and left, and the time left.
    """
    from tqdm import tqdm

    failures: list[tuple[str, str]] = []
    bar = tqdm(total=len(jobs), desc="runs", unit="run", dynamic_ncols=True)

    def failed(job: Any, error: str) -> None:
        failures.append((describe(job), error))
        tqdm.write(f"FAILED {describe(job)}:\n{error}", file=sys.stderr)

    def show(running: int) -> None:
        bar.set_postfix_str(f"running {running}, left {len(jobs) - bar.n - running}")

    try:
        if not jobs:
            return
        if ray_address is None:
            yield from _run_local(fn, jobs, workers, bar, show, failed)
        else:
            yield from _run_ray(fn, jobs, ray_address, ray_working_dir, bar, show, failed, describe)
    finally:
        bar.close()
    if failures:
        raise RunsFailed(failures)


def _run_local(fn, jobs, workers, bar, show, failed) -> Iterator[tuple[Any, Any]]:
    calls = [(fn, index, job) for index, job in enumerate(jobs)]
    workers = min(workers, len(jobs))
    show(1)
    if workers <= 1:
        outcomes: Iterator[tuple[int, bool, Any]] = map(_attempt, calls)
        yield from _collect(outcomes, jobs, bar, lambda: show(min(1, len(jobs) - bar.n)), failed)
        return
    with mp.Pool(workers) as pool:
        show(workers)
        outcomes = pool.imap_unordered(_attempt, calls)
        yield from _collect(outcomes, jobs, bar, lambda: show(min(workers, len(jobs) - bar.n)), failed)


def _collect(outcomes, jobs, bar, show_running, failed) -> Iterator[tuple[Any, Any]]:
    for index, finished, value in outcomes:
        if finished:
            yield jobs[index], value
        else:
            failed(jobs[index], value)
        bar.update(1)
        show_running()


def _run_ray(fn, jobs, address, working_dir, bar, show, failed, describe) -> Iterator[tuple[Any, Any]]:
    try:
        import ray
    except ImportError as error:
        raise ImportError('--ray needs Ray: pip install -e ".[ray]"') from error

    runtime_env = None
    if working_dir is not None:
        # the results and the environment stay on the driver; Ray uploads the rest (the code) to every node
        runtime_env = {"working_dir": str(working_dir), "excludes": ["benchmarks/results/", ".git/", ".venv/", "docs/"]}
    ray.init(address=address, runtime_env=runtime_env, log_to_driver=False)
    try:
        fingerprint = code_fingerprint()
        task = ray.remote(num_cpus=1, max_retries=3)(_attempt_on_node)
        fn_ref = ray.put(fn)
        pending = {task.remote(fn_ref, job, fingerprint): job for job in jobs}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1, timeout=2.0)
            for ref in done:
                job = pending.pop(ref)
                try:
                    their_fingerprint, node, finished, value = ray.get(ref)
                except ray.exceptions.RayError as error:  # the task could not be run (its retries spent, say)
                    failed(job, f"{type(error).__name__}: {error}")
                else:
                    if their_fingerprint != fingerprint:
                        for other in pending:
                            ray.cancel(other, force=True)
                        raise FingerprintMismatch(
                            f"worker node {node} runs other code than this driver (fingerprint {their_fingerprint}, "
                            f"the driver's {fingerprint}): it was refused ({describe(job)} not run there) and the grid "
                            "stopped. Install the driver's commit and library versions on that node (or pass the "
                            "code with --ray-working-dir), then rerun the same command."
                        )
                    if finished:
                        yield job, value
                    else:
                        failed(job, f"on {node}:\n{value}")
                bar.update(1)
            # CPUs in use (nodes may join or leave): this grid's running runs, unless other jobs share the cluster
            busy = ray.cluster_resources().get("CPU", 0) - ray.available_resources().get("CPU", 0)
            show(int(min(len(pending), max(busy, 0))))
    finally:
        ray.shutdown()
