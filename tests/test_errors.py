"""Bad input is rejected at construction; non-finite values from the env or an update never reach the parameters."""

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from sb3_contrib.common.wrappers import ActionMasker
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.envs import SimpleMultiObsEnv
from stable_baselines3.common.vec_env import DummyVecEnv
from torch.distributions import Distribution

from sb3_ppo_kl import PPOKL, MaskablePPOKL, NonFiniteError, RecurrentPPOKL
from sb3_ppo_kl.common.finite import _all_finite, _non_finite


class TupleActionEnv(gym.Env):
    observation_space = spaces.Box(-1, 1, (2,))
    action_space = spaces.Tuple((spaces.Discrete(2), spaces.Discrete(3)))

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action):
        return self.observation_space.sample(), 0.0, False, False, {}


# One case per line: (constructor arguments, the error, what its message must say). A new argument joins in one line.
# A wrong type is a TypeError, a wrong value a ValueError; both name the argument and what it accepts.
@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(kl_target=0.0), ValueError, "`kl_target` must be a finite number > 0"),
        (dict(kl_target=-1.0), ValueError, "`kl_target` must be a finite number > 0"),
        (dict(kl_target=float("nan")), ValueError, "`kl_target` must be a finite number > 0"),
        (dict(kl_target="0.01"), TypeError, r"`kl_target` must be a finite number > 0 or a schedule .*got '0.01' \(str\)"),
        (dict(kl_target=True), TypeError, r"`kl_target` must be a finite number > 0 .*got True \(bool\)"),
        (dict(kl_target=None), TypeError, r"`kl_target` must be a finite number > 0 .*got None"),
        (dict(kl_target=lambda progress: 0.01 * (1 - progress)), ValueError, "`kl_target` as a schedule must be finite, > 0"),
        (dict(kl_target=lambda progress: "0.01"), ValueError, "`kl_target` as a schedule must be finite"),
        (dict(kl_coef=-0.5), ValueError, "`kl_coef` must be a finite number >= 0"),
        (dict(kl_coef="1.0"), TypeError, r"`kl_coef` must be a finite number >= 0, got '1.0' \(str\)"),
        (dict(kl_coef=True), TypeError, r"`kl_coef` must be a finite number >= 0, got True \(bool\)"),
        (dict(kl_coef=float("inf"), adaptive_kl=False), ValueError, "`kl_coef` must be a finite number >= 0"),
        (dict(kl_coef=0.0), ValueError, "`kl_coef` .* must lie within kl_coef_bounds.* adaptive beta of 0 would stay 0"),
        (dict(kl_coef=5.0, kl_coef_bounds=(0.1, 2.0)), ValueError, "`kl_coef` .* must lie within kl_coef_bounds"),
        (dict(adaptive_kl="yes"), TypeError, r"`adaptive_kl` must be a bool \(True or False\), got 'yes' \(str\)"),
        (dict(adaptive_kl="False"), TypeError, "`adaptive_kl` must be a bool"),
        (dict(adaptive_kl=1), TypeError, r"`adaptive_kl` must be a bool \(True or False\), got 1 \(int\)"),
        (dict(adaptive_kl=None), TypeError, "`adaptive_kl` must be a bool"),
        (dict(kl_tolerance=1.0), ValueError, "`kl_tolerance` must be a finite number > 1"),
        (dict(kl_tolerance="1.5"), TypeError, "`kl_tolerance` must be a finite number > 1, got '1.5'"),
        (dict(kl_adapt_factor=0.5), ValueError, "`kl_adapt_factor` must be a finite number > 1"),
        (dict(kl_adapt_factor=None), TypeError, "`kl_adapt_factor` must be a finite number > 1, got None"),
        (dict(kl_coef_bounds=(2.0, 1.0)), ValueError, r"`kl_coef_bounds` must be a pair \(low, high\) of real numbers"),
        (dict(kl_coef_bounds=(-1.0, 1.0)), ValueError, r"`kl_coef_bounds` must be a pair .* with 0 <= low <= high"),
        (dict(kl_coef_bounds=(0.1,)), ValueError, r"`kl_coef_bounds` must be a pair"),
        (dict(kl_coef_bounds=(0.1, float("nan"))), ValueError, r"`kl_coef_bounds` must be a pair"),
        (dict(kl_coef_bounds="0.1, 10"), TypeError, r"`kl_coef_bounds` must be a pair \(low, high\) of real numbers"),
        (dict(kl_coef_bounds=0.1), TypeError, r"`kl_coef_bounds` must be a pair \(low, high\) of real numbers"),
        (dict(kl_coef_bounds=("0.1", "10")), TypeError, r"`kl_coef_bounds` must be a pair \(low, high\) of real numbers"),
        (dict(kl_coef_bounds=(True, 10)), TypeError, r"`kl_coef_bounds` must be a pair \(low, high\) of real numbers"),
        # an adaptive beta needs a lower bound above 0: a beta of 0 would stay 0 (0 * kl_adapt_factor is 0)
        (dict(kl_coef_bounds=(0, 1)), ValueError, "`kl_coef_bounds` must have low > 0 when the coefficient adapts"),
        (dict(kl_coef=0.0, kl_coef_bounds=(0.0, 1.0)), ValueError, "`kl_coef_bounds` must have low > 0"),
        (dict(n_steps=1), ValueError, r"`n_steps \* n_envs` must be > 1 when normalize_advantage=True, got n_steps=1"),
        (dict(batch_size=1), ValueError, "`batch_size` must be an integer >= 2 when normalize_advantage=True"),
        (dict(n_steps=0), ValueError, "`n_steps` must be an integer >= 1"),
        (dict(n_epochs=0), ValueError, "`n_epochs` must be an integer >= 1"),
        (dict(clip_range=0.0), ValueError, r"`clip_range` must be None \(off\), a finite number > 0 or a schedule"),
        (dict(target_kl=-0.1), ValueError, r"`target_kl` must be None \(off\), a finite number > 0, got -0.1"),
        # a wrong type is a TypeError naming the argument, before SB3's buffer fails on it without a name
        (dict(n_steps=True), TypeError, r"`n_steps` must be an integer >= 1, got True \(bool\)"),
        (dict(n_steps=2048.0), TypeError, r"`n_steps` must be an integer >= 1, got 2048.0 \(float\)"),
        (dict(batch_size="64"), TypeError, r"`batch_size` must be an integer >= 2 when normalize_advantage=True, got '64'"),
        (dict(n_epochs=None), TypeError, r"`n_epochs` must be an integer >= 1, got None \(NoneType\)"),
        (dict(normalize_advantage="no"), TypeError, r"`normalize_advantage` must be a bool"),
        (
            dict(clip_range="0.2"),
            TypeError,
            r"`clip_range` must be None \(off\), a finite number > 0 or a schedule, got '0.2'",
        ),
        (dict(target_kl=float("nan")), ValueError, "`target_kl` must be None"),
    ],
)
def test_bad_hyperparameters_raise_an_error_naming_them(kwargs, error, message):
    with pytest.raises(error, match=message):
        PPOKL("MlpPolicy", "CartPole-v1", **kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(kl_coef=0.0, adaptive_kl=False),  # no penalty at all (benchmarks.run's no-clip-no-penalty)
        dict(kl_coef=0.0, adaptive_kl=False, kl_coef_bounds=(0.0, 1.0)),  # a fixed beta ignores its bounds
        dict(kl_coef=np.float32(0.5), kl_target=np.float64(0.02), adaptive_kl=np.bool_(1), n_epochs=np.int8(2)),
        dict(kl_coef=2, kl_target=1, kl_tolerance=2, kl_adapt_factor=3, kl_coef_bounds=[1, 10]),  # ints are numbers
    ],
)
def test_good_hyperparameters_of_every_numeric_type_are_accepted(kwargs):
    model = PPOKL("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=32, **kwargs)
    assert model.kl_coef == float(kwargs["kl_coef"])
    assert isinstance(model.kl_coef, float) and isinstance(model.kl_controller.adaptive_kl, bool)


def test_kl_coef_setter_names_the_parameter():
    model = PPOKL("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=32)
    with pytest.raises(TypeError, match="`kl_coef` must be a finite number >= 0, got '2'"):
        model.kl_coef = "2"
    with pytest.raises(ValueError, match="`kl_coef` must be a finite number >= 0, got -1"):
        model.kl_coef = -1
    model.kl_coef = 2
    assert model.kl_coef == 2.0


def test_unsupported_action_space():
    with pytest.raises(ValueError, match="does not support the action space Tuple"):
        PPOKL("MlpPolicy", TupleActionEnv())


def test_rollout_buffer_class_without_the_mixin():
    from stable_baselines3.common.buffers import RolloutBuffer

    with pytest.raises(ValueError, match="rollout_buffer_class"):
        PPOKL("MlpPolicy", "CartPole-v1", rollout_buffer_class=RolloutBuffer)


class NaNAt(gym.Wrapper):
    """
    Returns a NaN at its `at`-th step (1-based) in the observation, the reward or the terminal observation (the
    episode is then truncated there), or in the observation of its first reset: a broken simulator or reward function.
    """

    def __init__(self, env, at: int, what: str, key: str | None = None):
        super().__init__(env)
        self.at, self.what, self.key, self.steps, self.resets = at, what, key, 0, 0

    def _poison(self, obs):
        if self.key is not None:  # one key of a Dict observation
            return {**obs, self.key: np.full_like(obs[self.key], np.nan)}
        obs = np.array(obs)
        obs[1] = np.nan
        return obs

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self.resets += 1
        return (self._poison(obs) if self.what == "reset observation" and self.resets == 1 else obs), info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.steps += 1
        if self.steps == self.at:
            if self.what == "reward":
                reward = float("nan")
            elif self.what in ("observation", "terminal observation"):
                obs = self._poison(obs)
                truncated = truncated or self.what == "terminal observation"
        return obs, reward, terminated, truncated, info


def _two_envs(env_id: str, at: int, what: str, **kwargs) -> DummyVecEnv:
    """Two envs, the second (env 1) returning a NaN at its `at`-th step."""
    return DummyVecEnv([lambda: gym.make(env_id), lambda: NaNAt(gym.make(env_id), at, what, **kwargs)])


def _assert_saveable_with_finite_parameters(model, path) -> None:
    for param in model.policy.parameters():
        assert th.isfinite(param).all()
    assert np.isfinite(model.kl_coef)
    model.save(path)
    loaded = type(model).load(path)
    for a, b in zip(model.policy.parameters(), loaded.policy.parameters()):
        assert th.equal(a, b)


@pytest.mark.parametrize("what", ["observation", "reward", "terminal observation"])
def test_a_non_finite_value_from_the_env_is_named_before_it_enters_the_rollout(tmp_path, what):
    # env 1 of 2 returns the NaN at its 45th step: after one update (32 steps per rollout), 12 steps into the next
    model = PPOKL("MlpPolicy", _two_envs("Pendulum-v1", 45, what), n_steps=32, batch_size=64, n_epochs=1, seed=0)
    value = "nan at index \\(1,\\)" if "observation" in what else "nan"
    message = rf"PPOKL: env 1 \(of 2\) returned a non-finite {what} \({value}\), at step 45 of this learn\(\) call"
    message += r" \(num_timesteps=90\)"
    with pytest.raises(NonFiniteError, match=message):
        model.learn(256)
    buffer = model.rollout_buffer
    assert buffer.pos == 12  # steps 33 to 44: the 45th never entered the buffer
    assert np.isfinite(buffer.observations[: buffer.pos]).all() and np.isfinite(buffer.rewards[: buffer.pos]).all()
    _assert_saveable_with_finite_parameters(model, tmp_path / "last_good")


def test_a_non_finite_first_observation_is_named(tmp_path):
    model = PPOKL("MlpPolicy", _two_envs("Pendulum-v1", 0, "reset observation"), n_steps=32, batch_size=64, seed=0)
    message = r"env 1 \(of 2\) returned a non-finite observation \(nan at index \(1,\)\), in the first observation of learn"
    with pytest.raises(NonFiniteError, match=message):
        model.learn(64)
    _assert_saveable_with_finite_parameters(model, tmp_path / "model")


def test_a_non_finite_dict_observation_names_its_key():
    env = DummyVecEnv([SimpleMultiObsEnv, lambda: NaNAt(SimpleMultiObsEnv(), 7, "observation", key="vec")])
    model = PPOKL("MultiInputPolicy", env, n_steps=16, batch_size=32, seed=0)
    with pytest.raises(
        NonFiniteError, match=r"env 1 \(of 2\) returned a non-finite observation\['vec'\] \(nan at index \(0,\)\), at step 7"
    ):
        model.learn(64)


def _variant(algo, make_envs=(lambda: gym.make("CartPole-v1"),), n_steps=32, batch_size=32, n_epochs=1, **kwargs):
    """PPOKL or a variant with its MLP policy on these envs (for MaskablePPOKL with every action of CartPole valid)."""
    if algo is MaskablePPOKL:
        make_envs = [lambda make=make: ActionMasker(make(), lambda env: np.ones(2, dtype=bool)) for make in make_envs]
    policy = "MlpLstmPolicy" if algo is RecurrentPPOKL else "MlpPolicy"
    venv = DummyVecEnv(list(make_envs))
    return algo(policy, venv, n_steps=n_steps, batch_size=batch_size, n_epochs=n_epochs, seed=0, **kwargs)


@pytest.mark.parametrize("algo", [MaskablePPOKL, RecurrentPPOKL])
def test_the_variants_name_a_non_finite_observation(tmp_path, algo):
    def make(at):
        return lambda: NaNAt(gym.make("CartPole-v1"), at, "observation")

    model = _variant(algo, [make(0), make(20)], n_steps=16)
    message = rf"{algo.__name__}: env 1 \(of 2\) returned a non-finite observation \(nan at index \(1,\)\), at step 20 of"
    with pytest.raises(NonFiniteError, match=message):
        model.learn(128)
    _assert_saveable_with_finite_parameters(model, tmp_path / "model")


@pytest.mark.parametrize("algo", [PPOKL, RecurrentPPOKL])
def test_a_non_finite_action_is_named_as_the_policy_s(algo):
    """With torch's checks skipped, a NaN the policy makes itself is refused after its step, naming the policy."""
    model = _variant(algo, [lambda: gym.make("Pendulum-v1")] * 2, batch_size=64, n_epochs=10)
    model.learn(64)
    with th.no_grad():  # parameters made non-finite from outside: training itself refuses a non-finite step
        model.policy.action_net.bias[0] = float("nan")
    message = (
        r"the policy chose a non-finite action \(nan at index \(0,\)\) for env 0 \(of 2\); .* for env 1 \(of 2\), at step 1"
    )
    with pytest.raises(NonFiniteError, match=message):
        model.learn(64, reset_num_timesteps=False)
    assert model.rollout_buffer.pos == 0  # the step never entered the buffer


def test_the_check_can_be_turned_off():
    """Without it, a NaN observation reaches the policy, where torch refuses it (SB3's own behaviour)."""
    model = PPOKL("MlpPolicy", _two_envs("Pendulum-v1", 5, "observation"), n_steps=32, batch_size=64, seed=0)
    model.check_finite_env = False
    with pytest.raises(ValueError, match="Expected parameter loc") as error:
        model.learn(64)
    assert not isinstance(error.value, NonFiniteError)


class _RecordValidation(BaseCallback):
    """Whether torch validated distribution arguments at each step of learn()."""

    def __init__(self):
        super().__init__()
        self.seen = set()

    def _on_step(self) -> bool:
        self.seen.add(Distribution._validate_args)
        return True


@pytest.mark.parametrize("algo", [PPOKL, MaskablePPOKL, RecurrentPPOKL])
def test_torch_validation_is_skipped_during_learn_while_the_check_is_on(algo):
    assert Distribution._validate_args  # torch's default outside python -O
    model, recorder = _variant(algo), _RecordValidation()
    model.learn(64, callback=recorder)
    assert recorder.seen == {False}
    assert Distribution._validate_args  # restored
    model.check_finite_env, recorder = False, _RecordValidation()
    model.learn(64, callback=recorder)
    assert recorder.seen == {True}


def test_torch_validation_is_restored_when_learn_raises_and_a_user_setting_is_kept():
    with pytest.raises(NonFiniteError):
        PPOKL("MlpPolicy", _two_envs("Pendulum-v1", 5, "reward"), n_steps=32, batch_size=64, seed=0).learn(64)
    assert Distribution._validate_args
    Distribution.set_default_validate_args(False)  # a user's own choice, with the check off, is left alone
    try:
        model, recorder = _variant(PPOKL), _RecordValidation()
        model.check_finite_env = False
        model.learn(64, callback=recorder)
        assert recorder.seen == {False} and not Distribution._validate_args
    finally:
        Distribution.set_default_validate_args(True)


@pytest.mark.parametrize("algo", [PPOKL, MaskablePPOKL, RecurrentPPOKL])
def test_the_check_and_skipped_validation_change_no_number(algo):
    """With the check (and torch's validation skipped) or without (torch's validation on): the same parameters."""
    checked = _variant(algo).learn(96)  # each built right before its learn(): both sample from torch's global RNG
    unchecked = _variant(algo)
    unchecked.check_finite_env = False
    unchecked.learn(96)
    for a, b in zip(checked.policy.parameters(), unchecked.policy.parameters(), strict=True):
        assert th.equal(a, b)
    assert checked.kl_coef == unchecked.kl_coef


def test_finite_values_whose_sum_overflows_are_not_reported():
    # the per-step check sums the values (NaN and inf propagate); an overflowing sum is sorted out exactly
    big = np.full((2, 300), np.finfo(np.float32).max, dtype=np.float32)
    with pytest.warns(RuntimeWarning, match="overflow"):
        assert not _all_finite(big)
    assert _non_finite(big, "observation", per_env=True) == []
    assert _all_finite(np.full((2, 100), 60000, dtype=np.float16))  # float16 adds up in float32
    assert _all_finite(np.full((2, 3), 60000, dtype=np.float16))  # a small array adds up in Python floats
    for size in (3, 300):  # summed in Python, and by NumPy
        values = np.zeros((2, size), dtype=np.float32)
        assert _all_finite(values)
        values[1, -1] = np.nan
        assert not _all_finite(values) and _non_finite(values, "reward", per_env=True)[0][0] == 1
    big[1, 2] = -np.inf
    assert _non_finite(big, "observation", per_env=True) == [(1, "a non-finite observation (-inf at index (2,))")]


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


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--env", "NotAnEnv-v0"], "error: --env NotAnEnv-v0: Environment `NotAnEnv` doesn't exist."),
        (["--param", "kl_target=abc"], "error: --param: `kl_target` must be a finite number > 0"),
        (["--param", "nonsense=1"], "error: --param: PPOKL.__init__() got an unexpected keyword argument 'nonsense'"),
    ],
)
def test_command_line_reports_a_bad_argument_in_one_line(argv, message, capsys):
    from sb3_ppo_kl.__main__ import main

    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--timesteps", "8", "--no-progress-bar"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.splitlines()  # the error on one line, without argparse's usage above it
    assert len(lines) == 1 and lines[0].startswith("python -m sb3_ppo_kl: error:"), err
    assert message in lines[0]
