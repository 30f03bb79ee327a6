"""Learning: PPOKL solves CartPole-v1 within 100k steps (about 30 s on one core)."""

import pytest
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.utils import LinearSchedule

from sb3_ppo_kl import PPOKL


@pytest.mark.slow
def test_cartpole_solved_within_100k_steps():
    # RL Zoo's tuned PPO hyperparameters for CartPole-v1, with PPOKL's default KL settings and no clipping
    model = PPOKL(
        "MlpPolicy",
        make_vec_env("CartPole-v1", n_envs=8, seed=0),
        n_steps=32,
        batch_size=256,
        gae_lambda=0.8,
        gamma=0.98,
        n_epochs=20,
        learning_rate=LinearSchedule(1e-3, 0.0, 1.0),
        seed=0,
    )
    model.learn(100_000)
    mean_reward, _ = evaluate_policy(model, make_vec_env("CartPole-v1", n_envs=1, seed=123), n_eval_episodes=20)
    assert mean_reward >= 475
