"""
The models every fine-tuning run starts from: the expert, its data and the behaviour clone.

The expert is SB3 PPO with the task's hyperparameters; the expert, the clone and the random policy are evaluated
for the models CSV.
"""

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import KVWriter, Logger
from stable_baselines3.common.utils import obs_as_tensor

from benchmarks.finetune.protocol import (
    BC_SEED,
    DATA_SEED,
    EXPERT_SEED,
    MODELS_CSV,
    Task,
    clone_name,
    evaluate,
    expert_name,
    make_eval_env,
    model_file,
    random_name,
)
from benchmarks.results import ResultsDir, read_rows
from sb3_ppo_kl import behaviour_clone


class RandomPolicy:
    """Uniform random actions, for evaluate_policy."""

    def __init__(self, action_space: spaces.Space) -> None:
        self.action_space = action_space

    def predict(self, observation: np.ndarray, state: Any = None, episode_start: Any = None, deterministic: bool = False):
        return np.array([self.action_space.sample() for _ in range(len(observation))]), None


def train_expert(task_id: str, task: Task, path: Path) -> PPO:
    env = make_vec_env(task_id, n_envs=task.n_envs, seed=EXPERT_SEED)
    expert = PPO("MlpPolicy", env, seed=EXPERT_SEED, device="cpu", **task.hyperparams)
    expert.learn(task.expert_timesteps)
    path.parent.mkdir(parents=True, exist_ok=True)
    expert.save(path)
    return expert


@dataclass
class Episode:
    """One episode (or the unfinished last one) of the expert's data: ``observations`` has one row more than
    ``actions``, its last the observation the episode ended in (Minari's layout)."""

    observations: np.ndarray
    actions: np.ndarray
    rewards: list[float]
    terminations: list[bool]
    truncations: list[bool]


def collect_expert_episodes(expert: PPO, task_id: str, n_transitions: int) -> list[Episode]:
    """
    ``n_transitions`` consecutive steps of the expert acting stochastically on one env (seeded with ``DATA_SEED``),
    cut into episodes; the last, cut by ``n_transitions``, counts as truncated.

    Box actions are the unclipped samples of the expert's Gaussian (the env gets them clipped), as SB3's
    rollout buffer stores them.
    """
    env = make_vec_env(task_id, n_envs=1, seed=DATA_SEED)
    policy = expert.policy
    policy.set_training_mode(False)
    episodes: list[Episode] = []
    observations, actions, rewards, terminations, truncations = [], [], [], [], []
    obs = env.reset()
    for step in range(n_transitions):
        with th.no_grad():
            action, _, _ = policy(obs_as_tensor(obs, policy.device))
        action_np = action.cpu().numpy()
        observations.append(np.asarray(obs)[0].copy())
        actions.append(action_np[0])
        if isinstance(env.action_space, spaces.Box):
            action_np = np.clip(action_np.reshape(-1, *env.action_space.shape), env.action_space.low, env.action_space.high)
        obs, reward, done, info = env.step(action_np)
        truncated = bool(info[0].get("TimeLimit.truncated", False))
        rewards.append(float(reward[0]))
        terminations.append(bool(done[0]) and not truncated)
        truncations.append(truncated or (step == n_transitions - 1 and not done[0]))
        if done[0] or step == n_transitions - 1:
            last = info[0]["terminal_observation"] if done[0] else np.asarray(obs)[0]
            episodes.append(Episode(np.stack([*observations, last]), np.stack(actions), rewards, terminations, truncations))
            observations, actions, rewards, terminations, truncations = [], [], [], [], []
    env.close()
    return episodes


def collect_expert_data(expert: PPO, task_id: str, n_transitions: int) -> tuple[th.Tensor, th.Tensor]:
    """The (observation, action) pairs of :func:`collect_expert_episodes`, in order: what the clone learns from."""
    episodes = collect_expert_episodes(expert, task_id, n_transitions)
    observations = np.concatenate([episode.observations[:-1] for episode in episodes])
    return th.as_tensor(observations), th.as_tensor(np.concatenate([episode.actions for episode in episodes]))


def minari_dataset_id(task_id: str, task: Task) -> str:
    """The Minari id of a task's demonstrations: ``sb3-ppo-kl/<task>-expert-<expert steps>x<transitions>-v0``."""
    return f"sb3-ppo-kl/{task_id.lower()}-expert-{task.expert_timesteps}x{task.bc_transitions}-v0"


def write_minari_dataset(results: ResultsDir, task_id: str, task: Task) -> Any:
    """
    Write the demonstrations the task's clone learns from, collected from the expert in ``results``, as a local
    Minari dataset (under ``MINARI_DATASETS_PATH``, Minari's default ``~/.minari/datasets``) with the id
    :func:`minari_dataset_id`; returns the ``minari.MinariDataset``. ``sb3_ppo_kl.behaviour_clone`` of the task's
    architecture on this dataset is the committed clone: the same pairs in the same order.
    """
    import minari
    from minari.data_collector import EpisodeBuffer

    expert_path = results / model_file(expert_name(task_id, task))
    if not expert_path.exists():
        raise FileNotFoundError(
            f"no expert for {task_id} at {expert_path}: run `python -m benchmarks.finetune --models-only` first"
        )
    dataset_id = minari_dataset_id(task_id, task)
    if dataset_id in minari.list_local_datasets():
        raise FileExistsError(
            f"the Minari dataset {dataset_id} exists already (under MINARI_DATASETS_PATH, default ~/.minari/datasets): "
            f"load it with minari.load_dataset({dataset_id!r}), or delete it with minari.delete_dataset({dataset_id!r})"
        )
    expert = PPO.load(expert_path, device="cpu")
    buffers = [
        EpisodeBuffer(
            id=index,
            observations=episode.observations,
            actions=episode.actions,
            rewards=episode.rewards,
            terminations=episode.terminations,
            truncations=episode.truncations,
        )
        for index, episode in enumerate(collect_expert_episodes(expert, task_id, task.bc_transitions))
    ]
    return minari.create_dataset_from_buffers(
        dataset_id,
        buffers,
        env=task_id,
        eval_env=task_id,
        author="sb3_ppo_kl's fine-tuning benchmark (benchmarks/finetune)",
        algorithm_name=f"SB3 PPO expert ({task.expert_timesteps:,} steps), stochastic actions, unclipped",
        description=(
            f"{task.bc_transitions:,} consecutive steps of the sb3_ppo_kl fine-tuning benchmark's {task_id} expert "
            f"(env seed {DATA_SEED}): the demonstrations its behaviour clone learns from."
        ),
    )


class LastValues(KVWriter):
    """An SB3 logger output that keeps the last values dumped (the clone's last ``bc/nll``)."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, tuple[str, ...]], step: int = 0) -> None:
        self.values = dict(key_values)


def clone_expert(task_id: str, task: Task, demonstrations: Any) -> tuple[PPO, float]:
    """
    A fresh PPO model (the architecture every method fine-tunes) whose policy :func:`sb3_ppo_kl.behaviour_clone`
    trains by maximum likelihood on the expert's actions, ``demonstrations``: the pair of :func:`collect_expert_data`
    or the Minari dataset of :func:`write_minari_dataset`. Returns it and the last epoch's mean negative
    log-likelihood.
    """
    env = make_vec_env(task_id, n_envs=task.n_envs, seed=BC_SEED)
    clone = PPO("MlpPolicy", env, seed=BC_SEED, device="cpu", **task.hyperparams)
    last = LastValues()
    clone.set_logger(Logger(None, [last]))
    behaviour_clone(
        clone,
        demonstrations,
        epochs=task.bc_epochs,
        batch_size=task.bc_batch_size,
        learning_rate=task.bc_learning_rate,
        seed=BC_SEED,
    )
    return clone, float(last.values["bc/nll"])


def prepare_models(results: ResultsDir, task_id: str, task: Task) -> list[dict[str, Any]]:
    """
    Train (or reuse) the task's expert and clone in ``results``, and evaluate them and the random policy; returns the
    models CSV rows that are new. Runs in a worker.
    """
    th.set_num_threads(1)
    done = {(r["name"], int(r["eval_episodes"])) for r in read_rows(results / MODELS_CSV)}
    rows = []
    eval_env = make_eval_env(task_id)

    def row(name: str, kind: str, predictor: Any, wall: float, **extra: Any) -> dict[str, Any]:
        mean, std = evaluate(predictor, eval_env, task.eval_episodes)
        base = dict(name=name, task=task_id, kind=kind, eval_return=mean, eval_std=std, eval_episodes=task.eval_episodes)
        return {**base, "wall_seconds": round(wall, 1), **extra}

    expert_path = results / model_file(expert_name(task_id, task))
    start = time.perf_counter()
    expert = PPO.load(expert_path, device="cpu") if expert_path.exists() else train_expert(task_id, task, expert_path)
    name = expert_name(task_id, task)
    if (name, task.eval_episodes) not in done:
        rows.append(row(name, "expert", expert, time.perf_counter() - start, expert_timesteps=task.expert_timesteps))

    clone_path = results / model_file(clone_name(task_id, task))
    start = time.perf_counter()
    bc_loss: float | str = ""
    if clone_path.exists():
        clone = PPO.load(clone_path, device="cpu")
    else:
        observations, actions = collect_expert_data(expert, task_id, task.bc_transitions)
        clone, bc_loss = clone_expert(task_id, task, (observations, actions))
        clone_path.parent.mkdir(parents=True, exist_ok=True)
        clone.save(clone_path)
        bc_loss = round(bc_loss, 4)
    name = clone_name(task_id, task)
    if (name, task.eval_episodes) not in done:
        bc = dict(expert_timesteps=task.expert_timesteps, bc_transitions=task.bc_transitions, bc_epochs=task.bc_epochs)
        rows.append(row(name, "clone", clone, time.perf_counter() - start, **bc, bc_loss=bc_loss))

    if (random_name(task_id), task.eval_episodes) not in done:
        rows.append(row(random_name(task_id), "random", RandomPolicy(eval_env.action_space), 0.0))
    eval_env.close()
    return rows
