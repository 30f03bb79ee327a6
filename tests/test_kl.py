"""The KL machinery: the beta rule and the per-state KL against closed forms."""

import numpy as np
import pytest
import torch as th
from stable_baselines3.common.distributions import (
    BernoulliDistribution,
    CategoricalDistribution,
    DiagGaussianDistribution,
    MultiCategoricalDistribution,
    SquashedDiagGaussianDistribution,
    StateDependentNoiseDistribution,
    kl_divergence,
)

from sb3_ppo_kl import KLCoefController, distribution_params, has_analytic_kl, per_state_kl, sampled_kl

BATCH = 7


# ---------------------------------------------------------------- the beta rule


@pytest.mark.parametrize(
    "kl, expected",
    [
        (0.01 / 1.5 - 1e-6, 0.5),  # below target / tolerance: halve
        (0.0, 0.5),
        (0.01 / 1.5 + 1e-6, 1.0),  # inside the band: unchanged
        (0.01, 1.0),
        (0.01 * 1.5 - 1e-6, 1.0),
        (0.01 * 1.5 + 1e-6, 2.0),  # above target * tolerance: double
        (5.0, 2.0),
    ],
)
def test_beta_rule_branches(kl, expected):
    controller = KLCoefController(kl_coef=1.0, kl_target=0.01)
    assert controller.update(kl) == expected
    assert controller.kl_coef == expected


def test_beta_rule_custom_tolerance_and_factor():
    controller = KLCoefController(kl_coef=1.0, kl_target=0.02, kl_tolerance=2.0, kl_adapt_factor=1.5)
    assert controller.update(0.0099) == pytest.approx(1 / 1.5)  # 0.0099 < 0.02 / 2
    assert controller.update(0.011) == pytest.approx(1 / 1.5)  # within [0.01, 0.04]
    assert controller.update(0.041) == pytest.approx(1.0)
    assert controller.update(0.041) == pytest.approx(1.5)


def test_beta_is_clamped_to_bounds():
    controller = KLCoefController(kl_coef=1.0, kl_target=0.01, kl_coef_bounds=(0.3, 3.0))
    assert [controller.update(0.0) for _ in range(3)] == [0.5, 0.3, 0.3]
    assert [controller.update(1.0) for _ in range(5)] == [0.6, 1.2, 2.4, 3.0, 3.0]


def test_beta_default_bounds_stop_vanishing_and_overflow():
    controller = KLCoefController()
    assert controller.kl_coef_bounds == (1e-4, 1e4)
    for _ in range(100):
        controller.update(0.0)
    assert controller.kl_coef == 1e-4
    for _ in range(100):
        controller.update(1e9)
    assert controller.kl_coef == 1e4


def test_fixed_beta_never_changes():
    controller = KLCoefController(kl_coef=3.0, adaptive_kl=False)
    for kl in (0.0, 0.01, 10.0):
        assert controller.update(kl) == 3.0


def test_zero_low_bound_is_refused_for_an_adaptive_beta_only():
    # halving would take an adaptive beta to exactly 0, where doubling leaves it for good
    with pytest.raises(ValueError, match="`kl_coef_bounds` must have low > 0 when the coefficient adapts"):
        KLCoefController(kl_coef=1.0, kl_coef_bounds=(0.0, 10.0))
    assert KLCoefController(kl_coef=0.0, adaptive_kl=False, kl_coef_bounds=(0.0, 10.0)).update(0.0) == 0.0


def test_beta_at_the_lower_bound_rises_again():
    controller = KLCoefController(kl_coef=1e-4, kl_coef_bounds=(1e-4, 1e4))
    assert controller.update(0.0) == 1e-4
    assert controller.update(1.0) == 2e-4


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(kl_target=0.0), "kl_target"),
        (dict(kl_target=-0.01), "kl_target"),
        (dict(kl_target=float("nan")), "kl_target"),
        (dict(kl_coef=-1.0), "kl_coef"),
        (dict(kl_tolerance=1.0), "kl_tolerance"),
        (dict(kl_tolerance=0.5), "kl_tolerance"),
        (dict(kl_adapt_factor=1.0), "kl_adapt_factor"),
        (dict(kl_coef_bounds=(1.0, 0.1)), "kl_coef_bounds"),
        (dict(kl_coef_bounds=(-0.1, 1.0)), "kl_coef_bounds"),
        (dict(kl_coef_bounds=(0.1,)), "kl_coef_bounds"),
        (dict(kl_coef=100.0, kl_coef_bounds=(0.1, 10.0)), "kl_coef"),
        (dict(kl_coef_bounds=(0.0, 10.0)), "kl_coef_bounds"),
    ],
)
def test_controller_rejects_bad_input(kwargs, name):
    with pytest.raises(ValueError, match=name):
        KLCoefController(**kwargs)


def test_controller_rejects_non_finite_kl():
    with pytest.raises(ValueError, match="finite"):
        KLCoefController().update(float("nan"))


def test_fixed_beta_may_lie_outside_bounds():
    assert KLCoefController(kl_coef=100.0, adaptive_kl=False, kl_coef_bounds=(0.1, 10.0)).kl_coef == 100.0


# ---------------------------------------------------------------- the per-state KL


def _gaussian_closed_form(m0, s0, m1, s1):
    return np.sum(np.log(s1 / s0) + (s0**2 + (m0 - m1) ** 2) / (2 * s1**2) - 0.5, axis=-1)


def _categorical_closed_form(p, q):
    return np.sum(p * np.log(p / q), axis=-1)


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_diag_gaussian_kl_closed_form():
    th.manual_seed(0)
    dim = 3
    m0, m1 = th.randn(BATCH, dim, dtype=th.float64), th.randn(BATCH, dim, dtype=th.float64)
    log_s0, log_s1 = th.randn(dim, dtype=th.float64) * 0.5, th.randn(dim, dtype=th.float64) * 0.5
    old = DiagGaussianDistribution(dim).proba_distribution(m0, log_s0)
    new = DiagGaussianDistribution(dim).proba_distribution(m1, log_s1)
    expected = _gaussian_closed_form(m0.numpy(), log_s0.exp().numpy(), m1.numpy(), log_s1.exp().numpy())
    kl = per_state_kl(distribution_params(old), new)
    assert kl.shape == (BATCH,)
    np.testing.assert_allclose(kl.numpy(), expected, rtol=1e-10)
    # SB3's kl_divergence is per dimension: our per-state KL is its sum
    np.testing.assert_allclose(kl.numpy(), kl_divergence(old, new).sum(-1).numpy(), rtol=1e-10)
    # a distribution object is accepted for `old` as well
    np.testing.assert_allclose(per_state_kl(old, new).numpy(), expected, rtol=1e-10)


def test_squashed_gaussian_kl_is_the_pre_tanh_kl():
    th.manual_seed(1)
    m0, m1, log_s = th.randn(BATCH, 2), th.randn(BATCH, 2), th.zeros(2)
    old = SquashedDiagGaussianDistribution(2).proba_distribution(m0, log_s)
    new = SquashedDiagGaussianDistribution(2).proba_distribution(m1, log_s)
    np.testing.assert_allclose(per_state_kl(old, new).numpy(), 0.5 * ((m0 - m1) ** 2).sum(-1).numpy(), rtol=1e-5)


@pytest.mark.parametrize("squash_output", [False, True])
def test_gsde_kl_closed_form(squash_output):
    th.manual_seed(2)
    dim, latent_dim = 2, 4
    dist_old = StateDependentNoiseDistribution(dim, squash_output=squash_output)
    dist_new = StateDependentNoiseDistribution(dim, squash_output=squash_output)
    latent = th.randn(BATCH, latent_dim, dtype=th.float64)
    log_std0 = th.randn(latent_dim, dim, dtype=th.float64) * 0.3
    log_std1 = th.randn(latent_dim, dim, dtype=th.float64) * 0.3
    m0, m1 = th.randn(BATCH, dim, dtype=th.float64), th.randn(BATCH, dim, dtype=th.float64)
    dist_old.sample_weights(log_std0)
    dist_new.sample_weights(log_std1)
    old = dist_old.proba_distribution(m0, log_std0, latent)
    new = dist_new.proba_distribution(m1, log_std1, latent)
    # gSDE's per-state variance: sum_j latent_j^2 * std_jk^2 (+ epsilon)
    s0 = np.sqrt((latent.numpy() ** 2) @ (np.exp(log_std0.numpy()) ** 2) + dist_old.epsilon)
    s1 = np.sqrt((latent.numpy() ** 2) @ (np.exp(log_std1.numpy()) ** 2) + dist_new.epsilon)
    expected = _gaussian_closed_form(m0.numpy(), s0, m1.numpy(), s1)
    np.testing.assert_allclose(per_state_kl(old, new).numpy(), expected, rtol=1e-8)


def test_categorical_kl_closed_form():
    th.manual_seed(3)
    l0, l1 = th.randn(BATCH, 5, dtype=th.float64), th.randn(BATCH, 5, dtype=th.float64)
    old = CategoricalDistribution(5).proba_distribution(l0)
    new = CategoricalDistribution(5).proba_distribution(l1)
    expected = _categorical_closed_form(_softmax(l0.numpy()), _softmax(l1.numpy()))
    np.testing.assert_allclose(per_state_kl(old, new).numpy(), expected, rtol=1e-10)
    np.testing.assert_allclose(per_state_kl(old, new).numpy(), kl_divergence(old, new).numpy(), rtol=1e-10)


def test_multicategorical_kl_is_the_sum_over_sub_actions():
    th.manual_seed(4)
    nvec = [3, 2, 4]
    l0, l1 = th.randn(BATCH, sum(nvec), dtype=th.float64), th.randn(BATCH, sum(nvec), dtype=th.float64)
    old = MultiCategoricalDistribution(nvec).proba_distribution(l0)
    new = MultiCategoricalDistribution(nvec).proba_distribution(l1)
    expected = sum(
        _categorical_closed_form(_softmax(a.numpy()), _softmax(b.numpy()))
        for a, b in zip(th.split(l0, nvec, dim=1), th.split(l1, nvec, dim=1))
    )
    np.testing.assert_allclose(per_state_kl(old, new).numpy(), expected, rtol=1e-10)


def test_bernoulli_kl_closed_form():
    th.manual_seed(5)
    l0, l1 = th.randn(BATCH, 4, dtype=th.float64), th.randn(BATCH, 4, dtype=th.float64)
    old = BernoulliDistribution(4).proba_distribution(l0)
    new = BernoulliDistribution(4).proba_distribution(l1)
    p, q = th.sigmoid(l0).numpy(), th.sigmoid(l1).numpy()
    expected = np.sum(p * np.log(p / q) + (1 - p) * np.log((1 - p) / (1 - q)), axis=-1)
    np.testing.assert_allclose(per_state_kl(old, new).numpy(), expected, rtol=1e-10)
    # SB3's kl_divergence does not sum Bernoulli dimensions: ours is its sum
    np.testing.assert_allclose(per_state_kl(old, new).numpy(), kl_divergence(old, new).sum(-1).numpy(), rtol=1e-10)


@pytest.mark.parametrize(
    "make",
    [
        lambda: DiagGaussianDistribution(3).proba_distribution(th.randn(BATCH, 3), th.zeros(3)),
        lambda: CategoricalDistribution(4).proba_distribution(th.randn(BATCH, 4)),
        lambda: MultiCategoricalDistribution([2, 3]).proba_distribution(th.randn(BATCH, 5)),
        lambda: BernoulliDistribution(3).proba_distribution(th.randn(BATCH, 3)),
    ],
)
def test_kl_of_a_distribution_with_itself_is_zero(make):
    dist = make()
    snapshot = distribution_params(dist).detach()
    assert th.allclose(per_state_kl(snapshot, dist), th.zeros(BATCH), atol=1e-6)


def test_kl_gradient_flows_into_the_new_policy():
    mean = th.zeros(BATCH, 2, requires_grad=True)
    log_std = th.zeros(2, requires_grad=True)
    old = distribution_params(DiagGaussianDistribution(2).proba_distribution(th.ones(BATCH, 2), th.zeros(2))).detach()
    per_state_kl(old, DiagGaussianDistribution(2).proba_distribution(mean, log_std)).sum().backward()
    # d/dm_new of (m_old - m_new)^2 / 2 = m_new - m_old = -1 per state
    assert th.allclose(mean.grad, -th.ones(BATCH, 2))
    assert log_std.grad is not None


def test_sampled_kl_is_unbiased_for_the_analytic_kl():
    th.manual_seed(6)
    old = DiagGaussianDistribution(2).proba_distribution(th.zeros(1, 2), th.zeros(2))
    new = DiagGaussianDistribution(2).proba_distribution(th.full((1, 2), 0.3), th.full((2,), -0.2))
    exact = per_state_kl(distribution_params(old), new).item()
    actions = old.distribution.sample((200_000,)).squeeze(1)
    estimate = sampled_kl(old.log_prob(actions), new.log_prob(actions))
    assert (estimate >= 0).all()
    assert estimate.mean().item() == pytest.approx(exact, rel=0.03)
    assert th.all(sampled_kl(old.log_prob(actions), old.log_prob(actions)) == 0)


def test_analytic_kl_coverage():
    assert all(
        has_analytic_kl(d)
        for d in (
            DiagGaussianDistribution(1),
            SquashedDiagGaussianDistribution(1),
            StateDependentNoiseDistribution(1),
            CategoricalDistribution(2),
            MultiCategoricalDistribution([2, 2]),
            BernoulliDistribution(2),
        )
    )


# ---------------------------------------------------------------- sb3-contrib's masked distributions


def _masked(make_dist, splits, seed):
    """
    Two distributions (old, new) over the same states, random logits, and random masks that leave at
    least one valid outcome in every sub-distribution (as an environment's masks do).
    """
    n_logits = sum(splits)
    gen = th.Generator().manual_seed(seed)
    l0 = th.randn(BATCH, n_logits, generator=gen)
    l1 = th.randn(BATCH, n_logits, generator=gen, requires_grad=True)
    masks = th.rand(BATCH, n_logits, generator=gen) > 0.4
    for segment in th.split(masks, splits, dim=1):  # views: keep one valid outcome per sub-distribution
        keep = th.randint(segment.shape[1], (BATCH,), generator=gen)
        segment[th.arange(BATCH), keep] = True
    old, new = make_dist(), make_dist()
    old.proba_distribution(l0)
    new.proba_distribution(l1)
    return old, new, masks, l1


def _valid_closed_form(old_logits, new_logits, masks, splits):
    """KL between the distributions renormalised over the valid outcomes, summed over sub-distributions."""
    total = np.zeros(BATCH)
    cuts = np.cumsum(splits)[:-1]
    for a, b, m in zip(np.split(old_logits, cuts, 1), np.split(new_logits, cuts, 1), np.split(masks, cuts, 1)):
        for i in range(BATCH):
            p, q = _softmax(a[i][m[i]].astype(np.float64)), _softmax(b[i][m[i]].astype(np.float64))
            total[i] += np.sum(p * np.log(p / q))
    return total


@pytest.mark.parametrize(
    "kind, splits",
    [("categorical", [6]), ("multicategorical", [3, 2, 4]), ("bernoulli", [2, 2, 2, 2])],
)
def test_masked_kl_is_the_kl_over_valid_actions_and_masked_actions_contribute_zero(kind, splits):
    from sb3_contrib.common.maskable.distributions import (
        MaskableBernoulliDistribution,
        MaskableCategoricalDistribution,
        MaskableMultiCategoricalDistribution,
    )

    make = {
        "categorical": lambda: MaskableCategoricalDistribution(splits[0]),
        "multicategorical": lambda: MaskableMultiCategoricalDistribution(splits),
        "bernoulli": lambda: MaskableBernoulliDistribution(len(splits)),
    }[kind]
    old, new, masks, new_logits = _masked(make, splits, seed=len(splits))
    assert has_analytic_kl(old)
    old.apply_masking(masks)
    new.apply_masking(masks)
    old_params = distribution_params(old).detach()
    assert old_params.shape == (BATCH, sum(splits))
    # masked outcomes: log p is finite (about -1e8) and p is exactly 0
    assert th.isfinite(old_params).all()
    assert (old_params.exp()[~masks] == 0).all()
    kl = per_state_kl(old_params, new)
    assert th.isfinite(kl).all() and (kl >= -1e-6).all()
    # the masked outcomes' terms are exactly 0
    terms = old_params.exp() * (old_params - distribution_params(new))
    assert (terms[~masks] == 0).all()
    expected = _valid_closed_form(old_params.numpy(), new_logits.detach().numpy(), masks.numpy(), splits)
    np.testing.assert_allclose(kl.detach().numpy(), expected, rtol=1e-4, atol=1e-6)
    # gradients are finite, and none reaches a masked logit (up to float32 round-off: sb3-contrib
    # normalises the raw logits once before masking, a shift the second normalisation cancels)
    kl.sum().backward()
    assert th.isfinite(new_logits.grad).all()
    assert th.allclose(new_logits.grad[~masks], th.zeros(()), atol=1e-6)
    # the same distribution, masked the same way, has KL exactly 0
    assert (per_state_kl(old_params, old) == 0).all()


def test_masked_kl_with_a_fully_masked_sub_action_is_finite_and_zero_there():
    """Every outcome of a sub-action masked (sb3-contrib then sets all its logits to -1e8): no NaN, no contribution."""
    from sb3_contrib.common.maskable.distributions import MaskableMultiCategoricalDistribution

    old, new = MaskableMultiCategoricalDistribution([3, 2]), MaskableMultiCategoricalDistribution([3, 2])
    logits = th.randn(BATCH, 5, requires_grad=True)
    old.proba_distribution(th.randn(BATCH, 5))
    new.proba_distribution(logits)
    masks = th.ones(BATCH, 5, dtype=th.bool)
    masks[:, :3] = False  # the first sub-action has no valid outcome
    old.apply_masking(masks)
    new.apply_masking(masks)
    kl = per_state_kl(distribution_params(old).detach(), new)
    p, q = th.softmax(old.distributions[1].logits, -1), th.softmax(new.distributions[1].logits, -1)
    assert th.allclose(kl, (p * (p.log() - q.log())).sum(-1), atol=1e-6)
    kl.sum().backward()
    assert th.isfinite(logits.grad).all() and th.allclose(logits.grad[:, :3], th.zeros(()), atol=1e-6)


def test_kl_target_schedule_drives_the_step_rule():
    controller = KLCoefController(kl_coef=1.0, kl_target=lambda progress: 0.01 + 0.02 * (1 - progress))
    assert controller.target(1.0) == pytest.approx(0.01) and controller.target(0.0) == pytest.approx(0.03)
    # d = 0.02 is above 1.5 * 0.01 at the start, inside the band in the middle, below 0.03 / 1.5 ... not: 0.02 == 0.03 / 1.5
    assert controller.update(0.02, progress_remaining=1.0) == 2.0
    assert controller.update(0.02, progress_remaining=0.5) == 2.0
    assert controller.update(0.019, progress_remaining=0.0) == 1.0


def test_kl_target_annealed_to_zero_closes_the_trust_region():
    controller = KLCoefController(kl_coef=1.0, kl_target=lambda progress: 0.02 * progress)
    assert controller.update(1e-6, progress_remaining=0.0) == 2.0  # any d > 0 is above a zero target


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(kl_target=lambda progress: 0.0), "kl_target"),
        (dict(kl_target=lambda progress: -0.01 * progress + 0.01 * (1 - progress)), "kl_target"),
        (dict(kl_target=lambda progress: float("nan")), "kl_target"),
    ],
)
def test_controller_options_reject_bad_input(kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        KLCoefController(**kwargs)
