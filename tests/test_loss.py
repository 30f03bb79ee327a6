"""The PPO1 loss and the old-policy snapshot, against a hand-written reference."""

import copy

import numpy as np
import pytest
import torch as th
from conftest import rollout_tensors, sgd_by_hand
from torch.distributions import Categorical, Normal, kl_divergence
from torch.nn import functional as F

from sb3_ppo_kl import PPOKL, distribution_params

LR, BETA, ENT_COEF, VF_COEF, N_STEPS = 0.05, 0.7, 0.01, 0.5, 32


def _reference_distribution(policy, obs, discrete):
    features = policy.extract_features(obs)
    latent_pi, latent_vf = policy.mlp_extractor(features)
    out = policy.action_net(latent_pi)
    dist = Categorical(logits=out) if discrete else Normal(out, th.ones_like(out) * policy.log_std.exp())
    return dist, policy.value_net(latent_vf).flatten()


def _log_prob(dist, actions, discrete):
    return dist.log_prob(actions.long().flatten()) if discrete else dist.log_prob(actions).sum(-1)


def _kl(old, new, discrete):
    kl = kl_divergence(old, new)
    return kl if discrete else kl.sum(-1)


@pytest.mark.parametrize("env_id", ["Pendulum-v1", "CartPole-v1"])
@pytest.mark.parametrize("clip_range", [None, 0.2])
def test_train_matches_hand_written_ppo1(env_id, clip_range):
    """Two epochs of plain SGD on one minibatch, done by PPOKL.train() and by hand, give the same parameters and beta."""
    discrete = env_id == "CartPole-v1"
    model = PPOKL(
        "MlpPolicy",
        env_id,
        n_steps=N_STEPS,
        batch_size=N_STEPS,
        n_epochs=2,
        learning_rate=LR,
        kl_coef=BETA,
        clip_range=clip_range,
        ent_coef=ENT_COEF,
        vf_coef=VF_COEF,
        max_grad_norm=1e9,
        policy_kwargs=dict(optimizer_class=th.optim.SGD, optimizer_kwargs={}),
        seed=0,
    )
    reference = copy.deepcopy(model.policy)
    model.learn(N_STEPS)

    obs, actions, old_log_prob, advantages, returns = rollout_tensors(model)
    with th.no_grad():
        old_dist, _ = _reference_distribution(reference, obs, discrete)
        assert th.allclose(_log_prob(old_dist, actions, discrete), old_log_prob, atol=1e-5)

    def loss():
        dist, values = _reference_distribution(reference, obs, discrete)
        ratio = th.exp(_log_prob(dist, actions, discrete) - old_log_prob)
        surrogate = ratio * advantages
        if clip_range is not None:
            surrogate = th.min(surrogate, th.clamp(ratio, 1 - clip_range, 1 + clip_range) * advantages)
        entropy = dist.entropy() if discrete else dist.entropy().sum(-1)
        return (
            -surrogate.mean()
            + BETA * _kl(old_dist, dist, discrete).mean()
            + VF_COEF * F.mse_loss(returns, values)
            - ENT_COEF * entropy.mean()
        )

    sgd_by_hand(reference, loss, steps=2, lr=LR)

    for ours, theirs in zip(model.policy.parameters(), reference.parameters()):
        assert th.allclose(ours, theirs, atol=1e-5)

    with th.no_grad():
        d = _kl(old_dist, _reference_distribution(reference, obs, discrete)[0], discrete).mean().item()
    assert d > 0
    expected_beta = BETA / 2 if d < 0.01 / 1.5 else BETA * 2 if d > 0.01 * 1.5 else BETA
    assert model.kl_coef == pytest.approx(expected_beta)
    assert model.logger.name_to_value["train/kl"] == pytest.approx(d, rel=1e-4)


@pytest.mark.parametrize("env_id", ["Pendulum-v1", "CartPole-v1"])
def test_kl_is_zero_before_the_first_step(env_id, rollout):
    model = PPOKL("MlpPolicy", env_id, n_steps=64, batch_size=16, seed=1)
    rollout(model)
    model._snapshot_rollout_policy()
    assert model._rollout_kl() == (pytest.approx(0.0, abs=1e-10), None)
    # ... and so is every minibatch's KL against the snapshot
    for batch in model.rollout_buffer.get(16):
        _, log_prob, _ = model._evaluate_actions(batch.data)
        assert th.allclose(model._kl_to_old(batch, log_prob), th.zeros(16), atol=1e-7)


@pytest.mark.parametrize("env_id", ["Pendulum-v1", "CartPole-v1"])
def test_snapshot_is_the_rollout_policy_and_is_not_overwritten(env_id, rollout):
    model = PPOKL("MlpPolicy", env_id, n_steps=64, batch_size=16, n_epochs=3, learning_rate=1e-2, seed=2)
    rollout(model)
    rollout_policy = copy.deepcopy(model.policy)
    model.train()

    buffer = model.rollout_buffer
    obs = th.as_tensor(buffer.observations)  # flattened by get(), in the order the snapshot is indexed
    with th.no_grad():
        expected = distribution_params(rollout_policy.get_distribution(obs))
        after_update = distribution_params(model.policy.get_distribution(obs))
    assert th.allclose(buffer.old_dist_params, expected, atol=1e-6)
    assert not th.allclose(buffer.old_dist_params, after_update, atol=1e-4)
    # log-probs stored during the rollout agree with the snapshot: it is pi_old
    log_prob = rollout_policy.get_distribution(obs).log_prob(
        th.as_tensor(buffer.actions).squeeze(-1) if env_id == "CartPole-v1" else th.as_tensor(buffer.actions)
    )
    assert np.allclose(log_prob.detach().numpy(), buffer.log_probs.flatten(), atol=1e-5)


def test_evaluate_actions_leaves_this_batch_distribution_in_the_policy(rollout):
    """PPOKL reads the current distribution from policy.action_dist after evaluate_actions (SB3 fills it in place)."""
    model = PPOKL("MlpPolicy", "Pendulum-v1", n_steps=64, batch_size=16, seed=3)
    rollout(model)
    batch = next(model.rollout_buffer.get(16))
    _, log_prob, _ = model._evaluate_actions(batch.data)
    assert th.equal(model.policy.action_dist.log_prob(batch.data.actions), log_prob)


# kl_target at the only update of learn(N_STEPS): progress_remaining is 0 there
SCHEDULE = lambda progress: 0.0005 + 0.02 * progress


def test_kl_target_schedule_matches_hand_written_loss_and_controller():
    """A kl_target schedule: two SGD epochs by PPOKL.train() and by a written-out loss give the same parameters, and
    beta follows the paper's rule with the schedule's value at the update (not its value at the start)."""
    target = SCHEDULE(0.0)
    model = PPOKL(
        "MlpPolicy",
        "Pendulum-v1",
        n_steps=N_STEPS,
        batch_size=N_STEPS,
        n_epochs=2,
        learning_rate=LR,
        kl_coef=BETA,
        kl_target=SCHEDULE,
        max_grad_norm=1e9,
        policy_kwargs=dict(optimizer_class=th.optim.SGD, optimizer_kwargs={}),
        seed=0,
    )
    reference = copy.deepcopy(model.policy)
    model.learn(N_STEPS)

    obs, actions, old_log_prob, advantages, returns = rollout_tensors(model)
    with th.no_grad():
        old_dist, _ = _reference_distribution(reference, obs, False)
    penalties = []

    def loss():
        dist, values = _reference_distribution(reference, obs, False)
        ratio = th.exp(_log_prob(dist, actions, False) - old_log_prob)
        penalty = BETA * _kl(old_dist, dist, False).mean()
        penalties.append(penalty.item())
        return -(ratio * advantages).mean() + penalty + 0.5 * F.mse_loss(returns, values)

    sgd_by_hand(reference, loss, steps=2, lr=LR)

    for ours, theirs in zip(model.policy.parameters(), reference.parameters()):
        assert th.allclose(ours, theirs, atol=1e-5)
    assert model.logger.name_to_value["train/kl_penalty"] == pytest.approx(np.mean(penalties), rel=1e-4)
    with th.no_grad():
        d = _kl(old_dist, _reference_distribution(reference, obs, False)[0], False).mean().item()
    assert model.logger.name_to_value["train/kl"] == pytest.approx(d, rel=1e-4)
    assert model.logger.name_to_value["train/kl_target"] == pytest.approx(target)
    expected_beta = BETA / 2 if d < target / 1.5 else BETA * 2 if d > target * 1.5 else BETA
    start_beta = BETA / 2 if d < SCHEDULE(1.0) / 1.5 else BETA * 2 if d > SCHEDULE(1.0) * 1.5 else BETA
    assert expected_beta != start_beta  # the test tells the update's target from the starting one
    assert model.kl_coef == pytest.approx(expected_beta, rel=1e-4)
