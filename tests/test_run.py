"""PPOKL runs on every action space SB3 PPO supports, Dict and image observations, many envs, gSDE and VecNormalize."""

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.distributions import DiagGaussianDistribution, Distribution
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.envs import (
    FakeImageEnv,
    IdentityEnv,
    IdentityEnvBox,
    IdentityEnvMultiBinary,
    IdentityEnvMultiDiscrete,
    SimpleMultiObsEnv,
)
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.utils import LinearSchedule
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecNormalize

from sb3_ppo_kl import PPOKL
from sb3_ppo_kl.common.buffers import KLDictRolloutBuffer, KLRolloutBuffer

ACTION_ENVS = {
    "Discrete": lambda: IdentityEnv(4),
    "Box": lambda: IdentityEnvBox(eps=0.5),
    "MultiDiscrete": lambda: IdentityEnvMultiDiscrete(3),
    "MultiBinary": lambda: IdentityEnvMultiBinary(3),
}


def _learn_and_check(model, timesteps=256):
    model.learn(timesteps)
    values = model.logger.name_to_value
    assert np.isfinite(values["train/kl"]) and values["train/kl"] >= 0
    assert values["train/kl_coef"] == model.kl_coef
    for param in model.policy.parameters():
        assert th.isfinite(param).all()
    return values


@pytest.mark.parametrize("space", list(ACTION_ENVS))
def test_every_action_space(space):
    model = PPOKL("MlpPolicy", ACTION_ENVS[space](), n_steps=64, batch_size=32, n_epochs=2, seed=0)
    assert isinstance(model.rollout_buffer, KLRolloutBuffer)
    _learn_and_check(model)
    obs = model.get_env().reset()
    action, _ = model.predict(obs, deterministic=True)
    assert model.action_space.contains(action[0])


def test_dict_observations():
    model = PPOKL("MultiInputPolicy", SimpleMultiObsEnv(random_start=True), n_steps=64, batch_size=32, n_epochs=2, seed=0)
    assert isinstance(model.rollout_buffer, KLDictRolloutBuffer)
    _learn_and_check(model)


def test_image_observations_with_cnn_policy():
    env = FakeImageEnv(screen_height=40, screen_width=40, n_channels=1, discrete=True)
    model = PPOKL(
        "CnnPolicy",
        env,
        n_steps=32,
        batch_size=16,
        n_epochs=1,
        seed=0,
        policy_kwargs=dict(features_extractor_kwargs=dict(features_dim=32)),
    )
    _learn_and_check(model, 64)


@pytest.mark.parametrize("vec_env_cls", [DummyVecEnv, SubprocVecEnv])
def test_multi_env(vec_env_cls):
    env = make_vec_env("Pendulum-v1", n_envs=4, seed=0, vec_env_cls=vec_env_cls)
    model = PPOKL("MlpPolicy", env, n_steps=32, batch_size=64, n_epochs=2, seed=0)
    _learn_and_check(model, 256)
    assert model.num_timesteps == 256
    assert model.rollout_buffer.old_dist_params.shape == (32 * 4, 2)  # (mean, std) per sample
    env.close()


@pytest.mark.parametrize("squash_output", [False, True])
def test_gsde(squash_output):
    model = PPOKL(
        "MlpPolicy",
        "Pendulum-v1",
        n_steps=64,
        batch_size=32,
        n_epochs=2,
        use_sde=True,
        sde_sample_freq=4,
        policy_kwargs=dict(squash_output=squash_output),
        seed=0,
    )
    values = _learn_and_check(model)
    assert values["train/kl"] > 0


def test_vec_normalize():
    env = VecNormalize(make_vec_env("Pendulum-v1", n_envs=2, seed=0))
    model = PPOKL("MlpPolicy", env, n_steps=64, batch_size=32, n_epochs=2, seed=0)
    _learn_and_check(model)
    assert model.get_vec_normalize_env() is env
    assert env.obs_rms.count > 1


def test_clipping_on_top_of_the_penalty_with_schedules():
    model = PPOKL(
        "MlpPolicy",
        "CartPole-v1",
        n_steps=64,
        batch_size=32,
        n_epochs=2,
        clip_range=LinearSchedule(0.3, 0.1, 1.0),
        clip_range_vf=0.5,
        learning_rate=LinearSchedule(1e-3, 1e-4, 1.0),
        seed=0,
    )
    values = _learn_and_check(model, 128)
    assert 0.1 <= values["train/clip_range"] < 0.3
    assert 0 <= values["train/clip_fraction"] <= 1
    assert values["train/learning_rate"] < 1e-3


def test_pure_ppo1_logs_no_clip_statistics():
    model = PPOKL("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=32, n_epochs=2, seed=0)
    values = _learn_and_check(model, 128)
    assert "train/clip_range" not in values and "train/clip_fraction" not in values
    for key in ("entropy_loss", "policy_gradient_loss", "value_loss", "approx_kl", "loss", "explained_variance", "kl_penalty"):
        assert f"train/{key}" in values


def test_target_kl_early_stop(capsys):
    model = PPOKL(
        "MlpPolicy",
        "CartPole-v1",
        n_steps=128,
        batch_size=32,
        n_epochs=20,
        learning_rate=1e-2,
        target_kl=1e-4,
        verbose=1,
        seed=0,
    )
    model.learn(128)
    assert "Early stopping" in capsys.readouterr().out
    assert model._n_updates < 20


def test_fixed_beta_stays_fixed():
    model = PPOKL("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=32, kl_coef=3.0, adaptive_kl=False, seed=0)
    model.learn(256)
    assert model.kl_coef == 3.0
    assert model.logger.name_to_value["train/kl_penalty"] == pytest.approx(
        3.0 * model.logger.name_to_value["train/kl_minibatch"]
    )


def test_tensorboard_records_kl_values(tmp_path):
    pytest.importorskip("tensorboard")
    model = PPOKL("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=32, n_epochs=1, tensorboard_log=str(tmp_path), seed=0)
    model.learn(192)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "PPOKL_1"
    accumulator = EventAccumulator(str(run_dir))
    accumulator.Reload()
    tags = accumulator.Tags()["scalars"]
    for tag in ("train/kl_coef", "train/kl", "train/kl_penalty"):
        assert tag in tags


class OpaqueGaussian(Distribution):
    """A user-defined distribution that PPOKL has no analytic KL for: it falls back to the sampled KL."""

    def __init__(self, action_dim: int):
        super().__init__()
        self.inner = DiagGaussianDistribution(action_dim)

    def proba_distribution_net(self, latent_dim, log_std_init=0.0):
        return self.inner.proba_distribution_net(latent_dim, log_std_init)

    def proba_distribution(self, mean_actions, log_std):
        self.inner.proba_distribution(mean_actions, log_std)
        self.distribution = self.inner.distribution
        return self

    def log_prob(self, actions):
        return self.inner.log_prob(actions)

    def entropy(self):
        return self.inner.entropy()

    def sample(self):
        return self.inner.sample()

    def mode(self):
        return self.inner.mode()

    def actions_from_params(self, mean_actions, log_std, deterministic=False):
        self.proba_distribution(mean_actions, log_std)
        return self.get_actions(deterministic=deterministic)

    def log_prob_from_params(self, mean_actions, log_std):
        actions = self.actions_from_params(mean_actions, log_std)
        return actions, self.log_prob(actions)


class OpaqueGaussianPolicy(ActorCriticPolicy):
    def _build(self, lr_schedule) -> None:
        super()._build(lr_schedule)  # builds the Gaussian head (action_net, log_std)
        self.action_dist = OpaqueGaussian(int(np.prod(self.action_space.shape)))

    def _get_action_dist_from_latent(self, latent_pi):
        return self.action_dist.proba_distribution(self.action_net(latent_pi), self.log_std)


def test_sampled_kl_fallback_for_distributions_without_analytic_kl():
    model = PPOKL(OpaqueGaussianPolicy, "Pendulum-v1", n_steps=64, batch_size=32, n_epochs=2, seed=0)
    values = _learn_and_check(model)
    assert model.rollout_buffer.old_dist_params is None  # nothing to snapshot: the rollout's log-probs suffice
    assert values["train/kl"] > 0


def test_custom_rollout_buffer_class_with_the_mixin():
    model = PPOKL("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=32, rollout_buffer_class=KLRolloutBuffer, seed=0)
    _learn_and_check(model, 128)


def test_gymnasium_env_instance_and_string_id():
    PPOKL("MlpPolicy", gym.make("CartPole-v1"), n_steps=64, batch_size=32, seed=0).learn(64)
    PPOKL("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=32, seed=0).learn(64)


def test_policy_aliases_module():
    from sb3_ppo_kl.ppo_kl import CnnPolicy, MlpPolicy, MultiInputPolicy

    assert PPOKL.policy_aliases == {"MlpPolicy": MlpPolicy, "CnnPolicy": CnnPolicy, "MultiInputPolicy": MultiInputPolicy}
    assert isinstance(spaces.Box(0, 1), PPOKL.supported_action_spaces)


@pytest.mark.parametrize(
    "env_id, module", [("HalfCheetah-v5", "mujoco"), ("LunarLanderContinuous-v3", "Box2D"), ("LunarLander-v3", "Box2D")]
)
def test_mujoco_and_box2d_environments(env_id, module):
    pytest.importorskip(module)
    model = PPOKL(
        "MlpPolicy",
        env_id,
        n_steps=128,
        batch_size=64,
        n_epochs=2,
        policy_kwargs=dict(net_arch=dict(pi=[64, 64], vf=[64, 64])),
        seed=0,
    )
    values = _learn_and_check(model, 256)
    assert values["train/kl"] > 0
