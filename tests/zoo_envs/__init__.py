"""Registers sb3-contrib's invalid-action test environment in Gymnasium, for `--gym-packages tests.zoo_envs`."""

import gymnasium as gym

gym.register(
    id="InvalidActionEnvDiscrete-v0",
    entry_point="sb3_contrib.common.envs:InvalidActionEnvDiscrete",
    kwargs=dict(dim=20, n_invalid_actions=10),
    max_episode_steps=100,
)
