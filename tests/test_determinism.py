"""Two runs with the same seed give the same numbers."""

import numpy as np
import pytest
import torch as th

from sb3_ppo_kl import PPOKL


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_seeded_runs_are_identical(env_id):
    runs = []
    for _ in range(2):
        model = PPOKL("MlpPolicy", env_id, n_steps=128, batch_size=32, n_epochs=3, seed=42)
        model.learn(512)
        values = dict(model.logger.name_to_value)
        runs.append((model, values))
    (first, first_log), (second, second_log) = runs
    assert first.kl_coef == second.kl_coef
    for key in ("train/kl", "train/kl_penalty", "train/loss", "train/value_loss"):
        assert first_log[key] == second_log[key]
    for a, b in zip(first.policy.parameters(), second.policy.parameters()):
        assert th.equal(a, b)
    obs = first.get_env().reset()
    assert np.array_equal(first.predict(obs, deterministic=True)[0], second.predict(obs, deterministic=True)[0])
