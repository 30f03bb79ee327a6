"""Two runs with the same seed give the same numbers."""

import numpy as np
import pytest
import torch as th
from sb3_contrib.common.envs import InvalidActionEnvDiscrete

import sb3_ppo_kl
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


@pytest.mark.parametrize(
    "algo, policy, env_id",
    [
        ("PPOKL", "MlpPolicy", "Pendulum-v1"),
        ("PPOKL", "MlpPolicy", "CartPole-v1"),
        ("MaskablePPOKL", "MlpPolicy", "InvalidActionEnvDiscrete"),
        ("RecurrentPPOKL", "MlpLstmPolicy", "Pendulum-v1"),
    ],
)
def test_the_multi_tensor_adam_step_gives_the_loops_parameters_bit_for_bit(algo, policy, env_id):
    # On CPU learn() switches the default Adam to torch's multi-tensor step (common/optim.py), for speed only: a run
    # that keeps torch's one-tensor loop (an explicit foreach=False, with SB3's Adam eps) must give the same numbers
    cls = getattr(sb3_ppo_kl, algo)
    loop = dict(optimizer_kwargs=dict(eps=1e-5, foreach=False))
    runs = []
    for policy_kwargs in (None, loop):
        env = InvalidActionEnvDiscrete(dim=10, n_invalid_actions=4) if env_id == "InvalidActionEnvDiscrete" else env_id
        model = cls(policy, env, n_steps=128, batch_size=32, n_epochs=3, seed=3, policy_kwargs=policy_kwargs)
        model.learn(384)
        runs.append(model)
    multi, single = runs
    assert [group["foreach"] for group in multi.policy.optimizer.param_groups] == [True]
    assert [group["foreach"] for group in single.policy.optimizer.param_groups] == [False]  # an explicit choice stays
    assert multi.kl_coef == single.kl_coef
    for a, b in zip(multi.policy.parameters(), single.policy.parameters(), strict=True):
        assert th.equal(a, b)


def test_a_loaded_model_steps_with_the_multi_tensor_adam_too(tmp_path):
    # load() restores the optimizer's saved param_groups; the next learn() switches it again
    model = PPOKL("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=32, n_epochs=1, seed=0)
    model.policy.optimizer.param_groups[0]["foreach"] = None  # as saved by 0.2.0
    model.save(tmp_path / "model.zip")
    loaded = PPOKL.load(tmp_path / "model.zip", env=model.get_env())
    assert loaded.policy.optimizer.param_groups[0]["foreach"] is None
    loaded.learn(64)
    assert loaded.policy.optimizer.param_groups[0]["foreach"] is True
