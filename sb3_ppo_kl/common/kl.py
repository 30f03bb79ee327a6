"""
The KL-penalty machinery of PPO1, shared by every algorithm in this package.

Schulman et al. (2017), "Proximal Policy Optimization Algorithms", section 4
(https://arxiv.org/abs/1707.06347): maximise

    E_t[ r_t(theta) * A_t  -  beta * KL[pi_old(.|s_t) || pi_theta(.|s_t)] ]

and adapt beta after each policy update toward a target KL.

This module holds the pieces an algorithm needs:

- :func:`distribution_params` / :func:`per_state_kl`: the analytic KL per state between the
  policy that collected the rollout (stored as a parameter tensor) and the current policy,
  summed over action dimensions. :func:`sampled_kl` is the fallback for distributions
  without an analytic form.
- :class:`KLCoefController`: the adaptive coefficient beta (the paper's rule); a subclass that overrides
  :meth:`KLCoefController.adapt` is another rule.
- :func:`make_kl_controller`: a controller of a class the user chose, with its own arguments.
"""

import inspect
import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import torch as th
from sb3_contrib.common.maskable.distributions import MaskableCategoricalDistribution, MaskableMultiCategoricalDistribution
from stable_baselines3.common.distributions import (
    BernoulliDistribution,
    CategoricalDistribution,
    DiagGaussianDistribution,
    Distribution,
    MultiCategoricalDistribution,
    StateDependentNoiseDistribution,
)
from torch.nn import functional as F

from sb3_ppo_kl.common.checks import check_bool, check_coef_bounds, check_real, described

# Distributions whose per-state parameters are (mean, std) of independent Gaussians.
# gSDE's distribution is a diagonal Gaussian per state too (its noise matrix only enters
# through the variance), and a tanh squashing leaves the KL unchanged.
_GAUSSIAN = (DiagGaussianDistribution, StateDependentNoiseDistribution)
# Distributions whose per-state parameters we store as log-probabilities of every outcome.
# sb3-contrib's maskable distributions are among them (MaskableBernoulliDistribution is a
# MaskableMultiCategoricalDistribution with two outcomes per dimension).
_DISCRETE = (
    CategoricalDistribution,
    MultiCategoricalDistribution,
    BernoulliDistribution,
    MaskableCategoricalDistribution,
    MaskableMultiCategoricalDistribution,
)


def has_analytic_kl(distribution: Distribution) -> bool:
    """Whether :func:`per_state_kl` has a closed form for this distribution class."""
    return isinstance(distribution, _GAUSSIAN + _DISCRETE)


def comparable_distributions(first: Distribution, second: Distribution) -> bool:
    """
    Whether :func:`per_state_kl` can compare these two distributions state by state: both Gaussian (diagonal or
    gSDE), or both of the same discrete class, so that their :func:`distribution_params` line up.
    """
    return (isinstance(first, _GAUSSIAN) and isinstance(second, _GAUSSIAN)) or type(first) is type(second)


def distribution_params(distribution: Distribution) -> th.Tensor:
    """
    The parameters that determine a batch of action distributions, as one ``(batch, k)`` tensor.

    - Diagonal Gaussian and gSDE: ``[mean, std]``, ``k = 2 * action_dim``.
    - Categorical: log-probabilities of the ``n`` actions.
    - MultiCategorical: log-probabilities of every sub-action, concatenated (``k = sum(nvec)``).
    - Bernoulli: ``[log p, log(1 - p)]`` for every dimension (``k = 2 * n``).
    - sb3-contrib's maskable Categorical, MultiCategorical and Bernoulli: the log-probabilities of
      every outcome of every sub-distribution after masking, concatenated (``k = n``, ``sum(nvec)``,
      ``2 * n``; a maskable Bernoulli dimension is a two-outcome categorical ``[log(1 - p), log p]``).
      sb3-contrib masks an outcome by setting its logit to ``-1e8``, so a masked outcome has
      ``log p = -1e8 - logsumexp(...)``: finite, with ``exp(log p) == 0`` exactly in float32 and float64.

    The result keeps the autograd graph; take it under ``th.no_grad()`` to snapshot a policy.
    SB3 mutates a policy's distribution object in place on every forward pass, so storing this
    tensor (not the object) is what makes a snapshot safe.

    :param distribution: an SB3 distribution after ``proba_distribution()`` was called
    :raises TypeError: for distributions without an analytic KL (see :func:`has_analytic_kl`)
    """
    if isinstance(distribution, _GAUSSIAN):
        normal = distribution.distribution
        return th.cat([normal.loc, normal.scale], dim=-1)
    if isinstance(distribution, CategoricalDistribution):
        return distribution.distribution.logits  # torch normalises logits to log-probabilities
    if isinstance(distribution, MultiCategoricalDistribution):
        return th.cat([categorical.logits for categorical in distribution.distribution], dim=-1)
    if isinstance(distribution, BernoulliDistribution):
        logits = distribution.distribution.logits
        return th.cat([F.logsigmoid(logits), F.logsigmoid(-logits)], dim=-1)
    if isinstance(distribution, MaskableCategoricalDistribution):
        return distribution.distribution.logits
    if isinstance(distribution, MaskableMultiCategoricalDistribution):
        # no `.distribution` attribute: one MaskableCategorical per sub-action in `.distributions`
        return th.cat([categorical.logits for categorical in distribution.distributions], dim=-1)
    raise TypeError(f"No analytic KL for {type(distribution).__name__}; use sampled_kl() instead")


def per_state_kl(old: th.Tensor | Distribution, new: Distribution) -> th.Tensor:
    """
    Analytic ``KL[old(.|s) || new(.|s)]`` for each state of a batch, summed over action dimensions.

    For a diagonal Gaussian with means ``m`` and standard deviations ``s``::

        KL = sum_i  log(s_new/s_old) + (s_old^2 + (m_old - m_new)^2) / (2 s_new^2) - 1/2

    For Categorical, MultiCategorical and Bernoulli, with ``log p`` the log-probability of every
    outcome (see :func:`distribution_params`)::

        KL = sum_outcomes  p_old * (log p_old - log p_new)

    which is the sum of the KLs of the independent sub-distributions.

    Masked distributions (sb3-contrib) must be masked with the same masks for ``old`` and ``new``.
    A masked outcome then has ``p_old == 0`` exactly and a finite ``log p_old - log p_new``, so it
    contributes exactly zero (and zero gradient): the KL is the KL between the distributions over
    the valid actions, never NaN or inf.

    :param old: the old policy's distribution, or its :func:`distribution_params` (typically a
        stored, detached snapshot)
    :param new: the current policy's distribution for the same states; gradients flow through it
    :return: tensor of shape ``(batch,)``
    """
    old_params = distribution_params(old) if isinstance(old, Distribution) else old
    if isinstance(new, _GAUSSIAN):
        old_mean, old_std = old_params.chunk(2, dim=-1)
        normal = new.distribution
        # the formula above as 0.5 * (v + t - 1 - log v), v = (s_old/s_new)^2, t = ((m_old - m_new)/s_new)^2:
        # fewer tensor operations on the training hot path
        var_ratio = (old_std / normal.scale).pow(2)
        mean_term = ((old_mean - normal.loc) / normal.scale).pow(2)
        return 0.5 * (var_ratio + mean_term - 1.0 - var_ratio.log()).sum(dim=-1)
    return (old_params.exp() * (old_params - distribution_params(new))).sum(dim=-1)


def sampled_kl(old_log_prob: th.Tensor, new_log_prob: th.Tensor) -> th.Tensor:
    """
    Sampled estimate of ``KL[old || new]`` from actions drawn from ``old``, per sample.

    This is the non-negative, unbiased "k3" estimator ``(r - 1) - log r`` with
    ``r = new(a|s) / old(a|s)`` (http://joschu.net/blog/kl-approx.html), the same quantity SB3 PPO
    logs as ``approx_kl``. It is the fallback for distributions without an analytic KL.

    :param old_log_prob: log-probability of the rollout's actions under the old policy
    :param new_log_prob: log-probability of the same actions under the current policy
    :return: tensor of the same shape as the inputs
    """
    log_ratio = new_log_prob - old_log_prob
    return th.expm1(log_ratio) - log_ratio


def _check_kl_target(kl_target: float | Callable[[float], float]) -> None:
    """
    A float > 0, or a schedule of the progress remaining that starts > 0 and ends >= 0 (a target annealed
    to 0 doubles beta after every late update: the trust region closes, as ``clip_range`` annealed to 0 does).
    """
    if not callable(kl_target):
        valid = "a finite number > 0 or a schedule (a callable of the progress remaining)"
        check_real("kl_target", kl_target, valid, lambda value: value > 0)
        return
    for progress, valid in ((1.0, "> 0 at the start (progress_remaining=1)"), (0.0, ">= 0 at the end (progress_remaining=0)")):
        value = kl_target(progress)
        ok = isinstance(value, numbers.Real) and math.isfinite(value) and (value > 0 if progress == 1.0 else value >= 0)
        if not ok:
            raise ValueError(f"`kl_target` as a schedule must be finite, {valid}, got {value!r}")


class KLCoefController:
    """
    The adaptive KL coefficient beta of PPO1 (Schulman et al. 2017, section 4,
    https://arxiv.org/abs/1707.06347).

    After each policy update, with ``d`` the mean KL between the policy before and after it:

    - if ``d < kl_target / kl_tolerance``: ``beta <- beta / kl_adapt_factor``
    - if ``d > kl_target * kl_tolerance``: ``beta <- beta * kl_adapt_factor``
    - otherwise beta stays; the result is clamped to ``kl_coef_bounds``.

    With ``adaptive_kl=False`` beta never changes (the paper's "fixed KL" setting).

    Every argument is checked at construction: a wrong type raises TypeError (a string such as ``"0.01"``,
    as a config file easily gives, or a bool where a number is expected, or anything but a bool for
    ``adaptive_kl``), a wrong value ValueError; both name the argument and what it accepts.

    :param kl_coef: initial beta, dimensionless, ``>= 0``. Default 1.0 (the paper's start value). An adaptive
        beta must start inside ``kl_coef_bounds``, hence ``> 0``; ``kl_coef=0`` (no penalty) needs
        ``adaptive_kl=False``.
    :param kl_target: target KL ``d_targ`` in nats per state, ``> 0``, or a schedule: a callable of the
        progress remaining (1 at the start of training, 0 at the end), as SB3's ``clip_range``, that starts
        ``> 0`` and stays ``>= 0``. Default 0.01.
    :param adaptive_kl: adapt beta (True, default) or keep it fixed (False). A bool, nothing else.
    :param kl_tolerance: the band around ``kl_target`` where beta is left alone, ``> 1``.
        Default 1.5 (the paper's).
    :param kl_adapt_factor: factor by which beta is multiplied or divided, ``> 1``. Default 2.0
        (the paper's).
    :param kl_coef_bounds: ``(low, high)``, a pair of real numbers with ``0 <= low <= high``: adapted values
        of beta are clamped to this range so that beta can neither vanish nor overflow. Default
        ``(1e-4, 1e4)``: 13 halvings or doublings away from the paper's start value of 1, wider
        than beta travels in normal training. When ``adaptive_kl`` is True, ``low`` must be ``> 0``
        (a beta of 0 would stay 0 for good: 0 times ``kl_adapt_factor`` is 0) and the initial
        ``kl_coef`` must lie inside the bounds. A fixed beta ignores them.
    """

    def __init__(
        self,
        kl_coef: float = 1.0,
        kl_target: float | Callable[[float], float] = 0.01,
        adaptive_kl: bool = True,
        kl_tolerance: float = 1.5,
        kl_adapt_factor: float = 2.0,
        kl_coef_bounds: Sequence[float] = (1e-4, 1e4),
    ):
        kl_coef = check_real("kl_coef", kl_coef, "a finite number >= 0", lambda value: value >= 0)
        _check_kl_target(kl_target)
        adaptive_kl = check_bool("adaptive_kl", adaptive_kl)
        check_real("kl_tolerance", kl_tolerance, "a finite number > 1", lambda value: value > 1)
        check_real("kl_adapt_factor", kl_adapt_factor, "a finite number > 1", lambda value: value > 1)
        low, high = check_coef_bounds("kl_coef_bounds", kl_coef_bounds, adaptive_kl)
        if adaptive_kl and not low <= kl_coef <= high:
            raise ValueError(
                f"`kl_coef` (the initial beta) must lie within kl_coef_bounds=[{low}, {high}] when adaptive_kl=True, "
                f"got {kl_coef}"
                + (" (an adaptive beta of 0 would stay 0; use adaptive_kl=False for no penalty)" if kl_coef == 0 else "")
            )
        self.kl_coef = float(kl_coef)
        self.kl_target = kl_target if callable(kl_target) else float(kl_target)
        self.adaptive_kl = bool(adaptive_kl)
        self.kl_tolerance = float(kl_tolerance)
        self.kl_adapt_factor = float(kl_adapt_factor)
        self.kl_coef_bounds = (low, high)

    def target(self, progress_remaining: float = 1.0) -> float:
        """``d_targ`` at this point of training (``kl_target`` itself unless it is a schedule)."""
        if not callable(self.kl_target):
            return self.kl_target
        value = float(self.kl_target(progress_remaining))
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"`kl_target` schedule gave {value} at progress_remaining={progress_remaining}; it must be >= 0")
        return value

    def update(self, kl: float, progress_remaining: float = 1.0) -> float:
        """
        Adapt beta to the KL measured over the last policy update.

        The step itself is :meth:`adapt`, which subclasses override; this method checks ``kl``, reads the
        target and clamps the result to ``kl_coef_bounds``.

        :param kl: ``d``, the mean KL between the policy before and after the update (nats)
        :param progress_remaining: where training stands (1 to 0), for a ``kl_target`` schedule
        :return: the new beta, also stored in ``self.kl_coef``
        """
        if not math.isfinite(kl):
            raise ValueError(f"the measured KL must be finite, got {kl}")
        if self.adaptive_kl:
            target = self.target(progress_remaining)
            low, high = self.kl_coef_bounds
            self.kl_coef = min(max(self.adapt(kl, target), low), high)
        return self.kl_coef

    def adapt(self, kl: float, target: float) -> float:
        """
        The step of the rule: beta after an update that measured ``kl`` against ``target``, before the clamp to
        ``kl_coef_bounds`` (which :meth:`update` applies). Subclasses override this method alone.

        :param kl: ``d``, finite and ``>= 0``
        :param target: ``d_targ`` at this point of training, ``>= 0``
        :return: the new beta, unclamped
        """
        if kl < target / self.kl_tolerance:
            return self.kl_coef / self.kl_adapt_factor
        if kl > target * self.kl_tolerance:
            return self.kl_coef * self.kl_adapt_factor
        return self.kl_coef

    def __repr__(self) -> str:
        arguments = ", ".join(f"{name}={value}" for name, value in vars(self).items() if not name.startswith("_"))
        return f"{type(self).__name__}({arguments})"


# The arguments of every controller that the algorithms take as their own (PPOKL's kl_coef, kl_target, ...)
STANDARD_CONTROLLER_ARGUMENTS = ("kl_coef", "kl_target", "adaptive_kl", "kl_tolerance", "kl_adapt_factor", "kl_coef_bounds")


# The package's controllers by name: ``kl_controller_class`` takes these names too, where a class cannot be written
# (an RL Zoo hyperparameter file, ``python -m sb3_ppo_kl --param``)
CONTROLLERS: dict[str, type[KLCoefController]] = {
    "KLCoefController": KLCoefController,
}


def make_kl_controller(controller_class: Any, controller_kwargs: Any, **standard: Any) -> KLCoefController:
    """
    The KL coefficient's controller that an algorithm's ``kl_controller_class`` and ``kl_controller_kwargs`` ask for:
    ``controller_class(**standard, **controller_kwargs)``, as SB3 builds ``rollout_buffer_class`` with
    ``rollout_buffer_kwargs``.

    :param controller_class: a subclass of :class:`KLCoefController` (or the class itself), or the name of one of
        the package's controllers (:data:`CONTROLLERS`: ``"KLCoefController"``)
    :param controller_kwargs: None, or a dict of the class's own arguments that are not
        the standard ones: those are the algorithm's own arguments
    :param standard: the standard arguments (see ``STANDARD_CONTROLLER_ARGUMENTS``), as the algorithm got them
    :return: the controller, every argument checked by the class
    :raises TypeError: for a ``controller_class`` that is not a KLCoefController subclass or a known name, ``controller_kwargs``
        that are not a dict with string keys, or arguments that the class does not take
    :raises ValueError: for ``controller_kwargs`` that contain a standard argument
    """
    if isinstance(controller_class, str):
        if controller_class not in CONTROLLERS:
            raise TypeError(
                f"`kl_controller_class` must be a subclass of sb3_ppo_kl.KLCoefController or one of the names "
                f"{', '.join(map(repr, CONTROLLERS))}, got {controller_class!r}"
            )
        controller_class = CONTROLLERS[controller_class]
    if not (isinstance(controller_class, type) and issubclass(controller_class, KLCoefController)):
        raise TypeError(
            f"`kl_controller_class` must be a subclass of sb3_ppo_kl.KLCoefController, got {described(controller_class)}"
        )
    if controller_kwargs is None:
        controller_kwargs = {}
    if not (isinstance(controller_kwargs, dict) and all(isinstance(key, str) for key in controller_kwargs)):
        raise TypeError(
            f"`kl_controller_kwargs` must be None or a dict of {controller_class.__name__}'s arguments by name, "
            f"got {described(controller_kwargs)}"
        )
    taken = sorted(set(controller_kwargs) & set(STANDARD_CONTROLLER_ARGUMENTS))
    if taken:
        raise ValueError(
            f"`kl_controller_kwargs` must not contain {', '.join(taken)}: give {'them' if len(taken) > 1 else 'it'} as "
            f"the algorithm's own argument{'s' if len(taken) > 1 else ''}, got {controller_kwargs!r}"
        )
    arguments = {**standard, **controller_kwargs}
    try:
        inspect.signature(controller_class).bind(**arguments)
    except TypeError as error:
        raise TypeError(
            f"`kl_controller_kwargs` {controller_kwargs!r} do not fit {controller_class.__name__}'s arguments: {error}"
        ) from None
    return controller_class(**arguments)
