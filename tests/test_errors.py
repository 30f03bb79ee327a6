"""Bad input is rejected at construction; non-finite values never reach the parameters."""

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces

from sb3_ppo_kl import PPOKL, NonFiniteError


class TupleActionEnv(gym.Env):
    observation_space = spaces.Box(-1, 1, (2,))
    action_space = spaces.Tuple((spaces.Discrete(2), spaces.Discrete(3)))

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action):
        return self.observation_space.sample(), 0.0, False, False, {}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(kl_target=0.0), "`kl_target` must be a finite number > 0"),
        (dict(kl_target=-1.0), "`kl_target` must be a finite number > 0"),
        (dict(kl_coef=-0.5), "`kl_coef` must be a finite number >= 0"),
        (dict(kl_tolerance=1.0), "`kl_tolerance` must be a finite number > 1"),
        (dict(kl_adapt_factor=0.5), "`kl_adapt_factor` must be a finite number > 1"),
        (dict(kl_coef_bounds=(2.0, 1.0)), r"`kl_coef_bounds` must be a pair \(low, high\) with 0 <= low <= high"),
        (dict(kl_coef_bounds=(-1.0, 1.0)), r"`kl_coef_bounds` must be a pair"),
        (dict(kl_coef=5.0, kl_coef_bounds=(0.1, 2.0)), "`kl_coef` .* must lie within kl_coef_bounds"),
        (dict(n_steps=1), r"`n_steps \* n_envs` must be > 1 when normalize_advantage=True, got n_steps=1 and n_envs=1"),
        (dict(batch_size=1), "`batch_size` must be an integer >= 2 when normalize_advantage=True"),
        (dict(n_steps=0), "`n_steps` must be an integer >= 1"),
        (dict(n_epochs=0), "`n_epochs` must be an integer >= 1"),
        (dict(clip_range=0.0), "`clip_range` must be > 0"),
        (dict(target_kl=-0.1), "`target_kl` must be > 0"),
        (dict(kl_target=lambda progress: 0.01 * (1 - progress)), "`kl_target` as a schedule must be finite, > 0 at the start"),
    ],
)
def test_bad_hyperparameters_raise_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PPOKL("MlpPolicy", "CartPole-v1", **kwargs)


def test_unsupported_action_space():
    with pytest.raises(ValueError, match="does not support the action space Tuple"):
        PPOKL("MlpPolicy", TupleActionEnv())


def test_rollout_buffer_class_without_the_mixin():
    from stable_baselines3.common.buffers import RolloutBuffer

    with pytest.raises(ValueError, match="rollout_buffer_class"):
        PPOKL("MlpPolicy", "CartPole-v1", rollout_buffer_class=RolloutBuffer)


class NaNAfter(gym.Wrapper):
    """Emits a NaN reward or observation from step `after` on (a broken simulator or reward function)."""

    def __init__(self, env, after: int, what: str):
        super().__init__(env)
        self.after, self.what, self.steps = after, what, 0

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.steps += 1
        if self.steps >= self.after:
            if self.what == "reward":
                reward = float("nan")
            else:
                obs = np.full_like(obs, np.nan)
        return obs, reward, terminated, truncated, info


@pytest.mark.parametrize(
    "what, error, message",
    [
        # Our guard: the NaN reaches the advantages, the loss is non-finite, the step is refused.
        # NonFiniteError is a FloatingPointError and a ValueError (RL Zoo's tuner prunes on ValueError).
        ("reward", NonFiniteError, "non-finite policy loss .*value loss.* after 256 timesteps .*epoch 1/2, minibatch 1"),
        # A NaN observation is already refused by torch while the rollout is collected, before any update.
        ("observation", ValueError, "invalid values"),
    ],
)
def test_non_finite_values_stop_training_and_leave_a_saveable_model(tmp_path, what, error, message):
    env = NaNAfter(gym.make("Pendulum-v1"), after=200, what=what)
    model = PPOKL("MlpPolicy", env, n_steps=128, batch_size=32, n_epochs=2, seed=0)
    with pytest.raises(error, match=message):
        model.learn(1024)
    for param in model.policy.parameters():
        assert th.isfinite(param).all()
    assert np.isfinite(model.kl_coef)
    model.save(tmp_path / "last_good")
    loaded = PPOKL.load(tmp_path / "last_good")
    for a, b in zip(model.policy.parameters(), loaded.policy.parameters()):
        assert th.equal(a, b)


def test_non_finite_kl_is_named(rollout):
    """A policy whose std overflowed gives a non-finite KL: the step is refused and the KL is named."""
    model = PPOKL("MlpPolicy", "Pendulum-v1", n_steps=64, batch_size=64, n_epochs=1, seed=0)
    rollout(model)
    with th.no_grad():
        model.policy.log_std.fill_(100.0)  # std = exp(100) overflows to inf in float32: the KL is inf/inf
    before = [p.clone() for p in model.policy.parameters()]
    with pytest.raises(NonFiniteError, match="non-finite .*KL divergence"):
        model.train()
    for a, b in zip(before, model.policy.parameters()):
        assert th.equal(a, b)


def test_non_finite_error_is_both_floating_point_and_value_error():
    assert issubclass(NonFiniteError, FloatingPointError) and issubclass(NonFiniteError, ValueError)
