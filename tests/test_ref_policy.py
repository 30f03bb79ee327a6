"""Fine-tuning: the KL penalty to a reference policy (frozen or moving), and from_pretrained()."""

import copy
import math

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from conftest import PerUpdate, rollout_tensors, sgd_by_hand
from sb3_contrib import MaskablePPO, RecurrentPPO
from sb3_contrib.common.envs import InvalidActionEnvDiscrete, InvalidActionEnvMultiBinary
from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy
from stable_baselines3 import A2C, PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.utils import LinearSchedule
from torch.nn import functional as F

from sb3_ppo_kl import PPOKL, MaskablePPOKL, RecurrentPPOKL, distribution_params

LR, BETA, REF_COEF, VF_COEF, N_STEPS = 0.05, 0.7, 0.4, 0.5, 32
SGD = dict(optimizer_class=th.optim.SGD, optimizer_kwargs={})


@pytest.fixture(scope="module")
def zips(tmp_path_factory):
    """Small SB3 models saved once: PPO and A2C on CartPole and Pendulum, PPOKL, MaskablePPO and RecurrentPPO."""
    root = tmp_path_factory.mktemp("zips")
    paths = {}
    for name, make in {
        "ppo_cartpole": lambda: PPO("MlpPolicy", "CartPole-v1", n_steps=32, batch_size=32, n_epochs=1, seed=0),
        "ppo_pendulum": lambda: PPO("MlpPolicy", "Pendulum-v1", n_steps=32, batch_size=32, n_epochs=1, seed=0),
        "a2c_cartpole": lambda: A2C("MlpPolicy", "CartPole-v1", n_steps=8, seed=0),
        "ppokl_cartpole": lambda: PPOKL("MlpPolicy", "CartPole-v1", n_steps=32, batch_size=32, n_epochs=1, seed=0),
        "maskable": lambda: MaskablePPO("MlpPolicy", _masked_env(), n_steps=32, batch_size=32, n_epochs=1, seed=0),
        "recurrent": lambda: RecurrentPPO(
            "MlpLstmPolicy",
            "CartPole-v1",
            n_steps=32,
            batch_size=32,
            n_epochs=1,
            seed=0,
            policy_kwargs=dict(lstm_hidden_size=8),
        ),
    }.items():
        model = make()
        model.learn(32)
        paths[name] = root / name
        model.save(paths[name])
    return paths


def _masked_env(space="Discrete"):
    if space == "Discrete":
        return InvalidActionEnvDiscrete(dim=6, n_invalid_actions=3)
    return InvalidActionEnvMultiBinary(dims=3, n_invalid_actions=1)


def _other_policy(env_id, seed):
    """A reference the new policies below differ from clearly: shifted logits or means, a smaller std."""
    policy = PPO("MlpPolicy", env_id, seed=seed, device="cpu").policy
    with th.no_grad():
        policy.action_net.bias += th.linspace(-1.0, 1.0, policy.action_net.bias.numel())
        if hasattr(policy, "log_std"):
            policy.log_std -= 0.5
    return policy


# ---------------------------------------------------------------------------------------------------------------
# The loss against a hand-written one


def _distribution(policy, obs, discrete):
    features = policy.extract_features(obs)
    latent_pi, latent_vf = policy.mlp_extractor(features)
    out = policy.action_net(latent_pi)
    if discrete:
        return th.log_softmax(out, dim=-1), policy.value_net(latent_vf).flatten()
    return (out, th.ones_like(out) * policy.log_std.exp()), policy.value_net(latent_vf).flatten()


def _log_prob(dist, actions, discrete):
    if discrete:
        return dist.gather(-1, actions.long()).squeeze(-1)
    mean, std = dist
    return (-((actions - mean) ** 2) / (2 * std**2) - std.log() - 0.5 * math.log(2 * math.pi)).sum(-1)


def _kl(p, q, discrete):
    """KL[p || q] per state, written out: sum p (log p - log q), or the Gaussian closed form summed over dimensions."""
    if discrete:
        return (p.exp() * (p - q)).sum(-1)
    (m_p, s_p), (m_q, s_q) = p, q
    return (th.log(s_q / s_p) + (s_p**2 + (m_p - m_q) ** 2) / (2 * s_q**2) - 0.5).sum(-1)


def _entropy(dist, discrete):
    if discrete:
        return -(dist.exp() * dist).sum(-1)
    return (0.5 + 0.5 * math.log(2 * math.pi) + dist[1].log()).sum(-1)


def _to_ref_coef(progress_remaining: float) -> float:
    """A schedule of ``ref_kl_coef``: 1.0 at the start of training, REF_COEF at its end."""
    return REF_COEF + (1.0 - REF_COEF) * progress_remaining


@pytest.mark.parametrize("env_id", ["Pendulum-v1", "CartPole-v1"])
@pytest.mark.parametrize("coef", ["fixed", "schedule"])
def test_train_matches_hand_written_loss_with_reference(env_id, coef):
    """
    Two SGD epochs on one minibatch by learn() and by a written-out loss with the KL to the reference agree.
    "schedule": ref_kl_coef is a schedule whose value is REF_COEF where the update happens (progress_remaining 0,
    after the one rollout of the budget) and 1.0 at the start: the update must use the value at its progress.
    """
    discrete = env_id == "CartPole-v1"
    ref = _other_policy(env_id, seed=7)
    ref_kl_coef = _to_ref_coef if coef == "schedule" else REF_COEF
    model = PPOKL(
        "MlpPolicy",
        env_id,
        n_steps=N_STEPS,
        batch_size=N_STEPS,
        n_epochs=2,
        learning_rate=LR,
        kl_coef=BETA,
        ref_policy=ref,
        ref_kl_coef=ref_kl_coef,
        ent_coef=0.01,
        vf_coef=VF_COEF,
        max_grad_norm=1e9,
        policy_kwargs=SGD,
        seed=0,
    )
    hand = copy.deepcopy(model.policy)
    model.learn(N_STEPS)

    obs, actions, old_log_prob, advantages, returns = rollout_tensors(model)
    with th.no_grad():
        old_dist, _ = _distribution(hand, obs, discrete)
        ref_dist, _ = _distribution(ref, obs, discrete)
    ref_penalties = []

    def loss():
        dist, values = _distribution(hand, obs, discrete)
        ratio = th.exp(_log_prob(dist, actions, discrete) - old_log_prob)
        ref_penalty = REF_COEF * _kl(ref_dist, dist, discrete).mean()  # KL[pi_ref || pi_theta]
        ref_penalties.append(ref_penalty.item())
        return (
            -(ratio * advantages).mean()
            + BETA * _kl(old_dist, dist, discrete).mean()
            + ref_penalty
            + VF_COEF * F.mse_loss(returns, values)
            - 0.01 * _entropy(dist, discrete).mean()
        )

    sgd_by_hand(hand, loss, steps=2, lr=LR)

    for ours, theirs in zip(model.policy.parameters(), hand.parameters()):
        assert th.allclose(ours, theirs, atol=1e-5)
    logged = model.logger.name_to_value
    assert logged["train/ref_kl_penalty"] == pytest.approx(np.mean(ref_penalties), rel=1e-4)
    with th.no_grad():
        new_dist = _distribution(hand, obs, discrete)[0]
        ref_kl = _kl(ref_dist, new_dist, discrete).mean().item()
        reverse = _kl(new_dist, ref_dist, discrete).mean().item()
    # train/ref_kl: the mean forward KL over the rollout after the update
    assert logged["train/ref_kl"] == pytest.approx(ref_kl, rel=1e-4)
    assert ref_kl > 0 and reverse != pytest.approx(ref_kl, rel=1e-3)  # the direction matters, and it is the forward one
    assert model.ref_kl_coef == pytest.approx(REF_COEF) == logged["train/ref_kl_coef"]


def test_without_reference_nothing_changes():
    """No reference: no reference pass, no extra state saved, no reference logs, as before this feature."""
    model = PPOKL("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=32, n_epochs=2, seed=0)
    calls: dict[str, list] = {"_evaluate_actions": [], "_action_distribution": []}
    for name, calls_of in calls.items():
        original = getattr(model, name)

        def counting(rollout_data, policy=None, original=original, calls_of=calls_of):
            calls_of.append(policy)
            return original(rollout_data, policy)

        setattr(model, name, counting)
    model.learn(64)
    # 2 epochs x 2 minibatches; the actor-only passes: the snapshot of the rollout policy and the KL after the update
    assert len(calls["_evaluate_actions"]) == 4 and len(calls["_action_distribution"]) == 2
    assert all(policy in (None, model.policy) for policies in calls.values() for policy in policies)
    assert model.ref_policy is None and model.rollout_buffer.ref_dist_params is None
    assert model._get_torch_save_params() == (["policy", "policy.optimizer"], [])
    assert not [key for key in model.logger.name_to_value if "ref" in key]


def test_reference_pass_is_once_per_update():
    model = PPOKL(
        "MlpPolicy", "CartPole-v1", n_steps=64, batch_size=16, n_epochs=3, ref_policy=_other_policy("CartPole-v1", 1)
    )
    calls = []
    for name in ("_evaluate_actions", "_action_distribution"):
        original = getattr(model, name)

        def counting(rollout_data, policy=None, original=original):
            calls.append(policy)
            return original(rollout_data, policy)

        setattr(model, name, counting)
    model.learn(64)
    assert [policy for policy in calls if policy is model.ref_policy] == [model.ref_policy]  # one pass over the rollout
    assert model.rollout_buffer.ref_dist_params.shape == (64, 2)


# ---------------------------------------------------------------------------------------------------------------
# The reference: frozen, copied, loaded from zips, checked


def test_reference_is_frozen_and_not_optimised():
    given = _other_policy("Pendulum-v1", 3)
    before = copy.deepcopy(given.state_dict())
    model = PPOKL("MlpPolicy", "Pendulum-v1", n_steps=64, batch_size=32, n_epochs=2, learning_rate=1e-2, ref_policy=given)
    ref = model.ref_policy
    assert ref is not given and all(p.requires_grad for p in given.parameters())  # the caller's policy is untouched
    assert not ref.training and not any(p.requires_grad for p in ref.parameters())
    assert all(p.device == model.device for p in ref.parameters())
    optimised = {id(p) for group in model.policy.optimizer.param_groups for p in group["params"]}
    assert not optimised & {id(p) for p in ref.parameters()}
    model.learn(128)
    assert not ref.training
    for key, value in ref.state_dict().items():
        assert th.equal(value, before[key]), key


@pytest.mark.parametrize("name", ["ppo_cartpole", "a2c_cartpole", "ppokl_cartpole"])
def test_reference_from_a_model_zip(zips, name):
    algorithm = {"ppo_cartpole": PPO, "a2c_cartpole": A2C, "ppokl_cartpole": PPOKL}[name]
    saved = algorithm.load(zips[name], device="cpu").policy
    for path in (zips[name], str(zips[name]) + ".zip"):  # with or without the suffix, as SB3's load()
        model = PPOKL("MlpPolicy", "CartPole-v1", n_steps=32, batch_size=32, ref_policy=path)
        assert type(model.ref_policy) is type(saved)
        for key, value in saved.state_dict().items():
            assert th.equal(model.ref_policy.state_dict()[key], value), key
    model.learn(32)
    assert model.logger.name_to_value["train/ref_kl"] > 0


def test_space_mismatch_names_both_spaces(zips):
    with pytest.raises(ValueError, match=r"`ref_policy` has the observation space Box\(.*\(3,\).*environment Box\(.*\(4,\)"):
        PPOKL("MlpPolicy", "CartPole-v1", ref_policy=zips["ppo_pendulum"])
    cartpole = gym.make("CartPole-v1")

    class ThreeActions(gym.Env):
        observation_space = cartpole.observation_space
        action_space = gym.spaces.Discrete(3)

        def reset(self, *, seed=None, options=None):
            return self.observation_space.sample(), {}

        def step(self, action):
            return self.observation_space.sample(), 0.0, False, False, {}

    with pytest.raises(ValueError, match=r"`ref_policy` has the action space Discrete\(2\), the environment Discrete\(3\)"):
        PPOKL("MlpPolicy", ThreeActions(), ref_policy=zips["ppo_cartpole"])


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(ref_kl_coef=-1.0), ValueError, r"`ref_kl_coef` must be a finite number >= 0 or a schedule, got -1.0"),
        (dict(ref_kl_coef=float("nan")), ValueError, "`ref_kl_coef` must be a finite number >= 0"),
        (dict(ref_kl_coef="1"), TypeError, "`ref_kl_coef` must be a finite number >= 0"),
        (dict(ref_kl_coef=True), TypeError, r"`ref_kl_coef` must be a finite number >= 0 or a schedule, got True"),
        (dict(ref_kl_coef=lambda p: True), ValueError, "`ref_kl_coef` as a schedule must give finite numbers >= 0, got True"),
        (dict(ref_kl_coef=lambda p: "1"), ValueError, "`ref_kl_coef` as a schedule must give finite numbers >= 0, got '1'"),
        (
            dict(ref_kl_coef=lambda p: p - 0.5),
            ValueError,
            r"`ref_kl_coef` as a schedule must give finite numbers >= 0, got -0.5",
        ),
        (dict(ref_policy=None, ref_tau=0.3), ValueError, "`ref_tau` applies to a reference policy; give `ref_policy`"),
        (
            dict(ref_policy=42),
            ValueError,
            r"`ref_policy` must be an SB3 policy \(a BasePolicy\) or the path of an SB3 model zip",
        ),
        (dict(ref_policy="no/such/model.zip"), ValueError, "`ref_policy`: no SB3 model zip at 'no/such/model.zip'"),
        # removed by issue 45: unknown arguments
        (dict(ref_kl_target=0.02), TypeError, "ref_kl_target"),
        (dict(ref_kl_coef_bounds=(1.0, 1e4)), TypeError, "ref_kl_coef_bounds"),
        (dict(ref_update_interval=2), TypeError, "ref_update_interval"),
        (dict(value_warmup_rollouts=1), TypeError, "value_warmup_rollouts"),
    ],
)
def test_invalid_arguments(kwargs, error, message):
    """A wrong type is a TypeError, a wrong value a ValueError; both name the argument and what it accepts."""
    kwargs.setdefault("ref_policy", _other_policy("CartPole-v1", 0))
    with pytest.raises(error, match=message):
        PPOKL("MlpPolicy", "CartPole-v1", **kwargs)


def test_ref_kl_coef_setter():
    model = PPOKL(
        "MlpPolicy", "CartPole-v1", n_steps=32, batch_size=32, ref_policy=_other_policy("CartPole-v1", 0), ref_kl_coef=0.3
    )
    assert model.ref_kl_coef == 0.3
    model.ref_kl_coef = 2.0
    assert model.ref_kl_coef == 2.0
    with pytest.raises(ValueError, match="ref_kl_coef"):
        model.ref_kl_coef = -1.0
    model.ref_kl_coef = LinearSchedule(0.8, 0.2, 1.0)  # a schedule replaces the number, and a number the schedule
    model._current_progress_remaining = 0.5
    assert model.ref_kl_coef == pytest.approx(0.5)
    model.ref_kl_coef = 0.1
    assert model.ref_kl_coef == 0.1 and model._ref_kl_coef_schedule is None
    with pytest.raises(ValueError, match="`ref_kl_coef` as a schedule must give finite numbers >= 0"):
        model.ref_kl_coef = lambda progress: -1.0


def test_ref_kl_coef_schedule_follows_the_progress():
    """Linear from 1 to 0 over the first half of training: each update uses, and logs, the schedule's value."""
    schedule = LinearSchedule(1.0, 0.0, 0.5)
    model = PPOKL(
        "MlpPolicy",
        "CartPole-v1",
        n_steps=32,
        batch_size=32,
        n_epochs=1,
        ref_policy=_other_policy("CartPole-v1", 2),
        ref_kl_coef=schedule,
        seed=0,
    )
    assert model.ref_kl_coef == 1.0
    updates = PerUpdate()
    model.learn(4 * 32, callback=updates)
    # updates after 32, 64, 96, 128 of 128 steps: 25%, 50%, 75%, 100% of training done
    assert [row["ref_kl_coef"] for row in updates.rows] == pytest.approx([0.5, 0.0, 0.0, 0.0])
    assert all(row["ref_kl"] > 0 for row in updates.rows)
    assert updates.rows[0]["ref_kl_penalty"] > 0 and updates.rows[3]["ref_kl_penalty"] == 0.0
    assert model.ref_kl_coef == 0.0


@pytest.mark.parametrize("schedule", [LinearSchedule(0.9, 0.1, 0.7), lambda progress: 0.2 + progress])
def test_save_load_keeps_the_ref_kl_coef_schedule(tmp_path, schedule):
    """The schedule is pickled with the model (cloudpickle, as SB3 pickles clip_range): the loaded model continues it."""
    env = make_vec_env("CartPole-v1", n_envs=1, seed=0)
    kwargs = dict(n_steps=32, batch_size=32, n_epochs=1, ref_policy=_other_policy("CartPole-v1", 5), seed=0)
    model = PPOKL("MlpPolicy", env, ref_kl_coef=schedule, **kwargs)
    model.learn(64)
    model.save(tmp_path / "model")
    loaded = PPOKL.load(tmp_path / "model", env=env)
    assert loaded.ref_kl_coef == model.ref_kl_coef == pytest.approx(schedule(0.0))
    for progress in np.linspace(0, 1, 11):
        assert loaded._ref_kl_coef_schedule(progress) == schedule(progress)
    updates = PerUpdate()
    loaded.learn(3 * 32, callback=updates)  # a new budget: progress 1 -> 0 again
    assert [row["ref_kl_coef"] for row in updates.rows] == pytest.approx([schedule(2 / 3), schedule(1 / 3), schedule(0.0)])


# ---------------------------------------------------------------------------------------------------------------
# save / load


def test_save_load_keeps_the_reference_and_training_continues(tmp_path):
    env = make_vec_env("CartPole-v1", n_envs=2, seed=0)
    model = PPOKL(
        "MlpPolicy",
        env,
        n_steps=32,
        batch_size=32,
        n_epochs=2,
        ref_policy=_other_policy("CartPole-v1", 5),
        ref_kl_coef=0.5,
        seed=0,
    )
    model.learn(128)
    model.save(tmp_path / "model")
    loaded = PPOKL.load(tmp_path / "model", env=env)

    assert type(loaded.ref_policy) is type(model.ref_policy)
    assert not loaded.ref_policy.training and not any(p.requires_grad for p in loaded.ref_policy.parameters())
    for a, b in zip(model.ref_policy.parameters(), loaded.ref_policy.parameters()):
        assert th.equal(a, b)
    assert loaded.ref_kl_coef == 0.5 and loaded.ref_tau == 0.0
    saved_ref = copy.deepcopy(loaded.ref_policy.state_dict())
    loaded.learn(64, reset_num_timesteps=False)  # exactly one more update
    values = loaded.logger.name_to_value
    assert values["train/ref_kl"] > 0 and values["train/ref_kl_coef"] == 0.5
    for key, value in loaded.ref_policy.state_dict().items():
        assert th.equal(value, saved_ref[key]), key
    # the loaded reference gives the saved one's distribution, on the loaded model's rollout
    obs = th.as_tensor(loaded.rollout_buffer.observations)
    with th.no_grad():
        assert th.equal(
            distribution_params(loaded.ref_policy.get_distribution(obs)),
            distribution_params(model.ref_policy.get_distribution(obs)),
        )


def test_model_saved_without_reference_loads(tmp_path):
    env = make_vec_env("CartPole-v1", n_envs=1, seed=0)
    model = PPOKL("MlpPolicy", env, n_steps=32, batch_size=32, seed=0)
    model.learn(32)
    model.save(tmp_path / "plain")
    # ... and as saved before references existed: without their attributes
    new_attributes = ["_ref_policy_spec", "_ref_kl_coef", "ref_tau", "_n_ref_updates"]
    model.save(tmp_path / "old", exclude=new_attributes)
    for name in ("plain", "old"):
        loaded = PPOKL.load(tmp_path / name, env=env)
        assert loaded.ref_policy is None and loaded.ref_tau == 0.0
        assert loaded._get_torch_save_params() == (["policy", "policy.optimizer"], [])
        loaded.learn(32, reset_num_timesteps=False)
        assert "train/ref_kl" not in loaded.logger.name_to_value


# ---------------------------------------------------------------------------------------------------------------
# from_pretrained


@pytest.mark.parametrize("source", ["zip", "policy"])
def test_from_pretrained_copies_the_policy_and_uses_it_as_reference(zips, source):
    expert = PPO.load(zips["ppo_cartpole"], device="cpu")
    pretrained = zips["ppo_cartpole"] if source == "zip" else expert.policy
    model = PPOKL.from_pretrained(pretrained, "CartPole-v1", n_steps=32, batch_size=32, ref_kl_coef=0.2, seed=0)
    assert type(model.policy) is ActorCriticPolicy
    for name, policy in (("policy", model.policy), ("ref_policy", model.ref_policy)):
        for key, value in expert.policy.state_dict().items():
            assert th.equal(policy.state_dict()[key], value), (name, key)
    assert model.ref_policy is not model.policy and model.ref_kl_coef == 0.2
    model.learn(32)
    assert 0 < model.logger.name_to_value["train/ref_kl"] == pytest.approx(model.logger.name_to_value["train/kl"])


def test_from_pretrained_options(zips):
    model = PPOKL.from_pretrained(zips["ppo_cartpole"], "CartPole-v1", n_steps=32, batch_size=32, ref_policy=None)
    assert model.ref_policy is None and model.ref_tau == 0.0
    other = _other_policy("CartPole-v1", 9)
    model = PPOKL.from_pretrained(zips["ppo_cartpole"], "CartPole-v1", n_steps=32, batch_size=32, ref_policy=other)
    assert th.equal(model.ref_policy.action_net.weight, other.action_net.weight)
    assert model.ref_tau == 0.0  # a reference given here is the constructor's: frozen unless ref_tau is given


@pytest.mark.parametrize(
    "algo, zip_name", [(PPOKL, "ppo_cartpole"), (MaskablePPOKL, "maskable"), (RecurrentPPOKL, "recurrent")]
)
def test_from_pretrained_defaults_to_the_moving_reference(zips, algo, zip_name):
    """
    Issue 45: from_pretrained's reference moves with ref_tau=0.3 (the setting that won the fine-tuning benchmark);
    ref_tau=0 keeps it frozen; the constructor's ref_policy stays None.
    """
    env = _masked_env() if algo is MaskablePPOKL else "CartPole-v1"
    model = algo.from_pretrained(zips[zip_name], env, n_steps=32, batch_size=32, n_epochs=1, seed=0)
    start = copy.deepcopy(model.ref_policy.state_dict())
    assert model.ref_tau == 0.3 and model.ref_kl_coef == 1.0
    model.learn(32)
    assert model._n_ref_updates == 1
    policy = model.policy.state_dict()
    for key, value in model.ref_policy.state_dict().items():  # 0.7 * the pretrained policy + 0.3 * the policy
        if value.is_floating_point():
            assert th.allclose(value, 0.7 * start[key] + 0.3 * policy[key], atol=1e-6), key
    frozen = algo.from_pretrained(zips[zip_name], env, n_steps=32, batch_size=32, n_epochs=1, seed=0, ref_tau=0)
    assert frozen.ref_tau == 0.0
    frozen.learn(32)
    assert frozen._n_ref_updates == 0
    for key, value in frozen.ref_policy.state_dict().items():
        assert th.equal(value, start[key]), key
    assert algo("MlpLstmPolicy" if algo is RecurrentPPOKL else "MlpPolicy", env, n_steps=32, batch_size=32).ref_policy is None


def test_from_pretrained_with_another_architecture_names_the_difference(zips):
    with pytest.raises(
        ValueError, match=r"`pretrained` \(ActorCriticPolicy\) has a different architecture.*shapes that differ"
    ):
        PPOKL.from_pretrained(zips["ppo_cartpole"], "CartPole-v1", policy_kwargs=dict(net_arch=[32, 32]))
    with pytest.raises(ValueError, match=r"weights only `pretrained` has: \['mlp_extractor.policy_net.2.bias'"):
        PPOKL.from_pretrained(zips["ppo_cartpole"], "CartPole-v1", policy_kwargs=dict(net_arch=[64]))


# ---------------------------------------------------------------------------------------------------------------
# The variants


@pytest.mark.parametrize("space", ["Discrete", "MultiBinary"])
def test_maskable_reference_is_masked(space):
    ref = MaskablePPO("MlpPolicy", _masked_env(space), seed=3).policy
    model = MaskablePPOKL("MlpPolicy", _masked_env(space), n_steps=64, batch_size=32, n_epochs=2, ref_policy=ref, seed=0)
    model.learn(64)
    buffer = model.rollout_buffer
    masks = th.as_tensor(buffer.action_masks.reshape(64, -1))
    assert (~masks.bool()).any()
    ref_probs = buffer.ref_dist_params.exp()
    assert th.all(ref_probs[~masks.bool()] == 0)  # masked actions have probability exactly 0 under the reference
    assert math.isfinite(model.logger.name_to_value["train/ref_kl"]) and model.logger.name_to_value["train/ref_kl"] > 0


def test_maskable_from_pretrained_converts_a_maskable_zip_and_rejects_an_unmasked_reference(zips, tmp_path):
    model = MaskablePPOKL.from_pretrained(zips["maskable"], _masked_env(), n_steps=32, batch_size=32)
    assert isinstance(model.ref_policy, MaskableActorCriticPolicy)
    model.learn(32)
    assert math.isfinite(model.logger.name_to_value["train/ref_kl"])
    model.save(tmp_path / "maskable")
    loaded = MaskablePPOKL.load(tmp_path / "maskable", env=_masked_env())
    assert isinstance(loaded.ref_policy, MaskableActorCriticPolicy)
    for a, b in zip(model.ref_policy.parameters(), loaded.ref_policy.parameters()):
        assert th.equal(a, b)
    loaded.learn(32, reset_num_timesteps=False)
    unmasked = PPO("MlpPolicy", _masked_env(), seed=0).policy
    with pytest.raises(ValueError, match="`ref_policy`'s action distribution is a CategoricalDistribution"):
        MaskablePPOKL("MlpPolicy", _masked_env(), ref_policy=unmasked)
    # ... which from_pretrained converts to the maskable policy class, masked as the policy
    model = MaskablePPOKL.from_pretrained(unmasked, _masked_env(), n_steps=32, batch_size=32)
    assert isinstance(model.ref_policy, MaskableActorCriticPolicy)
    assert th.equal(model.ref_policy.action_net.weight, unmasked.action_net.weight)


def test_a_reference_of_another_architecture_is_refused(zips):
    """Feed-forward and recurrent policies do not mix, in either direction; from_pretrained needs the same LSTM."""
    with pytest.raises(ValueError, match=r"`ref_policy` is a feed-forward policy \(ActorCriticPolicy\); RecurrentPPOKL takes"):
        RecurrentPPOKL("MlpLstmPolicy", "CartPole-v1", ref_policy=_other_policy("CartPole-v1", 0))
    with pytest.raises(ValueError, match="`ref_policy` is a recurrent policy .*; PPOKL takes feed-forward reference"):
        PPOKL("MlpPolicy", "CartPole-v1", ref_policy=zips["recurrent"])
    with pytest.raises(ValueError, match=r"`pretrained` \(RecurrentActorCriticPolicy\) has a different architecture"):
        RecurrentPPOKL.from_pretrained(zips["recurrent"], "CartPole-v1", policy_kwargs=dict(lstm_hidden_size=16))
    with pytest.raises(ValueError, match="`pretrained` is a ActorCriticPolicy; RecurrentPPOKL fine-tunes the policies"):
        RecurrentPPOKL.from_pretrained(zips["ppo_cartpole"], "CartPole-v1")


# ---------------------------------------------------------------------------------------------------------------
# RecurrentPPOKL's reference: its own LSTM states

LSTM = dict(lstm_hidden_size=8, net_arch=dict(pi=[8], vf=[8]))


def _recurrent_other_policy(seed):
    """A recurrent reference the new policies differ from clearly: shifted logits."""
    policy = RecurrentPPO("MlpLstmPolicy", "CartPole-v1", seed=seed, device="cpu", policy_kwargs=LSTM).policy
    with th.no_grad():
        policy.action_net.bias += th.linspace(-1.0, 1.0, policy.action_net.bias.numel())
    return policy


def _run_lstm(lstm, features, starts, state):
    """``lstm`` step by step over ``features`` (T, d), zeroing the state where an episode starts; outputs and last state."""
    outputs = []
    for x, start in zip(features, starts):
        state = tuple(part * (1.0 - start) for part in state)
        out, state = lstm(x.view(1, 1, -1), state)
        outputs.append(out.view(-1))
    return th.stack(outputs), state


def _zeros(lstm, n=1):
    return (th.zeros(lstm.num_layers, n, lstm.hidden_size), th.zeros(lstm.num_layers, n, lstm.hidden_size))


def _recurrent_log_probs(policy, obs, starts, state=None):
    """The log-probabilities of CartPole's 2 actions at every step of one environment's rollout, and the last state."""
    latent, state = _run_lstm(policy.lstm_actor, policy.extract_features(obs), starts, state or _zeros(policy.lstm_actor))
    return th.log_softmax(policy.action_net(policy.mlp_extractor.forward_actor(latent)), dim=-1), state


def _recurrent_values(policy, obs, starts):
    latent, _ = _run_lstm(policy.lstm_critic, policy.extract_features(obs), starts, _zeros(policy.lstm_critic))
    return policy.value_net(policy.mlp_extractor.forward_critic(latent)).flatten()


def test_recurrent_train_matches_hand_written_loss_with_reference(monkeypatch):
    """
    RecurrentPPOKL with a recurrent reference: two SGD epochs on one minibatch by learn() and by a written-out loss
    agree. One environment, the rollout cut only where episodes start (the buffer's random cut point pinned to 0):
    every sequence then starts from a zero state, and every policy is run by hand step by step over the rollout.
    """
    ref = _recurrent_other_policy(7)
    model = RecurrentPPOKL(
        "MlpLstmPolicy",
        "CartPole-v1",
        n_steps=N_STEPS,
        batch_size=N_STEPS,
        n_epochs=2,
        learning_rate=LR,
        kl_coef=BETA,
        ref_policy=ref,
        ref_kl_coef=REF_COEF,
        ent_coef=0.01,
        vf_coef=VF_COEF,
        max_grad_norm=1e9,
        policy_kwargs=dict(**LSTM, **SGD),
        seed=0,
    )
    hand = copy.deepcopy(model.policy)
    monkeypatch.setattr(np.random, "randint", lambda *args, **kwargs: 0)
    model.learn(N_STEPS)

    obs, actions, old_log_prob, advantages, returns = rollout_tensors(model)
    starts = th.as_tensor(model.rollout_buffer.episode_starts).flatten()
    assert starts[1:].any(), "the rollout should cross an episode boundary"
    with th.no_grad():
        old_dist, _ = _recurrent_log_probs(hand, obs, starts)
        ref_dist, _ = _recurrent_log_probs(ref, obs, starts)
    assert th.allclose(model.rollout_buffer.ref_dist_params, ref_dist, atol=1e-5)

    def loss():
        dist = _recurrent_log_probs(hand, obs, starts)[0]
        ratio = th.exp(_log_prob(dist, actions, True) - old_log_prob)
        return (
            -(ratio * advantages).mean()
            + BETA * _kl(old_dist, dist, True).mean()
            + REF_COEF * _kl(ref_dist, dist, True).mean()  # KL[pi_ref || pi_theta]
            + VF_COEF * F.mse_loss(returns, _recurrent_values(hand, obs, starts))
            - 0.01 * _entropy(dist, True).mean()
        )

    sgd_by_hand(hand, loss, steps=2, lr=LR)
    for (name, ours), theirs in zip(model.policy.named_parameters(), hand.parameters()):
        assert th.allclose(ours, theirs, atol=1e-5), name
    with th.no_grad():
        ref_kl = _kl(ref_dist, _recurrent_log_probs(hand, obs, starts)[0], True).mean().item()
    assert model.logger.name_to_value["train/ref_kl"] == pytest.approx(ref_kl, rel=1e-4)


def test_recurrent_reference_keeps_its_own_lstm_states_across_rollouts(monkeypatch):
    """
    Two environments, three rollouts, the pass cut into chunks of 3 steps: the reference distribution is, for every
    sample, the reference run step by step over each environment's whole history from a zero state.
    """
    import sb3_ppo_kl.ppo_kl_recurrent.ppo_kl_recurrent as recurrent_module

    monkeypatch.setattr(recurrent_module, "FULL_PASS_BATCH_SIZE", 6)
    ref = _recurrent_other_policy(3)
    env = make_vec_env("CartPole-v1", n_envs=2, seed=1)
    model = RecurrentPPOKL(
        "MlpLstmPolicy",
        env,
        n_steps=20,
        batch_size=16,
        n_epochs=1,
        ref_policy=ref,
        policy_kwargs=LSTM,
        seed=0,
    )
    snapshots = []
    reference_pass = model._reference_dist_params

    def recording(ref_policy):
        params = reference_pass(ref_policy)
        buffer = model.rollout_buffer  # environment-major once flattened by get()
        flat = (lambda array: array) if buffer.generator_ready else buffer.swap_and_flatten
        snapshots.append((flat(buffer.observations).copy(), flat(buffer.episode_starts).copy(), params))
        return params

    monkeypatch.setattr(model, "_reference_dist_params", recording)
    model.learn(3 * 40)
    assert len(snapshots) == 3 and model.rollout_buffer.ref_dist_params is snapshots[-1][2]
    states = [_zeros(ref.lstm_actor), _zeros(ref.lstm_actor)]
    with th.no_grad():
        for observations, episode_starts, stored in snapshots:
            for env_index in range(2):
                rows = slice(env_index * 20, (env_index + 1) * 20)
                expected, states[env_index] = _recurrent_log_probs(
                    ref, th.as_tensor(observations[rows]), th.as_tensor(episode_starts[rows]).flatten(), states[env_index]
                )
                assert th.allclose(stored[rows], expected, atol=1e-5)
    assert all(th.equal(a, b[:, i : i + 1]) for i in range(2) for a, b in zip(states[i], model._ref_lstm_states))


def test_recurrent_ppo_kl_fine_tunes_a_pretrained_recurrent_ppo(zips):
    """from_pretrained with a RecurrentPPO zip: the policy and the reference start as it; the first update's KL to the
    reference is its KL to the rollout policy, each evaluated with its own LSTM states (the same, from zeros)."""
    expert = RecurrentPPO.load(zips["recurrent"], device="cpu")
    model = RecurrentPPOKL.from_pretrained(zips["recurrent"], "CartPole-v1", n_steps=32, batch_size=16, seed=0)
    assert type(model.ref_policy) is type(expert.policy) and model.ref_policy is not model.policy
    for name, policy in (("policy", model.policy), ("ref_policy", model.ref_policy)):
        for key, value in expert.policy.state_dict().items():
            assert th.equal(policy.state_dict()[key], value), (name, key)
    model.learn(32)
    values = model.logger.name_to_value
    assert 0 < values["train/ref_kl"] == pytest.approx(values["train/kl"], rel=1e-4)
    model.learn(64, reset_num_timesteps=False)
    assert model.logger.name_to_value["train/ref_kl"] > 0 and model._ref_lstm_states is not None


class _DictObservation(gym.ObservationWrapper):
    def __init__(self, env):
        super().__init__(env)
        self.observation_space = gym.spaces.Dict({"obs": env.observation_space})

    def observation(self, observation):
        return {"obs": observation}


@pytest.mark.parametrize("env_id", ["Pendulum-v1", "dict"])
def test_recurrent_reference_with_box_actions_and_dict_observations(env_id):
    """
    Fine-tuning a pretrained recurrent policy over 3 environments: the reference, run with its own LSTM states, gives
    exactly the rollout policy's distributions at the first update (KL to the reference == d), sample by sample.
    """
    make = (lambda: _DictObservation(gym.make("CartPole-v1"))) if env_id == "dict" else env_id
    env = make_vec_env(make, n_envs=3, seed=0)
    policy = "MultiInputLstmPolicy" if env_id == "dict" else "MlpLstmPolicy"
    pretrained = RecurrentPPO(policy, env, seed=1, policy_kwargs=LSTM).policy
    model = RecurrentPPOKL.from_pretrained(pretrained, env, n_steps=24, batch_size=20, n_epochs=2, seed=0)
    model.learn(72)
    values = model.logger.name_to_value
    assert 0 < values["train/ref_kl"] == pytest.approx(values["train/kl"], rel=1e-4)
    model._snapshot_rollout_policy()  # the policy after the update, on the last rollout: no longer the reference
    assert not th.allclose(model.rollout_buffer.old_dist_params, model.rollout_buffer.ref_dist_params)


def test_recurrent_save_load_with_the_reference_continues_identically(tmp_path):
    """
    A loaded model, given the same transient state as the saved one (environment, last observation, its own and the
    reference's LSTM states, which RecurrentPPO does not save), continues exactly as the saved one.
    """
    from stable_baselines3.common.utils import set_random_seed

    env = make_vec_env("CartPole-v1", n_envs=2, seed=0)
    model = RecurrentPPOKL(
        "MlpLstmPolicy",
        env,
        n_steps=16,
        batch_size=16,
        n_epochs=2,
        ref_policy=_recurrent_other_policy(5),
        ref_kl_coef=0.5,
        ref_tau=0.2,
        policy_kwargs=LSTM,
        seed=0,
    )
    model.learn(64)
    model.save(tmp_path / "model")
    loaded = RecurrentPPOKL.load(tmp_path / "model", env=copy.deepcopy(model.env))
    assert loaded._ref_lstm_states is None  # as RecurrentPPO's own states: zeros after loading
    assert (loaded.ref_kl_coef, loaded.ref_tau, loaded._n_ref_updates) == (0.5, 0.2, 2)
    for key, value in model.ref_policy.state_dict().items():
        assert th.equal(loaded.ref_policy.state_dict()[key], value), key
    assert not loaded.ref_policy.training and not any(p.requires_grad for p in loaded.ref_policy.parameters())
    loaded._last_lstm_states = copy.deepcopy(model._last_lstm_states)
    loaded._ref_lstm_states = copy.deepcopy(model._ref_lstm_states)
    loaded._last_obs, loaded._last_episode_starts = model._last_obs.copy(), model._last_episode_starts.copy()
    for continued in (model, loaded):
        set_random_seed(1)
        continued.learn(64, reset_num_timesteps=False)
    for (name, a), b in zip(model.policy.named_parameters(), loaded.policy.parameters()):
        assert th.equal(a, b), name
    for key, value in model.ref_policy.state_dict().items():  # moved alike
        assert th.equal(loaded.ref_policy.state_dict()[key], value), key
    assert th.equal(loaded.rollout_buffer.ref_dist_params, model.rollout_buffer.ref_dist_params)


# ---------------------------------------------------------------------------------------------------------------
# A reference that moves: ref_tau


class BatchNormLinear(BaseFeaturesExtractor):
    """A features extractor with batch norm: running statistics are buffers, which a moving reference copies."""

    def __init__(self, observation_space, features_dim=8):
        super().__init__(observation_space, features_dim)
        self.linear = th.nn.Linear(int(np.prod(observation_space.shape)), features_dim)
        self.norm = th.nn.BatchNorm1d(features_dim)

    def forward(self, obs):
        return th.tanh(self.norm(self.linear(obs)))


def _moving(algo, ref_tau, **kwargs):
    """``algo`` fine-tuning a pretrained policy of its own class (the reference starts as it)."""
    policy, pretrained = ("MlpLstmPolicy", RecurrentPPO) if algo is RecurrentPPOKL else ("MlpPolicy", PPO)
    policy_kwargs = LSTM if algo is RecurrentPPOKL else dict(features_extractor_class=BatchNormLinear)
    source = pretrained(policy, "CartPole-v1", seed=1, policy_kwargs=policy_kwargs).policy
    env = make_vec_env("CartPole-v1", n_envs=2, seed=0)
    model = algo.from_pretrained(
        source,
        env,
        n_steps=16,
        batch_size=16,
        n_epochs=2,
        ref_tau=ref_tau,
        seed=0,
        **kwargs,
    )
    return model, source


def _state(policy):
    return copy.deepcopy(policy.state_dict())


@pytest.mark.parametrize("algo", [PPOKL, RecurrentPPOKL])
def test_soft_update_moves_the_reference_by_ref_tau(algo):
    """After one update with ref_tau=0.25 every weight of the reference is 0.75 * before + 0.25 * policy; buffers (batch
    norm's running statistics) are the policy's; the KL logged is the one to the reference before it moved."""
    model, _ = _moving(algo, 0.25)
    before = _state(model.ref_policy)
    model.learn(32)
    policy, reference = model.policy.state_dict(), model.ref_policy.state_dict()
    assert set(reference) == set(policy)
    parameters = dict(model.ref_policy.named_parameters(remove_duplicate=False))  # shared modules under all their names
    moved = 0
    for key, value in reference.items():
        if key in parameters:
            th.testing.assert_close(value, 0.75 * before[key] + 0.25 * policy[key], rtol=1e-6, atol=1e-7)
            moved += not th.equal(value, before[key])
        else:
            assert th.equal(value, policy[key]), key  # a buffer: copied
    assert moved > len(parameters) // 2  # the policy did move, and the reference with it
    if algo is PPOKL:
        assert any("running_mean" in key for key in reference) and not th.equal(
            reference["features_extractor.norm.running_mean"], before["features_extractor.norm.running_mean"]
        )
    else:
        assert any(key.startswith("lstm_actor.") for key in parameters)
    values = model.logger.name_to_value
    assert values["train/ref_updates"] == 1 and values["train/ref_kl"] > 0
    assert not model.ref_policy.training and not any(p.requires_grad for p in model.ref_policy.parameters())


def test_hard_reset_after_every_update():
    """ref_tau=1: the reference is the policy after every update."""
    model, source = _moving(PPOKL, 1.0)
    for update in (1, 2):
        model.learn(32, reset_num_timesteps=update == 1)
        policy = model.policy.state_dict()
        for key, value in model.ref_policy.state_dict().items():
            assert th.equal(value, policy[key]), key
        assert model.logger.name_to_value["train/ref_updates"] == update
    assert not th.equal(policy["action_net.weight"], source.state_dict()["action_net.weight"])


def test_frozen_with_ref_tau_0():
    model, source = _moving(PPOKL, 0.0)
    assert model.ref_tau == 0.0
    model.learn(64)
    for key, value in source.state_dict().items():
        assert th.equal(model.ref_policy.state_dict()[key], value), key
    assert "train/ref_updates" not in model.logger.name_to_value


def test_save_load_keeps_the_moved_reference_and_its_count(tmp_path):
    """The loaded model keeps the moved weights and the count of moves, and moves on from there."""
    model, _ = _moving(PPOKL, 0.5)
    model.learn(64)
    assert model._n_ref_updates == 2
    model.save(tmp_path / "model")
    loaded = PPOKL.load(tmp_path / "model", env=make_vec_env("CartPole-v1", n_envs=2, seed=0))
    assert (loaded.ref_tau, loaded._n_ref_updates) == (0.5, 2)
    for key, value in model.ref_policy.state_dict().items():
        assert th.equal(loaded.ref_policy.state_dict()[key], value), key
    assert not th.equal(loaded.ref_policy.action_net.weight, loaded.policy.action_net.weight)
    before = _state(loaded.ref_policy)
    loaded.learn(32, reset_num_timesteps=False)
    policy = loaded.policy.state_dict()
    th.testing.assert_close(
        loaded.ref_policy.action_net.weight, 0.5 * before["action_net.weight"] + 0.5 * policy["action_net.weight"]
    )
    assert loaded.logger.name_to_value["train/ref_updates"] == 3


def test_a_moving_reference_of_another_architecture_is_refused(zips):
    other = PPO("MlpPolicy", "CartPole-v1", seed=0, policy_kwargs=dict(net_arch=[32])).policy
    PPOKL("MlpPolicy", "CartPole-v1", ref_policy=other)  # a frozen reference may differ
    with pytest.raises(ValueError, match=r"`ref_tau`=0.1 moves the reference .* `ref_policy` \(ActorCriticPolicy\) must have"):
        PPOKL("MlpPolicy", "CartPole-v1", ref_policy=other, ref_tau=0.1)
    with pytest.raises(ValueError, match=r"`ref_tau`.*weights only the policy has: \['mlp_extractor.policy_net.2.bias'"):
        PPOKL("MlpPolicy", "CartPole-v1", ref_policy=other, ref_tau=1.0)
    with pytest.raises(
        ValueError, match=r"`ref_tau`.*shapes that differ \(`ref_policy` vs the policy\): .*'lstm_actor.weight_ih_l0"
    ):
        RecurrentPPOKL("MlpLstmPolicy", "CartPole-v1", ref_policy=zips["recurrent"], ref_tau=1.0)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(ref_tau=-0.1), ValueError, r"`ref_tau` must be a finite number in \[0, 1\], got -0.1"),
        (dict(ref_tau=1.5), ValueError, r"`ref_tau` must be a finite number in \[0, 1\], got 1.5"),
        (dict(ref_tau=float("nan")), ValueError, r"`ref_tau` must be a finite number in \[0, 1\]"),
        (dict(ref_tau="0.1"), TypeError, r"`ref_tau` must be a finite number in \[0, 1\], got '0.1'"),
        (dict(ref_tau=True), TypeError, r"`ref_tau` must be a finite number in \[0, 1\], got True"),
        (dict(ref_tau=None), TypeError, r"`ref_tau` must be a finite number in \[0, 1\]"),
        (dict(ref_policy=None, ref_tau=0.5), ValueError, "`ref_tau` applies to a reference policy; give `ref_policy`"),
    ],
)
def test_invalid_moving_reference_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        PPOKL("MlpPolicy", "CartPole-v1", **{"ref_policy": PPO("MlpPolicy", "CartPole-v1", seed=0).policy, **kwargs})
    with pytest.raises(error, match=message):  # from_pretrained passes them on to its default reference
        PPOKL.from_pretrained(PPO("MlpPolicy", "CartPole-v1", seed=0), "CartPole-v1", **kwargs)


def test_from_pretrained_takes_a_model():
    expert = PPO("MlpPolicy", "CartPole-v1", seed=3)
    model = PPOKL.from_pretrained(expert, "CartPole-v1", n_steps=32, batch_size=32, ref_tau=0.5)
    assert model.ref_tau == 0.5
    for key, value in expert.policy.state_dict().items():
        assert th.equal(model.policy.state_dict()[key], value) and th.equal(model.ref_policy.state_dict()[key], value)
