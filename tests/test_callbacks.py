"""SB3 callbacks work unchanged with PPOKL."""

import numpy as np
from stable_baselines3.common.callbacks import (
    BaseCallback,
    CallbackList,
    CheckpointCallback,
    EvalCallback,
    StopTrainingOnRewardThreshold,
)
from stable_baselines3.common.env_util import make_vec_env

from sb3_ppo_kl import PPOKL


class RolloutEnds(BaseCallback):
    def __init__(self):
        super().__init__()
        self.rollout_ends, self.betas = 0, []

    def _on_rollout_end(self) -> None:
        self.rollout_ends += 1
        self.betas.append(self.model.kl_coef)

    def _on_step(self) -> bool:
        return True


def test_eval_checkpoint_and_custom_callbacks(tmp_path):
    env = make_vec_env("CartPole-v1", n_envs=2, seed=0)
    eval_callback = EvalCallback(
        make_vec_env("CartPole-v1", n_envs=1, seed=1),
        eval_freq=64,
        n_eval_episodes=2,
        log_path=str(tmp_path),
        best_model_save_path=str(tmp_path),
    )
    checkpoint = CheckpointCallback(save_freq=64, save_path=str(tmp_path / "ckpt"), name_prefix="ppokl")
    custom = RolloutEnds()
    model = PPOKL("MlpPolicy", env, n_steps=64, batch_size=64, n_epochs=2, seed=0)
    model.learn(512, callback=CallbackList([eval_callback, checkpoint, custom]), progress_bar=True)

    assert custom.rollout_ends == 4
    assert len(np.load(tmp_path / "evaluations.npz")["timesteps"]) == 4
    assert (tmp_path / "best_model.zip").exists()
    assert len(list((tmp_path / "ckpt").glob("ppokl_*_steps.zip"))) == 4
    assert PPOKL.load(tmp_path / "best_model.zip").kl_coef in custom.betas + [1.0]


def test_stop_training_on_reward_threshold():
    stop = StopTrainingOnRewardThreshold(reward_threshold=15, verbose=0)
    eval_callback = EvalCallback(
        make_vec_env("CartPole-v1", n_envs=1, seed=1), eval_freq=128, n_eval_episodes=3, callback_on_new_best=stop
    )
    model = PPOKL("MlpPolicy", "CartPole-v1", n_steps=128, batch_size=64, n_epochs=2, seed=0)
    model.learn(100_000, callback=eval_callback)
    assert model.num_timesteps < 100_000  # an untrained CartPole policy already scores above 15
