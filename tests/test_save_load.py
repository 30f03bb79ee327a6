"""save/load keep beta, the controller and the schedules; training continues from the saved beta."""

import numpy as np
import pytest
import torch as th
from stable_baselines3.common.callbacks import BaseCallback, CallbackList, CheckpointCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.utils import LinearSchedule

from sb3_ppo_kl import PPOKL


def _trained(seed=0, **kwargs):
    env = make_vec_env("CartPole-v1", n_envs=2, seed=seed)
    params = dict(n_steps=64, batch_size=32, n_epochs=4, learning_rate=3e-3, kl_target=1e-5, seed=seed)
    params.update(kwargs)
    model = PPOKL("MlpPolicy", env, **params)
    model.learn(512)
    return model, env


def test_round_trip_keeps_beta_controller_schedules_and_weights(tmp_path):
    model, env = _trained(clip_range=LinearSchedule(0.3, 0.1, 1.0), kl_coef_bounds=(0.01, 50.0), kl_adapt_factor=1.7)
    assert model.kl_coef != 1.0, "training should have adapted beta"
    model.save(tmp_path / "model")
    loaded = PPOKL.load(tmp_path / "model", env=env)

    assert loaded.kl_coef == model.kl_coef
    assert vars(loaded.kl_controller) == vars(model.kl_controller)
    assert loaded.clip_range(0.5) == pytest.approx(model.clip_range(0.5))
    assert loaded.lr_schedule(0.5) == model.lr_schedule(0.5)
    assert loaded.num_timesteps == model.num_timesteps
    for a, b in zip(model.policy.parameters(), loaded.policy.parameters()):
        assert th.equal(a, b)
    obs = env.reset()
    assert np.array_equal(model.predict(obs, deterministic=True)[0], loaded.predict(obs, deterministic=True)[0])


def test_round_trip_keeps_kl_target_schedule(tmp_path):
    env = make_vec_env("Pendulum-v1", n_envs=1, seed=0)
    model = PPOKL(
        "MlpPolicy",
        env,
        n_steps=64,
        batch_size=32,
        kl_target=LinearSchedule(0.01, 0.03, 1.0),
        seed=0,
    )
    model.learn(128)
    model.save(tmp_path / "model")
    loaded = PPOKL.load(tmp_path / "model", env=env)
    assert loaded.kl_controller.target(0.5) == pytest.approx(0.02) == model.kl_controller.target(0.5)
    assert loaded.kl_coef == model.kl_coef
    loaded.learn(128, reset_num_timesteps=False)  # and training goes on with them
    assert loaded.logger.name_to_value["train/kl_target"] == pytest.approx(loaded.kl_controller.target(0.0))


def test_learning_continues_from_the_saved_beta(tmp_path):
    model, env = _trained()
    saved_beta = model.kl_coef
    model.save(tmp_path / "model")
    loaded = PPOKL.load(tmp_path / "model", env=env)
    loaded.learn(128, reset_num_timesteps=False)  # exactly one more update
    values = loaded.logger.name_to_value
    # the update used the saved beta ...
    assert values["train/kl_penalty"] == pytest.approx(saved_beta * values["train/kl_minibatch"], rel=1e-5)
    # ... and adapted it once by the rule: any real update moves the policy by more than 1.5 * kl_target = 1.5e-5
    assert values["train/kl"] > 1.5e-5
    assert loaded.kl_coef == saved_beta * 2
    assert loaded.num_timesteps == model.num_timesteps + 128


def test_load_with_fixed_beta(tmp_path):
    model, env = _trained(kl_coef=3.0, adaptive_kl=False)
    model.save(tmp_path / "model")
    loaded = PPOKL.load(tmp_path / "model", env=env)
    loaded.learn(128, reset_num_timesteps=False)
    assert loaded.kl_coef == 3.0 and not loaded.kl_controller.adaptive_kl


class RecordBeta(BaseCallback):
    def __init__(self):
        super().__init__()
        self.beta_at = {}

    def _on_step(self) -> bool:
        self.beta_at[self.num_timesteps] = self.model.kl_coef
        return True


def test_checkpoints_load_back_with_their_beta(tmp_path):
    env = make_vec_env("CartPole-v1", n_envs=1, seed=1)
    model = PPOKL("MlpPolicy", env, n_steps=64, batch_size=32, n_epochs=4, learning_rate=3e-3, kl_target=1e-5, seed=1)
    record = RecordBeta()
    model.learn(640, callback=CallbackList([CheckpointCallback(save_freq=96, save_path=str(tmp_path)), record]))
    checkpoints = sorted(tmp_path.glob("rl_model_*_steps.zip"))
    assert len(checkpoints) == 6
    betas = set()
    for path in checkpoints:
        steps = int(path.stem.split("_")[2])
        loaded = PPOKL.load(path)
        assert loaded.kl_coef == record.beta_at[steps]
        betas.add(loaded.kl_coef)
    assert len(betas) > 1, "beta should have changed between checkpoints"


def test_set_parameters_loads_weights_and_leaves_beta_alone(tmp_path):
    model, env = _trained()
    model.save(tmp_path / "model")
    fresh = PPOKL("MlpPolicy", env, n_steps=64, batch_size=32, kl_coef=0.7, seed=5)
    fresh.set_parameters(str(tmp_path / "model"))
    for a, b in zip(model.policy.parameters(), fresh.policy.parameters()):
        assert th.equal(a, b)
    assert fresh.kl_coef == 0.7  # set_parameters is SB3's: network and optimizer state only; load() restores beta


def test_kl_coef_setter():
    model, _ = _trained()
    model.kl_coef = 0.25
    assert model.kl_controller.kl_coef == 0.25
    with pytest.raises(ValueError, match="kl_coef"):
        model.kl_coef = -1.0
