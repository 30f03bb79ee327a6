"""
The extension point of beta's rule: ``kl_controller_class`` / ``kl_controller_kwargs`` (issue 32), with the paper's
rule as the one built-in controller (issue 45 removed the log-proportional controller and the stop inside the update).
"""

import math

import pytest
from conftest import ScalingController
from sb3_contrib.common.envs import InvalidActionEnvDiscrete
from stable_baselines3.common.env_util import make_vec_env

from sb3_ppo_kl import PPOKL, KLCoefController, MaskablePPOKL, RecurrentPPOKL


class HalvingController(KLCoefController):
    """A user's own rule: halve beta after every update."""

    def adapt(self, kl: float, target: float) -> float:
        return self.kl_coef / 2


def test_the_paper_rule_is_the_default_and_the_only_built_in_controller():
    assert type(PPOKL("MlpPolicy", "Pendulum-v1").kl_controller) is KLCoefController
    assert type(PPOKL("MlpPolicy", "Pendulum-v1", kl_controller_class="KLCoefController").kl_controller) is KLCoefController
    controller = KLCoefController(kl_coef=1.0, kl_target=0.01)
    assert controller.update(0.04) == 2.0 and controller.update(0.001) == 1.0 and controller.update(0.01) == 1.0


def test_controller_repr_names_its_class_and_arguments():
    assert repr(ScalingController(factor=0.3)) == (
        "ScalingController(kl_coef=1.0, kl_target=0.01, adaptive_kl=True, kl_tolerance=1.5, "
        "kl_adapt_factor=2.0, kl_coef_bounds=(0.0001, 10000.0), factor=0.3)"
    )


def test_the_controller_is_built_from_the_class_and_the_algorithms_arguments():
    model = PPOKL(
        "MlpPolicy",
        "Pendulum-v1",
        kl_coef=0.5,
        kl_target=0.02,
        kl_tolerance=1.3,
        kl_adapt_factor=1.5,
        kl_coef_bounds=(0.01, 100.0),
        kl_controller_class=ScalingController,
        kl_controller_kwargs=dict(factor=0.35),
    )
    assert type(model.kl_controller) is ScalingController
    assert vars(model.kl_controller) == dict(
        kl_coef=0.5,
        kl_target=0.02,
        adaptive_kl=True,
        kl_tolerance=1.3,
        kl_adapt_factor=1.5,
        kl_coef_bounds=(0.01, 100.0),
        factor=0.35,
    )


def test_a_users_controller_drives_beta_in_training():
    model = PPOKL(
        "MlpPolicy", "Pendulum-v1", n_steps=64, batch_size=32, n_epochs=1, kl_controller_class=HalvingController, seed=0
    )
    model.learn(3 * 64)
    assert model.kl_coef == 1 / 8 == model.logger.name_to_value["train/kl_coef"]


def test_a_users_controller_is_clamped_to_the_bounds():
    controller = ScalingController(kl_coef=1.0, kl_coef_bounds=(0.3, 10.0), factor=0.5)
    assert [controller.update(0.01) for _ in range(3)] == [0.5, 0.3, 0.3]


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(kl_controller_class=dict), TypeError, "`kl_controller_class` must be a subclass of sb3_ppo_kl.KLCoefController"),
        (
            dict(kl_controller_class="LogProportionalKLController"),
            TypeError,
            (
                "`kl_controller_class` must be a subclass of sb3_ppo_kl.KLCoefController or one of the names "
                "'KLCoefController', got 'LogProportionalKLController'"
            ),
        ),
        (dict(kl_controller_class=ScalingController()), TypeError, "`kl_controller_class` must be a subclass"),
        (dict(kl_controller_class=None), TypeError, "`kl_controller_class` must be a subclass"),
        (dict(kl_controller_kwargs=[("factor", 0.2)]), TypeError, "`kl_controller_kwargs` must be None or a dict"),
        (dict(kl_controller_kwargs="factor=0.2"), TypeError, "`kl_controller_kwargs` must be None or a dict"),
        (dict(kl_controller_kwargs=dict(kl_target=0.02)), ValueError, "`kl_controller_kwargs` must not contain kl_target"),
        (
            dict(kl_controller_kwargs=dict(kl_coef=2.0, kl_tolerance=2.0)),
            ValueError,
            "must not contain kl_coef, kl_tolerance: give them as the algorithm's own arguments",
        ),
        (dict(kl_controller_kwargs=dict(factor=0.2)), TypeError, "`kl_controller_kwargs` .* do not fit KLCoefController's"),
        (
            dict(kl_controller_class=ScalingController, kl_controller_kwargs=dict(factr=0.2)),
            TypeError,
            "`kl_controller_kwargs` .* do not fit ScalingController's arguments: .*factr",
        ),
        (
            dict(kl_controller_class=ScalingController, kl_controller_kwargs=dict(factor=math.nan)),
            ValueError,
            "`factor` must be a finite number > 0",
        ),
    ],
)
def test_bad_controller_arguments_are_refused_by_name(kwargs, error, message):
    with pytest.raises(error, match=message):
        PPOKL("MlpPolicy", "Pendulum-v1", **kwargs)


@pytest.mark.parametrize("removed", ["kl_stop", "kl_stop_interval"])
def test_the_removed_stop_is_refused(removed):
    """Issue 45 removed the stop inside the update: its arguments are unknown (a model saved with them still loads)."""
    with pytest.raises(TypeError, match=removed):
        PPOKL("MlpPolicy", "Pendulum-v1", **{removed: 1})


def _model(algo, env_id: str, **kwargs):
    if env_id == "maskable":
        env = make_vec_env(lambda: InvalidActionEnvDiscrete(dim=10, n_invalid_actions=4), n_envs=2, seed=0)
    else:
        env = make_vec_env(env_id, n_envs=2, seed=0)
    policy = "MlpLstmPolicy" if algo is RecurrentPPOKL else "MlpPolicy"
    return algo(policy, env, n_steps=32, batch_size=16, n_epochs=4, seed=0, **kwargs)


@pytest.mark.parametrize(
    "algo, env_id", [(PPOKL, "Pendulum-v1"), (MaskablePPOKL, "maskable"), (RecurrentPPOKL, "CartPole-v1")]
)
@pytest.mark.parametrize(
    "controller_class, controller_kwargs", [(ScalingController, dict(factor=0.3)), (HalvingController, None)]
)
def test_the_controller_class_and_its_state_survive_save_and_load(tmp_path, algo, env_id, controller_class, controller_kwargs):
    model = _model(algo, env_id, kl_coef=0.7, kl_controller_class=controller_class, kl_controller_kwargs=controller_kwargs)
    model.learn(2 * 64)
    assert model.kl_coef != 0.7  # adapted
    model.save(tmp_path / "model")
    loaded = algo.load(tmp_path / "model", env=model.get_env())
    assert type(loaded.kl_controller) is controller_class
    assert vars(loaded.kl_controller) == vars(model.kl_controller)
    assert loaded.kl_coef == model.kl_coef
    before = loaded.kl_coef
    loaded.learn(64, reset_num_timesteps=False)
    factor = 0.5 if controller_kwargs is None else controller_kwargs["factor"]
    assert loaded.kl_coef == pytest.approx(before * factor)
