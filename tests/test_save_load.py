"""save/load keep beta, the controller and the schedules; training continues from the saved beta."""

import copy
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch as th
from stable_baselines3.common.callbacks import BaseCallback, CallbackList, CheckpointCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.utils import LinearSchedule

import sb3_ppo_kl.common.kl as kl_module
from sb3_ppo_kl import PPOKL, KLCoefController


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


# ---------------------------------------------------------------------------------------------------------------
# Models saved by 0.2.0 with the options issue 45 removed (tests/fixtures/v0_2_0, made by its make_fixtures.py at
# commit e562871): they load, with a warning naming each ignored option, and train on without them.

FIXTURES = Path(__file__).parent / "fixtures" / "v0_2_0"
IGNORED = {
    "warmup_target_floor_hard.zip": [
        "value_warmup_rollouts=1",
        "ref_update_interval=2",
        "ref_kl_target=0.02",
        "ref_kl_coef_bounds=(0.5, 10000.0)",
    ],
    "anneal.zip": [
        "ref_kl_coef=HoldThenLinearSchedule(start=1.0, end=0.0, hold_fraction=0.4, end_fraction=0.8) (now fixed at 0.0)"
    ],
    "stop_logprop.zip": ["kl_stop=1.0", "kl_stop_interval=2", "kl_controller_class=LogProportionalKLController (gain=0.3)"],
}
REMOVED_STATE = ("value_warmup_rollouts", "_n_rollouts_trained", "kl_stop", "kl_stop_interval", "ref_kl_controller")
REMOVED_STATE += ("ref_update_interval", "_n_policy_updates")


@pytest.mark.parametrize("safe", [False, True])
@pytest.mark.parametrize("name", list(IGNORED))
def test_a_0_2_0_model_with_removed_options_loads_with_a_warning_and_trains(tmp_path, name, safe):
    env = make_vec_env("CartPole-v1", n_envs=1, seed=0)
    with pytest.warns(UserWarning, match="saved with options that sb3_ppo_kl 0.3.0 removed") as caught:
        model = PPOKL.load(FIXTURES / name, env=env, safe=safe)
    [message] = [str(w.message) for w in caught if "0.3.0 removed" in str(w.message)]
    ignored = message.split("ignored from now on: ")[1].split(". The model trains on")[0].split("; ")
    assert ignored == IGNORED[name]
    assert not set(REMOVED_STATE) & set(vars(model))
    assert type(model.kl_controller) is KLCoefController and model._ref_kl_coef_schedule is None
    # the names of the removed classes resolved during the load only
    assert not hasattr(kl_module, "LogProportionalKLController") and "sb3_ppo_kl.common.schedules" not in sys.modules
    beta, timesteps = model.kl_coef, model.num_timesteps
    if name == "stop_logprop.zip":
        assert beta == 0.03125  # the log-proportional controller's beta in the file; the paper's rule goes on from it
    if name == "warmup_target_floor_hard.zip":
        assert (model.ref_kl_coef, model.ref_tau, model._n_ref_updates) == (0.5, 1.0, 2)
    if name == "anneal.zip":
        assert model.ref_kl_coef == 0.0 and model.ref_policy is not None
    reference = None if model.ref_policy is None else copy.deepcopy(model.ref_policy.state_dict())
    model.learn(64, reset_num_timesteps=False)  # one update of 64 steps
    assert model.num_timesteps == timesteps + 64
    logged = model.logger.name_to_value
    assert logged["train/kl"] > 0 and logged["train/kl_coef"] == model.kl_coef in (beta / 2, beta, beta * 2)
    assert not [key for key in logged if "stopped" in key or "warmup" in key or "n_minibatches_run" in key]
    if name == "warmup_target_floor_hard.zip":  # ref_tau=1.0 now moves the reference after every update
        assert model._n_ref_updates == 3
        assert th.equal(model.ref_policy.action_net.weight, model.policy.action_net.weight)
    elif reference is not None:  # frozen
        for key, value in model.ref_policy.state_dict().items():
            assert th.equal(value, reference[key]), key
    model.save(tmp_path / "resaved")  # saved by this version: loads without a warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PPOKL.load(tmp_path / "resaved", env=env, safe=safe)
