"""Issue 32: a choice of beta's controller by class, LogProportionalKLController, and the stop inside the update (kl_stop)."""

import math

import numpy as np
import pytest
import torch as th
from sb3_contrib.common.envs import InvalidActionEnvDiscrete
from stable_baselines3.common.env_util import make_vec_env

from sb3_ppo_kl import PPOKL, KLCoefController, LogProportionalKLController, MaskablePPOKL, RecurrentPPOKL

# ---------------------------------------------------------------------------------------------------------------
# LogProportionalKLController's rule, against values computed by hand


@pytest.mark.parametrize(
    "gain, kl, expected",
    [
        (0.2, 0.01, 1.0),  # d == target: unchanged
        (0.2, 0.04, 4**0.2),  # 1.3195...
        (0.2, 0.0025, 0.25**0.2),  # 0.7578...
        (0.3, 0.01, 1.0),
        (0.3, 0.04, 4**0.3),  # 1.5157...
        (0.3, 0.0025, 0.25**0.3),  # 0.6597...
    ],
)
def test_log_proportional_rule(gain, kl, expected):
    controller = LogProportionalKLController(kl_coef=1.0, kl_target=0.01, gain=gain)
    assert controller.update(kl) == pytest.approx(expected, rel=1e-12)
    assert controller.kl_coef == pytest.approx(expected, rel=1e-12)


def test_log_proportional_default_gain_and_steps_from_the_current_beta():
    controller = LogProportionalKLController(kl_coef=3.0)
    assert controller.gain == 0.2 and controller.kl_target == 0.01
    assert controller.update(0.04) == pytest.approx(3.0 * 4**0.2)
    assert controller.update(0.04) == pytest.approx(3.0 * 4**0.4)


def test_log_proportional_step_is_clamped_to_the_adapt_factor():
    # gain 1: the factor would be 4 or 1/4; it is clamped to [1 / kl_adapt_factor, kl_adapt_factor]
    controller = LogProportionalKLController(kl_coef=1.0, kl_target=0.01, gain=1.0)
    assert controller.update(0.04) == pytest.approx(2.0)
    assert controller.update(0.0025) == pytest.approx(1.0)
    controller = LogProportionalKLController(kl_coef=1.0, kl_target=0.01, gain=1.0, kl_adapt_factor=3.0)
    assert controller.update(0.04) == pytest.approx(3.0)
    assert controller.update(0.0025) == pytest.approx(1.0)
    # d = 0 (log d = -inf) and a target annealed to 0 (d / 0 = inf) are each one full step
    assert LogProportionalKLController(kl_coef=1.0).update(0.0) == pytest.approx(0.5)
    annealed = LogProportionalKLController(kl_coef=1.0, kl_target=lambda progress: 0.01 * progress)
    assert annealed.update(0.01, progress_remaining=0.0) == pytest.approx(2.0)
    assert annealed.update(0.0, progress_remaining=0.0) == pytest.approx(2.0)  # 0 against 0: on target


def test_log_proportional_beta_is_clamped_to_kl_coef_bounds():
    controller = LogProportionalKLController(kl_coef=1.0, kl_target=0.01, kl_coef_bounds=(0.6, 1.2))
    assert controller.update(0.04) == 1.2  # 1.3195 clamped
    assert controller.update(0.0025) == pytest.approx(1.2 * 0.25**0.2)  # 0.9094
    assert controller.update(0.0001) == 0.6  # 0.9094 * 0.3981 = 0.362, clamped


def test_log_proportional_tolerance_does_not_gate_the_step():
    controller = LogProportionalKLController(kl_coef=1.0, kl_target=0.01)
    assert controller.update(0.011) == pytest.approx(1.1**0.2)  # inside the band [0.0067, 0.015]: it moves anyway
    assert KLCoefController(kl_coef=1.0, kl_target=0.01).update(0.011) == 1.0  # the paper's rule does not


def test_log_proportional_fixed_beta_never_changes():
    controller = LogProportionalKLController(kl_coef=2.0, adaptive_kl=False)
    for kl in (0.0, 0.0025, 0.04, 10.0):
        assert controller.update(kl) == 2.0


@pytest.mark.parametrize("controller_class", [KLCoefController, LogProportionalKLController])
def test_a_stopped_update_never_raises_beta(controller_class):
    assert controller_class(kl_coef=1.0, kl_target=0.01).update(0.04, stopped=True) == 1.0
    lowered = controller_class(kl_coef=1.0, kl_target=0.01).update(0.0025)
    assert controller_class(kl_coef=1.0, kl_target=0.01).update(0.0025, stopped=True) == lowered < 1.0


def test_controller_repr_names_its_class_and_arguments():
    assert repr(LogProportionalKLController(gain=0.3)) == (
        "LogProportionalKLController(kl_coef=1.0, kl_target=0.01, adaptive_kl=True, kl_tolerance=1.5, "
        "kl_adapt_factor=2.0, kl_coef_bounds=(0.0001, 10000.0), gain=0.3)"
    )


@pytest.mark.parametrize(
    "gain, error",
    [("0.2", TypeError), (True, TypeError), (None, TypeError), (0, ValueError), (-0.1, ValueError), (math.nan, ValueError)],
)
def test_gain_is_checked_by_name(gain, error):
    with pytest.raises(error, match="`gain` must be a finite number > 0"):
        LogProportionalKLController(gain=gain)
    with pytest.raises(error, match="`gain` must be a finite number > 0"):
        PPOKL(
            "MlpPolicy", "Pendulum-v1", kl_controller_class=LogProportionalKLController, kl_controller_kwargs=dict(gain=gain)
        )


# ---------------------------------------------------------------------------------------------------------------
# kl_controller_class / kl_controller_kwargs


class HalvingController(KLCoefController):
    """A user's own rule: halve beta after every update."""

    def adapt(self, kl: float, target: float) -> float:
        return self.kl_coef / 2


def test_the_controller_is_built_from_the_class_and_the_algorithms_arguments():
    model = PPOKL(
        "MlpPolicy",
        "Pendulum-v1",
        kl_coef=0.5,
        kl_target=0.02,
        kl_tolerance=1.3,
        kl_adapt_factor=1.5,
        kl_coef_bounds=(0.01, 100.0),
        kl_controller_class=LogProportionalKLController,
        kl_controller_kwargs=dict(gain=0.35),
    )
    assert type(model.kl_controller) is LogProportionalKLController
    assert vars(model.kl_controller) == dict(
        kl_coef=0.5,
        kl_target=0.02,
        adaptive_kl=True,
        kl_tolerance=1.3,
        kl_adapt_factor=1.5,
        kl_coef_bounds=(0.01, 100.0),
        gain=0.35,
    )
    assert type(PPOKL("MlpPolicy", "Pendulum-v1").kl_controller) is KLCoefController  # the default: the paper's rule


def test_the_packages_controllers_can_be_named():
    """Where a class cannot be written (a zoo yml file, the command line), its name does; the model keeps the class."""
    model = PPOKL(
        "MlpPolicy", "Pendulum-v1", kl_controller_class="LogProportionalKLController", kl_controller_kwargs=dict(gain=0.3)
    )
    assert type(model.kl_controller) is LogProportionalKLController and model.kl_controller.gain == 0.3
    assert type(PPOKL("MlpPolicy", "Pendulum-v1", kl_controller_class="KLCoefController").kl_controller) is KLCoefController


def test_a_users_controller_drives_beta_in_training():
    model = PPOKL(
        "MlpPolicy", "Pendulum-v1", n_steps=64, batch_size=32, n_epochs=1, kl_controller_class=HalvingController, seed=0
    )
    model.learn(3 * 64)
    assert model.kl_coef == 1 / 8 == model.logger.name_to_value["train/kl_coef"]


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(kl_controller_class=dict), TypeError, "`kl_controller_class` must be a subclass of sb3_ppo_kl.KLCoefController"),
        (
            dict(kl_controller_class="LogProportional"),
            TypeError,
            (
                "`kl_controller_class` must be a subclass of sb3_ppo_kl.KLCoefController or one of the names "
                "'KLCoefController', 'LogProportionalKLController', got 'LogProportional'"
            ),
        ),
        (dict(kl_controller_class=LogProportionalKLController()), TypeError, "`kl_controller_class` must be a subclass"),
        (dict(kl_controller_class=None), TypeError, "`kl_controller_class` must be a subclass"),
        (dict(kl_controller_kwargs=[("gain", 0.2)]), TypeError, "`kl_controller_kwargs` must be None or a dict"),
        (dict(kl_controller_kwargs="gain=0.2"), TypeError, "`kl_controller_kwargs` must be None or a dict"),
        (dict(kl_controller_kwargs=dict(kl_target=0.02)), ValueError, "`kl_controller_kwargs` must not contain kl_target"),
        (
            dict(kl_controller_kwargs=dict(kl_coef=2.0, kl_tolerance=2.0)),
            ValueError,
            "must not contain kl_coef, kl_tolerance: give them as the algorithm's own arguments",
        ),
        (dict(kl_controller_kwargs=dict(gain=0.2)), TypeError, "`kl_controller_kwargs` .* do not fit KLCoefController's"),
        (
            dict(kl_controller_class=LogProportionalKLController, kl_controller_kwargs=dict(gian=0.2)),
            TypeError,
            "`kl_controller_kwargs` .* do not fit LogProportionalKLController's arguments: .*gian",
        ),
        (dict(kl_stop="1.0"), TypeError, r"`kl_stop` must be None or a finite number > 0 \(a multiple of kl_target\)"),
        (dict(kl_stop=True), TypeError, "`kl_stop` must be None or a finite number > 0"),
        (dict(kl_stop=0), ValueError, "`kl_stop` must be None or a finite number > 0"),
        (dict(kl_stop=-1.0), ValueError, "`kl_stop` must be None or a finite number > 0"),
        (dict(kl_stop=math.inf), ValueError, "`kl_stop` must be None or a finite number > 0"),
        (dict(kl_stop=1.0, kl_stop_interval=0), ValueError, "`kl_stop_interval` must be an integer >= 1"),
        (dict(kl_stop=1.0, kl_stop_interval=2.0), TypeError, "`kl_stop_interval` must be an integer >= 1"),
        (dict(kl_stop=1.0, kl_stop_interval=None), TypeError, "`kl_stop_interval` must be an integer >= 1"),
    ],
)
def test_bad_controller_and_stop_arguments_are_refused_by_name(kwargs, error, message):
    with pytest.raises(error, match=message):
        PPOKL("MlpPolicy", "Pendulum-v1", **kwargs)


# ---------------------------------------------------------------------------------------------------------------
# kl_stop: a hand-made policy change whose d is known in closed form


class ShiftLogStd(th.optim.Optimizer):
    """
    A hand-made policy change: each step adds ``shift`` to the parameters it holds (the policy's log-std) and counts
    its steps in its state. For a Gaussian policy whose std alone moves by ``x`` in log, the KL per state and action
    dimension is ``x + (exp(-2 x) - 1) / 2`` (:func:`kl_of_shift`).
    """

    def __init__(self, params, lr: float = 0.0, shift: float = 0.03):
        super().__init__(params, dict(lr=lr, shift=shift))

    @th.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:  # as torch's optimizers: a parameter without a gradient stays
                    continue
                param.add_(group["shift"])
                self.state[param]["steps"] = self.state[param].get("steps", 0) + 1


def kl_of_shift(x: float) -> float:
    return x + (math.exp(-2 * x) - 1) / 2


def _shifting(algo, policy: str, shift: float, n_epochs: int = 2, **kwargs):
    """A model on Pendulum (one action dimension) whose every step moves only the log-std, by ``shift``."""
    model = algo(
        policy, make_vec_env("Pendulum-v1", n_envs=1, seed=0), n_steps=64, batch_size=16, n_epochs=n_epochs, seed=0, **kwargs
    )
    model.policy.optimizer = ShiftLogStd([model.policy.log_std], shift=shift)
    return model


def _train_one_rollout(model, rollout):
    rollout(model)
    log_std = model.policy.log_std.item()
    model.train()
    return model.logger.name_to_value, model.policy.log_std.item() - log_std


@pytest.mark.parametrize("algo, policy", [(PPOKL, "MlpPolicy"), (RecurrentPPOKL, "MlpLstmPolicy")])
@pytest.mark.parametrize(
    "interval, steps, kept",
    [
        (1, 4, 4),  # checks after 1, 2, 3, 4 steps: d = 0.0009, 0.0035, 0.0076, 0.0133; the first >= 0.01 is the 4th
        (2, 4, 4),  # checks after 2 and 4 steps
        # checks after 3 (0.0076, inside the band) and 6 steps (0.0275, above it): back to the 3rd step's parameters
        (3, 6, 3),
    ],
)
def test_the_stop_ends_the_epochs_once_d_reaches_the_bound(rollout, algo, policy, interval, steps, kept):
    model = _shifting(algo, policy, shift=0.03, kl_stop=1.0, kl_stop_interval=interval)
    logged, moved = _train_one_rollout(model, rollout)
    assert logged["train/stopped"] == 1
    assert logged["train/n_minibatches_run"] == steps and logged["train/n_epochs_run"] == steps / 4  # 4 minibatches per epoch
    assert logged["train/backtracked"] == int(kept < steps)
    assert moved == pytest.approx(0.03 * kept, rel=1e-5)
    assert logged["train/kl"] == pytest.approx(kl_of_shift(0.03 * kept), rel=1e-4)
    assert logged["train/kl"] == pytest.approx(model._rollout_kl()[0], rel=1e-6)  # the d of the final parameters
    assert model._n_updates == 2  # every epoch is begun: those after the stop train the value function


@pytest.mark.parametrize("algo, policy", [(PPOKL, "MlpPolicy"), (RecurrentPPOKL, "MlpLstmPolicy")])
def test_the_stop_does_not_end_an_update_that_stays_below_the_bound(rollout, algo, policy):
    # 8 steps of 0.003: d reaches kl_of_shift(0.024) = 0.00056, far below 0.01
    model = _shifting(algo, policy, shift=0.003, kl_stop=1.0, kl_stop_interval=1)
    logged, moved = _train_one_rollout(model, rollout)
    assert logged["train/stopped"] == 0 and logged["train/n_minibatches_run"] == 8 and logged["train/n_epochs_run"] == 2
    assert moved == pytest.approx(0.024, rel=1e-5)
    assert logged["train/kl"] == pytest.approx(kl_of_shift(0.024), rel=1e-4)
    # the bound is a multiple of the target: at 0.03 * 0.01 the same update stops after 6 steps (d = 0.00032; 0.00022 after 5)
    model = _shifting(algo, policy, shift=0.003, kl_stop=0.03, kl_stop_interval=1)
    assert _train_one_rollout(model, rollout)[0]["train/n_minibatches_run"] == 6


def test_without_kl_stop_every_epoch_runs_and_no_stop_is_logged(rollout):
    logged, moved = _train_one_rollout(_shifting(PPOKL, "MlpPolicy", shift=0.03), rollout)
    assert moved == pytest.approx(0.03 * 8, rel=1e-5)
    assert not {"train/stopped", "train/n_minibatches_run", "train/n_epochs_run"} & set(logged)


def test_backtracking_restores_the_last_check_inside_the_band(rollout):
    # steps of 0.09: d = 0.0076 after one step (inside the band [0.0067, 0.015], below the target),
    # 0.0288 after two (above the band): the second step is undone, parameters and optimizer state alike
    model = _shifting(PPOKL, "MlpPolicy", shift=0.09, kl_stop=1.0, kl_stop_interval=1)
    logged, moved = _train_one_rollout(model, rollout)
    assert logged["train/stopped"] == 1 and logged["train/backtracked"] == 1 and logged["train/n_minibatches_run"] == 2
    assert moved == pytest.approx(0.09, rel=1e-5)
    assert model.policy.optimizer.state[model.policy.log_std]["steps"] == 1
    assert logged["train/kl"] == pytest.approx(kl_of_shift(0.09), rel=1e-4) == model._rollout_kl()[0]


def test_backtracking_keeps_a_step_when_no_check_was_inside_the_band(rollout):
    # one step of 0.2: d = 0.0352, from 0 (below the band) straight above it: nothing to go back to
    model = _shifting(PPOKL, "MlpPolicy", shift=0.2, kl_stop=1.0, kl_stop_interval=1)
    logged, moved = _train_one_rollout(model, rollout)
    assert logged["train/backtracked"] == 0 and logged["train/n_minibatches_run"] == 1 and moved == pytest.approx(0.2)


@pytest.mark.parametrize("algo, policy", [(PPOKL, "MlpPolicy"), (RecurrentPPOKL, "MlpLstmPolicy")])
def test_after_the_stop_the_epochs_left_train_the_critic_alone(rollout, algo, policy):
    """
    A stopped update runs its remaining epochs on the value loss alone: the actor ends exactly as it was at the check
    whose d the update kept, the critic moves on, and every epoch is begun.
    """
    model = algo(
        policy, make_vec_env("Pendulum-v1", n_envs=1, seed=0), n_steps=64, batch_size=16, n_epochs=4, seed=0,
        learning_rate=3e-2, kl_stop=1.0, kl_stop_interval=1,
    )  # fmt: skip
    checks = []
    measure = model._measured_rollout_kl

    def recording():
        kl = measure()
        checks.append((kl[0], {name: value.clone() for name, value in model.policy.state_dict().items()}))
        return kl

    model._measured_rollout_kl = recording
    rollout(model)
    model.train()
    logged = model.logger.name_to_value
    assert logged["train/stopped"] == 1 and logged["train/n_minibatches_run"] < 16 and model._n_updates == 4
    kept = [state for kl, state in checks if kl == logged["train/kl"]][-1]
    actor = [n for n in kept if not any(word in n for word in ("value", "vf", "critic"))]
    critic = [n for n in kept if n not in actor]
    assert actor and critic
    final = model.policy.state_dict()
    for name in actor:
        assert th.equal(final[name], kept[name]), name
    assert any(not th.equal(final[name], kept[name]) for name in critic)
    assert np.isfinite(logged["train/approx_kl"]) and np.isfinite(logged["train/policy_gradient_loss"])


def test_the_controller_is_told_of_the_stop(rollout):
    # one step of 0.2 stops the update at d = 0.035 > 1.5 * 0.01: the paper's rule would double beta, but told
    # that the stop limited the update, it leaves beta alone
    model = _shifting(PPOKL, "MlpPolicy", shift=0.2, kl_stop=1.0, kl_stop_interval=1)
    assert _train_one_rollout(model, rollout)[0]["train/stopped"] == 1
    assert model.kl_coef == 1.0


def test_a_stop_that_never_fires_changes_nothing(rollout):
    """The checks measure without side effects: the same update as without kl_stop (the minibatches included)."""
    params, kls = [], []
    for kl_stop in (None, 1e6):
        model = PPOKL(
            "MlpPolicy", "Pendulum-v1", n_steps=64, batch_size=16, n_epochs=3, seed=0, kl_stop=kl_stop, kl_stop_interval=1
        )
        rollout(model)
        model.train()
        params.append(th.nn.utils.parameters_to_vector(model.policy.parameters()).detach())
        kls.append(model.logger.name_to_value["train/kl"])
    assert th.equal(params[0], params[1])
    assert kls[1] == pytest.approx(kls[0], rel=1e-6)  # the last check's d, summed in another order


def _model(algo, env_id: str, **kwargs):
    if env_id == "maskable":
        env = make_vec_env(lambda: InvalidActionEnvDiscrete(dim=10, n_invalid_actions=4), n_envs=2, seed=0)
    else:
        env = make_vec_env(env_id, n_envs=2, seed=0)
    policy = "MlpLstmPolicy" if algo is RecurrentPPOKL else "MlpPolicy"
    return algo(policy, env, n_steps=32, batch_size=16, n_epochs=4, seed=0, **kwargs)


@pytest.mark.parametrize(
    "algo, env_id",
    [(PPOKL, "CartPole-v1"), (MaskablePPOKL, "maskable"), (RecurrentPPOKL, "CartPole-v1"), (RecurrentPPOKL, "Pendulum-v1")],
)
def test_a_huge_step_stops_at_the_first_check_and_no_step_never_stops(rollout, algo, env_id):
    for learning_rate, stopped, steps in ((0.5, 1, 2), (0.0, 0, 16)):
        model = _model(algo, env_id, learning_rate=learning_rate, kl_stop=1.0, kl_stop_interval=2)
        rollout(model)
        model.train()
        logged = model.logger.name_to_value
        assert (logged["train/stopped"], logged["train/n_minibatches_run"]) == (stopped, steps), learning_rate
        assert logged["train/kl"] >= 0.01 if stopped else logged["train/kl"] == 0.0
        # the d of the final parameters; a recurrent policy's d depends a little on where the buffer's random split
        # cuts the rollout into sequences, and the value epochs after the stop draw other splits
        rel = 1e-2 if algo is RecurrentPPOKL else 1e-5
        assert np.isfinite(logged["train/kl"]) and logged["train/kl"] == pytest.approx(model._rollout_kl()[0], rel=rel)


# ---------------------------------------------------------------------------------------------------------------
# Saving and loading keep the controller's class and state, and the stop's options


@pytest.mark.parametrize(
    "algo, env_id", [(PPOKL, "Pendulum-v1"), (MaskablePPOKL, "maskable"), (RecurrentPPOKL, "CartPole-v1")]
)
@pytest.mark.parametrize(
    "controller_class, controller_kwargs", [(LogProportionalKLController, dict(gain=0.3)), (HalvingController, None)]
)
def test_the_controller_class_and_its_state_survive_save_and_load(tmp_path, algo, env_id, controller_class, controller_kwargs):
    model = _model(
        algo,
        env_id,
        kl_coef=0.7,
        kl_controller_class=controller_class,
        kl_controller_kwargs=controller_kwargs,
        kl_stop=1.2,
        kl_stop_interval=3,
    )
    model.learn(2 * 64)
    assert model.kl_coef != 0.7  # adapted
    model.save(tmp_path / "model")
    loaded = algo.load(tmp_path / "model", env=model.get_env())
    assert type(loaded.kl_controller) is controller_class
    assert vars(loaded.kl_controller) == vars(model.kl_controller)
    assert loaded.kl_coef == model.kl_coef
    assert (loaded.kl_stop, loaded.kl_stop_interval) == (1.2, 3)
    before = loaded.kl_coef
    loaded.learn(64, reset_num_timesteps=False)
    assert "train/stopped" in loaded.logger.name_to_value
    if controller_class is HalvingController:
        assert loaded.kl_coef == before / 2
