"""Drop-in parity: every combination of rollout and minibatch sizes that PPO, MaskablePPO and RecurrentPPO accept,
PPOKL and its variants accept with the same warnings; what the originals refuse, ours refuse too (by name)."""

import warnings

import pytest
import torch as th
from conftest import PerUpdate, ScalingController
from sb3_contrib import MaskablePPO, RecurrentPPO
from sb3_contrib.common.envs import InvalidActionEnvDiscrete
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env

from sb3_ppo_kl import PPOKL, MaskablePPOKL, RecurrentPPOKL

PAIRS = {
    "ppo": (PPO, PPOKL, "MlpPolicy", "CartPole-v1"),
    "maskable": (MaskablePPO, MaskablePPOKL, "MlpPolicy", "maskable"),
    "recurrent": (RecurrentPPO, RecurrentPPOKL, "MlpLstmPolicy", "CartPole-v1"),
}

# (name, n_envs, constructor arguments): the ones the issue names and their neighbours
COMBINATIONS = [
    ("short rollout, default minibatch", 1, dict(n_steps=16)),
    ("short rollout, n_steps=32", 1, dict(n_steps=32)),
    ("n_steps=1, batch_size=1, no normalisation", 1, dict(n_steps=1, batch_size=1, normalize_advantage=False)),
    ("truncated last minibatch", 1, dict(n_steps=48, batch_size=32)),
    ("minibatch larger than a 4-env rollout", 4, dict(n_steps=8, batch_size=64)),
    ("truncated minibatch over 3 envs", 3, dict(n_steps=10, batch_size=8)),
    ("exact fit over 2 envs", 2, dict(n_steps=16, batch_size=8)),
]


def _env(env_id: str, n_envs: int):
    if env_id == "maskable":
        return make_vec_env(lambda: InvalidActionEnvDiscrete(dim=10, n_invalid_actions=4), n_envs=n_envs, seed=0)
    return make_vec_env(env_id, n_envs=n_envs, seed=0)


def _outcome(algo, policy: str, env_id: str, n_envs: int, kwargs: dict):
    """('ok', truncation warnings) after two updates, or ('refused', None)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model = algo(policy, _env(env_id, n_envs), n_epochs=2, seed=0, **kwargs)
        except (AssertionError, ValueError):
            return "refused", None
        model.learn(2 * model.n_steps * n_envs)
    truncation = sorted(str(w.message) for w in caught if "truncated mini-batch" in str(w.message))
    return "ok", truncation


@pytest.mark.parametrize("pair", list(PAIRS))
@pytest.mark.parametrize("name, n_envs, kwargs", COMBINATIONS, ids=[c[0] for c in COMBINATIONS])
def test_same_combinations_accepted_with_the_same_warnings(pair, name, n_envs, kwargs):
    original, ours, policy, env_id = PAIRS[pair]
    expected = _outcome(original, policy, env_id, n_envs, kwargs)
    assert expected[0] == "ok", f"{original.__name__} refuses {name}: not a parity case"
    assert _outcome(ours, policy, env_id, n_envs, kwargs) == expected


def test_large_minibatch_is_the_whole_rollout():
    model = PPOKL("MlpPolicy", "CartPole-v1", n_steps=32, batch_size=64, n_epochs=3, seed=0)
    model.learn(32)
    assert model._n_updates == 3  # one minibatch (the whole 32-sample rollout) per epoch
    assert sum(1 for _ in model.rollout_buffer.get(model.batch_size)) == 1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(n_steps=1), r"`n_steps \* n_envs` must be > 1 when normalize_advantage=True"),
        (dict(n_steps=32, batch_size=1), "`batch_size` must be an integer >= 2 when normalize_advantage=True"),
    ],
)
def test_ppo_refuses_and_so_do_we_by_name(kwargs, message):
    """What SB3 PPO refuses (with an assertion), PPOKL refuses with a ValueError that names the parameter."""
    with pytest.raises(AssertionError):
        PPO("MlpPolicy", "CartPole-v1", **kwargs)
    with pytest.raises(ValueError, match=message):
        PPOKL("MlpPolicy", "CartPole-v1", **kwargs)


def _halve_then_hold(progress_remaining: float) -> float:
    """A schedule of ``ref_kl_coef``: 1.0 for the first half of training, then linear to 0 at the end."""
    return min(1.0, 2 * progress_remaining)


# The reference options, given to every variant with the original algorithm's own policy as the reference
REFERENCE_OPTIONS = {
    "schedule": dict(ref_kl_coef=_halve_then_hold),
    "fixed": dict(ref_kl_coef=0.5),
    "moving": dict(ref_tau=0.5),
}


@pytest.mark.parametrize("options", list(REFERENCE_OPTIONS))
@pytest.mark.parametrize("pair", list(PAIRS))
def test_every_variant_takes_every_reference_option(pair, options):
    """
    PPOKL, MaskablePPOKL and RecurrentPPOKL fine-tune their original's policy with the same reference options, to the
    same effect: a schedule is followed (1.0 for the first half of training, then to 0), a fixed coefficient stays, a
    moving reference moves halfway to the policy after every update (from_pretrained's default moves by 0.3).
    """
    original, ours, policy, env_id = PAIRS[pair]
    pretrained = original(policy, _env(env_id, 2), seed=1).policy
    start = {key: value.clone() for key, value in pretrained.state_dict().items()}
    model = ours.from_pretrained(
        pretrained, _env(env_id, 2), n_steps=16, batch_size=16, n_epochs=1, seed=0, **REFERENCE_OPTIONS[options]
    )
    assert type(model.ref_policy) is type(pretrained)
    assert model.ref_tau == (0.5 if options == "moving" else 0.3)
    updates = PerUpdate()
    model.learn(4 * 32, callback=updates)
    logged = [row["ref_kl_coef"] for row in updates.rows]
    assert len(logged) == 4 and all(row["ref_kl"] > 0 for row in updates.rows)
    assert model._n_ref_updates == 4 == model.logger.name_to_value["train/ref_updates"]
    if options == "schedule":
        assert logged == pytest.approx([1.0, 1.0, 0.5, 0.0])  # after 25%, 50%, 75%, 100% of the 128 steps
    elif options == "fixed":
        assert logged == [0.5] * 4
    reference, policy = model.ref_policy.state_dict(), model.policy.state_dict()
    assert all(key in policy for key in reference)
    assert not th.equal(reference["action_net.weight"], start["action_net.weight"])
    assert not th.equal(reference["action_net.weight"], policy["action_net.weight"])


@pytest.mark.parametrize("pair", list(PAIRS))
def test_every_variant_refuses_the_same_reference_options_by_name(pair):
    original, ours, policy, env_id = PAIRS[pair]
    reference = original(policy, _env(env_id, 1), seed=1).policy
    for kwargs, error, message in [
        (dict(ref_kl_coef=lambda _: -1.0), ValueError, "`ref_kl_coef` as a schedule must give finite numbers >= 0"),
        (dict(ref_kl_coef="1"), TypeError, "`ref_kl_coef` must be a finite number >= 0 or a schedule"),
        (dict(ref_tau=2.0), ValueError, r"`ref_tau` must be a finite number in \[0, 1\], got 2.0"),
        (dict(ref_kl_target=0.02), TypeError, "ref_kl_target"),  # removed by issue 45
        (dict(ref_update_interval=2), TypeError, "ref_update_interval"),  # removed by issue 45
    ]:
        with pytest.raises(error, match=message):
            ours(policy, _env(env_id, 1), ref_policy=reference, **kwargs)


@pytest.mark.parametrize("pair", list(PAIRS))
def test_every_variant_takes_the_controller_class(pair):
    """PPOKL, MaskablePPOKL and RecurrentPPOKL take a controller by class with its kwargs."""
    _, ours, policy, env_id = PAIRS[pair]
    model = ours(
        policy,
        _env(env_id, 2),
        n_steps=16,
        batch_size=8,
        n_epochs=3,
        seed=0,
        kl_controller_class=ScalingController,
        kl_controller_kwargs=dict(factor=0.25),
    )
    assert type(model.kl_controller) is ScalingController and model.kl_controller.factor == 0.25
    model.learn(2 * 32)
    assert model.kl_coef == 1 / 16 == model.logger.name_to_value["train/kl_coef"]


@pytest.mark.parametrize("pair", list(PAIRS))
def test_every_variant_refuses_bad_controller_options_by_name(pair):
    _, ours, policy, env_id = PAIRS[pair]
    for kwargs, error, message in [
        (dict(kl_controller_class=dict), TypeError, "`kl_controller_class` must be a subclass of sb3_ppo_kl.KLCoefController"),
        (dict(kl_controller_kwargs=dict(kl_target=0.02)), ValueError, "`kl_controller_kwargs` must not contain kl_target"),
        (
            dict(kl_controller_class=ScalingController, kl_controller_kwargs=dict(factor=0)),
            ValueError,
            "`factor` must be a finite number > 0",
        ),
        (dict(kl_stop=1.0), TypeError, "kl_stop"),  # removed by issue 45
    ]:
        with pytest.raises(error, match=message):
            ours(policy, _env(env_id, 1), **kwargs)
