"""PPOKL learns SB3's identity tasks (the action must copy the observation), as in SB3's own tests."""

import pytest
from stable_baselines3.common.envs import IdentityEnv, IdentityEnvBox, IdentityEnvMultiBinary, IdentityEnvMultiDiscrete
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import DummyVecEnv

from sb3_ppo_kl import PPOKL

# SB3 tests PPO on these envs with the same 90% threshold on a 100-step episode
ENVS = {
    "Discrete": (lambda: IdentityEnv(10), 4_000),
    "MultiDiscrete": (lambda: IdentityEnvMultiDiscrete(4), 4_000),
    "MultiBinary": (lambda: IdentityEnvMultiBinary(4), 4_000),
    "Box": (lambda: IdentityEnvBox(eps=0.5), 8_000),
}


@pytest.mark.parametrize("space", list(ENVS))
def test_identity(space):
    make_env, timesteps = ENVS[space]
    env = DummyVecEnv([make_env])
    model = PPOKL("MlpPolicy", env, n_steps=256, batch_size=64, n_epochs=10, learning_rate=1e-3, gamma=0.4, seed=3)
    model.learn(timesteps)
    mean_reward, _ = evaluate_policy(model, env, n_eval_episodes=10, deterministic=True)
    assert mean_reward >= 90, f"{space}: {mean_reward}"
