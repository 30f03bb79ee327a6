"""
The fine-tuning runs, and the resumable grid of them.

A run fine-tunes the task's clone with one method and seed, evaluated along the way. The grid prepares the experts
and clones first; each run works in a private results folder, and the driver alone writes the results.
"""

import tempfile
import time
from pathlib import Path
from typing import Any

import torch as th
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.utils import obs_as_tensor
from stable_baselines3.common.vec_env import VecEnv
from tqdm import tqdm

from benchmarks.dispatch import machine, run_jobs
from benchmarks.finetune.pretrain import prepare_models
from benchmarks.finetune.protocol import (
    CURVE_FIELDS,
    CURVES,
    EXPERTS,
    FIELDS,
    KEY,
    METHODS,
    MODEL_FIELDS,
    MODEL_KEY,
    MODELS_CSV,
    REMOVED_METHODS,
    RESULTS_CSV,
    MethodOptions,
    Task,
    clone_name,
    curve_name,
    evaluate,
    expert_name,
    make_eval_env,
    measures,
    model_file,
    model_names,
    model_return,
    steps_text,
)
from benchmarks.results import ResultsDir, append_new_row, read_rows, write_bytes, write_rows
from sb3_ppo_kl import PPOKL
from sb3_ppo_kl.common.kl import distribution_params, per_state_kl


def make_finetune_model(
    results: ResultsDir, method: str, task_id: str, task: Task, seed: int, options: MethodOptions
) -> PPO | PPOKL:
    """The model of one run, its policy a copy of the task's clone (in ``results``)."""
    if method in REMOVED_METHODS:
        raise ValueError(f"method {method!r} was removed (its options are gone, issue 45): commit e562871 runs it")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; one of {list(METHODS)}")
    spec = METHODS[method]
    env = make_vec_env(task_id, n_envs=task.n_envs, seed=seed)
    clone = PPO.load(results / model_file(clone_name(task_id, task)), device="cpu")
    if spec.algo == "ppo":
        model = PPO("MlpPolicy", env, seed=seed, policy_kwargs=clone.policy_kwargs, device="cpu", **task.hyperparams)
        model.policy.load_state_dict(clone.policy.state_dict())
        return model
    if not spec.reference:
        return PPOKL.from_pretrained(clone.policy, env, ref_policy=None, seed=seed, device="cpu", **task.hyperparams)
    return PPOKL.from_pretrained(
        clone.policy,
        env,
        ref_kl_coef=options.ref_kl_coef,
        ref_tau=spec.ref_tau,  # always given: from_pretrained's default (0.3) is not ppokl-ref's frozen reference
        seed=seed,
        device="cpu",
        **task.hyperparams,
    )


class EvalCurve(BaseCallback):
    """
    Deterministic evaluations at step 0, after the first update at or past every ``every`` steps, and at the end;
    with each, the mean KL[clone || policy] over the latest rollout's states, beta and the reference coefficient.
    """

    def __init__(self, eval_env: VecEnv, episodes: int, every: int, clone: BasePolicy) -> None:
        super().__init__()
        self.eval_env, self.episodes, self.every, self.clone = eval_env, episodes, every, clone
        self.rows: list[dict[str, Any]] = []
        self.next_eval = 0
        self._obs: th.Tensor | None = None

    def _evaluate(self) -> None:
        mean, std = evaluate(self.model, self.eval_env, self.episodes)
        kl = ""
        if self._obs is not None:
            policy = self.model.policy
            policy.set_training_mode(False)
            with th.no_grad():
                clone_params = distribution_params(self.clone.get_distribution(self._obs))
                kl = round(per_state_kl(clone_params, policy.get_distribution(self._obs)).mean().item(), 5)
        ref_kl_coef = self.model.ref_kl_coef if getattr(self.model, "ref_policy", None) is not None else ""
        kl_coef = getattr(self.model, "kl_coef", "")
        self.rows.append(
            {
                "timesteps": self.num_timesteps,
                "return": mean,
                "return_std": std,
                "kl_to_clone": kl,
                "kl_coef": kl_coef,
                "ref_kl_coef": ref_kl_coef,
            }
        )
        self.next_eval = (self.num_timesteps // self.every + 1) * self.every

    def _on_training_start(self) -> None:
        self.clone.to(self.model.device)
        self._evaluate()

    def _on_rollout_start(self) -> None:
        if self.num_timesteps >= self.next_eval:
            self._evaluate()

    def _on_rollout_end(self) -> None:
        buffer = self.model.rollout_buffer
        self._obs = obs_as_tensor(buffer.observations.reshape(-1, *buffer.obs_shape), self.model.device)

    def _on_step(self) -> bool:
        return True

    def _on_training_end(self) -> None:
        if self.rows[-1]["timesteps"] != self.num_timesteps:
            self._evaluate()


def run_one(results: ResultsDir, job: tuple[str, Task, str, int, MethodOptions]) -> dict[str, Any]:
    """Fine-tune the clone with one method and seed; write its curve into ``results``; return its CSV row."""
    task_id, task, method, seed, options = job
    th.set_num_threads(1)
    expert_return = model_return(results, expert_name(task_id, task), task.eval_episodes)
    clone_return = model_return(results, clone_name(task_id, task), task.eval_episodes)
    model = make_finetune_model(results, method, task_id, task, seed, options)
    clone = PPO.load(results / model_file(clone_name(task_id, task)), device="cpu").policy
    eval_env = make_eval_env(task_id)
    curve = EvalCurve(eval_env, task.eval_episodes, task.eval_every, clone)
    start = time.perf_counter()
    model.learn(task.timesteps, callback=curve)
    wall = time.perf_counter() - start
    eval_env.close()
    write_rows(results / curve_name(task_id, method, seed), CURVE_FIELDS, curve.rows)
    last = curve.rows[-1]
    return dict(
        task=task_id,
        method=method,
        seed=seed,
        timesteps=task.timesteps,
        expert=expert_name(task_id, task),
        clone=clone_name(task_id, task),
        expert_return=expert_return,
        clone_return=clone_return,
        **measures(curve.rows, task.timesteps, expert_return),
        final_kl_to_clone=last["kl_to_clone"],
        final_kl_coef=last["kl_coef"],
        final_ref_kl_coef=last["ref_kl_coef"],
        params=options.params(method),
        eval_every=task.eval_every,
        eval_episodes=task.eval_episodes,
        wall_seconds=round(wall, 1),
        machine=machine(),
    )


def _check_settings(
    path: Path, done: list[dict[str, str]], task_id: str, task: Task, method: str, options: MethodOptions
) -> None:
    """ValueError if a finished row (of ``path``) of this (task, method) was made with other settings than these."""
    wanted = dict(
        clone=clone_name(task_id, task),
        timesteps=str(task.timesteps),
        params=options.params(method),
        eval_every=str(task.eval_every),
        eval_episodes=str(task.eval_episodes),
    )
    for row in done:
        if row["task"] == task_id and row["method"] == method:
            differ = {key: (row[key], value) for key, value in wanted.items() if row[key] != value}
            if differ:
                raise ValueError(
                    f"{path} has {task_id} {method} seed {row['seed']} made with other settings "
                    f"(theirs, these): {differ}. Remove those rows (and their curves) to rerun with these settings"
                )


# Every run (an expert and clone, or a fine-tuning run) works in a private copy of the result files it reads, so that
# it can run in another process or on another machine (run_jobs, Ray included); the driver alone writes the files
# it returns. Files: their paths in the results folder, and their contents.
Files = dict[str, bytes]


def _inputs(results: ResultsDir, task_id: str, task: Task) -> Files:
    """The files a run of the task reads: the models CSV and the task's expert and clone, where they exist."""
    wanted = [MODELS_CSV, model_file(expert_name(task_id, task)), model_file(clone_name(task_id, task))]
    return {name: (results / name).read_bytes() for name in wanted if (results / name).exists()}


def _in_own_folder(job: tuple[Any, tuple, Files]) -> tuple[Any, Files]:
    """``fn(folder, *args)`` in a temporary results folder holding ``inputs``: its result, and the files it wrote."""
    fn, args, inputs = job
    with tempfile.TemporaryDirectory() as folder:
        own = ResultsDir(Path(folder))
        for name, data in inputs.items():
            write_bytes(own / name, data)
        result = fn(own, *args)
        written = {
            f"{kind}/{path.name}": path.read_bytes()
            for kind in (EXPERTS, CURVES)
            if (own / kind).exists()
            for path in sorted((own / kind).iterdir())
            if f"{kind}/{path.name}" not in inputs
        }
    return result, written


def _describe(job: tuple[Any, tuple, Files]) -> str:
    fn, args, _ = job
    return f"{fn.__name__} " + " ".join(
        str(arg) for arg in (args[:1] if fn is prepare_models else (args[0][0], *args[0][2:4]))
    )


def copy_models(source: ResultsDir, results: ResultsDir, tasks: dict[str, Task]) -> None:
    """
    Copy the tasks' expert and clone zips from ``source`` (the committed ones) into ``results`` where it has none, so
    that a protocol's own folder fine-tunes the same clones instead of training new ones.
    """
    for task_id, task in tasks.items():
        for name in (model_file(expert_name(task_id, task)), model_file(clone_name(task_id, task))):
            if not (results / name).exists() and (source / name).exists():
                write_bytes(results / name, (source / name).read_bytes())


def run(
    results: ResultsDir,
    tasks: dict[str, Task],
    methods: dict[str, list[str]],
    seeds: list[int],
    options: MethodOptions,
    workers: int = 1,
    models_only: bool = False,
    ray_address: str | None = None,
    ray_working_dir: str | Path | None = None,
) -> None:
    """
    The whole benchmark, resumable, recorded in ``results``: experts and clones (one job per task), then the
    fine-tuning runs of each task's ``methods``; in a pool of ``workers`` processes or on the Ray cluster at
    ``ray_address`` (:func:`~benchmarks.dispatch.run_jobs`).
    """
    th.set_num_threads(1)
    dispatch = dict(workers=workers, ray_address=ray_address, ray_working_dir=ray_working_dir, describe=_describe)
    preparations = [(prepare_models, (task_id, task), _inputs(results, task_id, task)) for task_id, task in tasks.items()]
    for _, (rows, written) in run_jobs(_in_own_folder, preparations, **dispatch):
        for name, data in written.items():
            write_bytes(results / name, data)
        for row in rows:
            append_new_row(results / MODELS_CSV, MODEL_FIELDS, MODEL_KEY, row)
    for task_id, task in tasks.items():
        returns = {kind: model_return(results, name, task.eval_episodes) for kind, name in model_names(task_id, task).items()}
        print(
            f"{task_id}: expert {returns['expert']}, clone {returns['clone']}, random {returns['random']} "
            f"({task.eval_episodes} deterministic episodes)",
            flush=True,
        )
    if models_only:
        return

    path = results / RESULTS_CSV
    done = read_rows(path)
    finished = {(r["task"], r["method"], int(r["seed"])) for r in done}
    for task_id, task in tasks.items():
        for method in methods[task_id]:
            _check_settings(path, done, task_id, task, method, options)
    jobs = [
        (task_id, task, method, seed, options)
        for seed in seeds
        for task_id, task in tasks.items()
        for method in methods[task_id]
        if (task_id, method, seed) not in finished
    ]
    where = f"Ray cluster {ray_address}" if ray_address else f"{workers} workers"
    print(f"{len(jobs)} runs to do, {len(finished)} rows already in {path}; {where}", flush=True)
    inputs = {task_id: _inputs(results, task_id, task) for task_id, task in tasks.items()}
    runs = [(run_one, (job,), inputs[job[0]]) for job in jobs]
    for _, (row, written) in run_jobs(_in_own_folder, runs, **dispatch):
        for name, data in written.items():  # the curve, before its row
            write_bytes(results / name, data)
        if append_new_row(path, FIELDS, KEY, row):
            tqdm.write(
                f"{row['task']} {row['method']} seed {row['seed']}: step 0 {row['step0_return']}, dip {row['dip']}, "
                f"final {row['final_return']}, steps to expert {steps_text(str(row['steps_to_expert']))} "
                f"({row['wall_seconds']} s)"
            )
