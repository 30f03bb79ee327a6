import io
import math
import os
import pathlib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.policies import ActorCriticCnnPolicy, ActorCriticPolicy, BasePolicy, MultiInputActorCriticPolicy
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, Schedule
from stable_baselines3.common.utils import FloatSchedule, explained_variance
from torch.nn import functional as F

from sb3_ppo_kl.common.atomic import atomic_write, save_target
from sb3_ppo_kl.common.buffers import KLBufferMixin, KLDictRolloutBuffer, KLRolloutBuffer
from sb3_ppo_kl.common.checks import check_ppo_hyperparameters, check_real, check_rollout_size, described
from sb3_ppo_kl.common.finite import CheckFiniteCallback, NonFiniteError, distribution_validation_skipped
from sb3_ppo_kl.common.kl import (
    KLCoefController,
    make_kl_controller,
    per_state_kl,
    sampled_kl,
)
from sb3_ppo_kl.common.legacy import drop_removed_options, removed_classes
from sb3_ppo_kl.common.optim import use_multi_tensor_adam
from sb3_ppo_kl.common.reference import PolicySource, ReferencePolicyMixin
from sb3_ppo_kl.common.rollout import RolloutKLMixin, masked_mean
from sb3_ppo_kl.common.safe_load import SafeLoadLimits, prepare_load

SelfPPOKL = TypeVar("SelfPPOKL", bound="PPOKL")


class PPOKL(RolloutKLMixin, ReferencePolicyMixin, OnPolicyAlgorithm):
    """
    Proximal Policy Optimization with an adaptive KL penalty ("PPO1").

    Paper: Schulman et al. (2017), "Proximal Policy Optimization Algorithms", section 4,
    https://arxiv.org/abs/1707.06347

    The loss minimised on every minibatch is::

        ratio   = pi_theta(a|s) / pi_old(a|s)
        loss    = -(ratio * A).mean()                                  # importance-sampled surrogate
                  + kl_coef * KL[pi_old(.|s) || pi_theta(.|s)].mean()  # the KL penalty, beta = kl_coef
                  + vf_coef * value_loss - ent_coef * entropy

    ``pi_old`` is the policy that collected the rollout; its action distribution is stored once per
    update for every sample, and the KL is analytic per state (summed over action dimensions) for
    every SB3 action distribution. After all epochs, ``d`` = the mean KL over the rollout between the
    policy before and after the update adapts beta (see :class:`~sb3_ppo_kl.KLCoefController`):
    divided by ``kl_adapt_factor`` when ``d < kl_target / kl_tolerance``, multiplied when
    ``d > kl_target * kl_tolerance``, clamped to ``kl_coef_bounds``. ``model.kl_coef`` is always
    the current beta; it is saved and loaded with the model. ``kl_controller_class`` chooses another rule.

    With ``ref_policy`` (fine-tuning a pretrained policy), the loss also has
    ``+ ref_kl_coef * KL[pi_ref(.|s) || pi_theta(.|s)].mean()``, the KL to a reference policy: frozen, or with
    ``ref_tau > 0`` moved toward the policy after every update, as SB3's target networks.

    :param policy: The policy model to use (MlpPolicy, CnnPolicy, MultiInputPolicy)
    :param env: The environment to learn from (if registered in Gym, can be str)
    :param learning_rate: Adam step size, a float or a schedule of the progress remaining (1 to 0).
        Default 3e-4.
    :param n_steps: Steps per environment per update; the rollout has ``n_steps * n_envs`` samples.
        Default 2048.
    :param batch_size: Minibatch size, ``>= 2`` (``>= 1`` with ``normalize_advantage=False``). A minibatch larger
        than the rollout (``n_steps * n_envs``) is the whole rollout, as in SB3 PPO. Default 64.
    :param n_epochs: Passes over the rollout per update. Default 10.
    :param gamma: Discount factor. Default 0.99.
    :param gae_lambda: GAE lambda. Default 0.95.
    :param kl_target: Target KL ``d_targ`` between consecutive policies, nats per state, ``> 0``, or a
        schedule of the progress remaining (1 to 0), as ``clip_range``. Default 0.01.
    :param kl_coef: Initial KL coefficient beta, ``>= 0``. Default 1.0. An adaptive beta starts inside
        ``kl_coef_bounds``, so ``> 0``: ``kl_coef=0`` (no penalty) needs ``adaptive_kl=False``.
    :param adaptive_kl: Adapt beta toward ``kl_target`` after every update (True, default), or keep
        ``kl_coef`` fixed (False, the paper's "fixed KL").
    :param kl_tolerance: Beta is left alone while ``kl_target / kl_tolerance <= d <= kl_target * kl_tolerance``,
        ``> 1``. Default 1.5.
    :param kl_adapt_factor: Factor by which beta is multiplied or divided, ``> 1``. Default 2.0.
    :param kl_coef_bounds: ``(low, high)``, two real numbers with ``0 <= low <= high``: adapted beta is clamped
        to this range. Default ``(1e-4, 1e4)``. With ``adaptive_kl=True``, ``low`` must be ``> 0``: a beta of 0
        would stay 0 for good (0 times ``kl_adapt_factor`` is 0).
    :param kl_controller_class: The rule that adapts beta: :class:`~sb3_ppo_kl.KLCoefController` (default, the
        paper's rule above) or a subclass of it, built as ``kl_controller_class(kl_coef=..., kl_target=...,
        adaptive_kl=..., kl_tolerance=..., kl_adapt_factor=..., kl_coef_bounds=..., **kl_controller_kwargs)``, as
        SB3 builds ``rollout_buffer_class``. The controller is ``model.kl_controller``; its class and state (beta,
        its own arguments) are saved and loaded with the model. Where a class cannot be written (an RL Zoo
        hyperparameter file, ``python -m sb3_ppo_kl --param``), the name ``"KLCoefController"`` does.
    :param kl_controller_kwargs: None (default), or a dict of the controller class's own arguments; the standard
        ones above are refused there (give them as this algorithm's arguments).
    :param ref_policy: None (default), or a frozen reference policy to stay close to, e.g. a pretrained
        policy being fine-tuned: an SB3 policy (a ``BasePolicy``, copied) or the path of an SB3 model zip
        (PPO, A2C, PPOKL, MaskablePPO...). Its observation and action spaces must be the environment's.
        The loss gains ``ref_kl_coef * KL[pi_ref(.|s) || pi_theta(.|s)].mean()``: analytic per state, summed
        over action dimensions, averaged over states as the PPO1 term. The direction is the forward,
        mass-covering KL, as the PPO1 term's (old -> new): it grows without bound where the reference gives
        an action probability and the new policy does not, so the new policy must keep every behaviour
        the reference had, which is what "not forgetting" the pretrained policy means; the reverse KL would
        let it drop modes of the reference freely. The reference's distribution is computed once per update
        for the whole rollout (MaskablePPOKL masks it with the stored action masks; RecurrentPPOKL runs a recurrent
        reference over the rollout with its own LSTM states). It is kept frozen
        (eval mode, no gradients, never optimised) as ``model.ref_policy``, and saved and loaded with the model.
        See :meth:`from_pretrained` to start from the same policy.
    :param ref_kl_coef: Coefficient of the KL to the reference, ``>= 0``, or a schedule of the progress remaining
        (1 to 0), as ``clip_range``, giving values ``>= 0``. Only used with ``ref_policy``.
        Default 1.0 (beta's default start: the KL to the reference weighs as much as the PPO1 term at first).
        ``model.ref_kl_coef`` is its current value (a schedule's at the current progress), logged as
        ``train/ref_kl_coef``.
    :param ref_tau: The soft update coefficient of the reference, in ``[0, 1]``, as ``tau`` in SB3's DQN and SAC.
        0 (default): the reference is frozen. Otherwise, after every update the reference becomes
        ``(1 - ref_tau) * reference + ref_tau * policy``, parameter by parameter (SB3's ``polyak_update``;
        buffers such as batch norm's running statistics are copied, as SB3 copies them): the leash then limits how
        fast the policy drifts, not how far. ``ref_tau=1`` resets the reference to the policy. It needs
        ``ref_policy`` of the policy's architecture (the same state-dict keys and shapes, which
        :meth:`from_pretrained` gives); another is refused. :meth:`from_pretrained` defaults to ``ref_tau=0.3``,
        chosen on the fine-tuning benchmark's LunarLander tasks (its docstring says where it did worse).
        ``train/ref_kl`` is the KL to the moving reference (before its move), ``train/ref_updates`` the number of
        moves so far; the moved reference is what ``save()`` keeps.
    :param clip_range: None (default) for pure PPO1. A float or schedule adds PPO2's ratio clipping on
        top of the penalty (as RLlib does).
    :param clip_range_vf: Clipping of the value function update, as in SB3 PPO. None (default): no clipping.
        IMPORTANT: this clipping depends on the reward scaling.
    :param normalize_advantage: Normalise advantages per minibatch. Default True.
    :param ent_coef: Entropy coefficient. Default 0.0.
    :param vf_coef: Value function coefficient. Default 0.5.
    :param max_grad_norm: Maximum gradient norm. Default 0.5.
    :param use_sde: Use generalized State Dependent Exploration (gSDE). Default False.
    :param sde_sample_freq: Sample a new gSDE noise matrix every n steps; -1 (default): once per rollout.
    :param rollout_buffer_class: Rollout buffer class; must mix in
        :class:`~sb3_ppo_kl.common.buffers.KLBufferMixin`. None (default) picks
        :class:`~sb3_ppo_kl.common.buffers.KLRolloutBuffer` or ``KLDictRolloutBuffer``.
    :param rollout_buffer_kwargs: Keyword arguments for the rollout buffer.
    :param target_kl: SB3's optional early stop: stop the epochs of an update when the sampled KL
        estimate of a minibatch exceeds ``1.5 * target_kl``. Default None (never). Independent of
        ``kl_target``.
    :param stats_window_size: Episodes averaged for the rollout logs. Default 100.
    :param tensorboard_log: TensorBoard log directory (None: no TensorBoard).
    :param policy_kwargs: Additional arguments for the policy.
    :param verbose: 0 silent, 1 info, 2 debug.
    :param seed: Seed for the pseudo random generators.
    :param device: Device (cpu, cuda, auto).
    :param _init_setup_model: Whether to build the network at the creation of the instance.

    The arguments of this package's own are checked before an environment is made or a network built, and an
    error names the argument and what it accepts: a wrong type raises TypeError (a string such as ``"0.01"`` from
    a config file; a bool where a number is expected; anything but a bool for ``adaptive_kl``), a value out of range
    ValueError.
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpPolicy": ActorCriticPolicy,
        "CnnPolicy": ActorCriticCnnPolicy,
        "MultiInputPolicy": MultiInputActorCriticPolicy,
    }
    supported_action_spaces: ClassVar[tuple[type[spaces.Space], ...]] = (
        spaces.Box,
        spaces.Discrete,
        spaces.MultiDiscrete,
        spaces.MultiBinary,
    )
    # The KL rollout buffers this algorithm uses by default: (flat observations, Dict observations)
    kl_rollout_buffer_classes: ClassVar[tuple[type[RolloutBuffer], type[RolloutBuffer]]] = (
        KLRolloutBuffer,
        KLDictRolloutBuffer,
    )
    rollout_buffer: KLBufferMixin  # type: ignore[assignment]
    #: Check every observation and reward the environment returns during ``learn()`` (and every action the policy
    #: chooses), and raise :class:`~sb3_ppo_kl.NonFiniteError` naming the env and the step at the first non-finite one (see
    #: :class:`~sb3_ppo_kl.common.finite.CheckFiniteCallback`). While it is on, torch's own checks of the action
    #: distributions are skipped (:func:`~sb3_ppo_kl.common.finite.distribution_validation_skipped`). Set
    #: ``model.check_finite_env = False`` to skip the check and have torch's back, as in SB3 PPO.
    check_finite_env: bool = True

    def __init__(
        self,
        policy: str | type[ActorCriticPolicy],
        env: GymEnv | str,
        learning_rate: float | Schedule = 3e-4,
        n_steps: int = 2048,
        batch_size: int = 64,
        n_epochs: int = 10,
        gamma: float = 0.99,
        gae_lambda: float = 0.95,
        kl_target: float | Schedule = 0.01,
        kl_coef: float = 1.0,
        adaptive_kl: bool = True,
        kl_tolerance: float = 1.5,
        kl_adapt_factor: float = 2.0,
        kl_coef_bounds: Sequence[float] = (1e-4, 1e4),
        kl_controller_class: type[KLCoefController] | str = KLCoefController,
        kl_controller_kwargs: dict[str, Any] | None = None,
        ref_policy: PolicySource | None = None,
        ref_kl_coef: float | Schedule = 1.0,
        ref_tau: float = 0.0,
        clip_range: float | Schedule | None = None,
        clip_range_vf: float | Schedule | None = None,
        normalize_advantage: bool = True,
        ent_coef: float = 0.0,
        vf_coef: float = 0.5,
        max_grad_norm: float = 0.5,
        use_sde: bool = False,
        sde_sample_freq: int = -1,
        rollout_buffer_class: type[RolloutBuffer] | None = None,
        rollout_buffer_kwargs: dict[str, Any] | None = None,
        target_kl: float | None = None,
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: th.device | str = "auto",
        _init_setup_model: bool = True,
    ):
        self._check_arguments_and_make_kl_controller(
            env,
            kl_coef=kl_coef,
            kl_target=kl_target,
            adaptive_kl=adaptive_kl,
            kl_tolerance=kl_tolerance,
            kl_adapt_factor=kl_adapt_factor,
            kl_coef_bounds=kl_coef_bounds,
            kl_controller_class=kl_controller_class,
            kl_controller_kwargs=kl_controller_kwargs,
            n_steps=n_steps,
            batch_size=batch_size,
            n_epochs=n_epochs,
            normalize_advantage=normalize_advantage,
            clip_range=clip_range,
            clip_range_vf=clip_range_vf,
            target_kl=target_kl,
            rollout_buffer_class=rollout_buffer_class,
            ref_policy=ref_policy,
            ref_kl_coef=ref_kl_coef,
            ref_tau=ref_tau,
        )

        super().__init__(
            policy,
            env,
            learning_rate=learning_rate,
            n_steps=n_steps,
            gamma=gamma,
            gae_lambda=gae_lambda,
            ent_coef=ent_coef,
            vf_coef=vf_coef,
            max_grad_norm=max_grad_norm,
            use_sde=use_sde,
            sde_sample_freq=sde_sample_freq,
            rollout_buffer_class=rollout_buffer_class,
            rollout_buffer_kwargs=rollout_buffer_kwargs,
            stats_window_size=stats_window_size,
            tensorboard_log=tensorboard_log,
            policy_kwargs=policy_kwargs,
            verbose=verbose,
            device=device,
            seed=seed,
            _init_setup_model=False,
        )
        self._check_env()
        if self.env is not None:
            check_rollout_size(self.n_steps, self.env.num_envs, batch_size, normalize_advantage)

        self.batch_size = batch_size
        self.n_epochs = n_epochs
        self.clip_range = clip_range
        self.clip_range_vf = clip_range_vf
        self.normalize_advantage = normalize_advantage
        self.target_kl = target_kl

        if _init_setup_model:
            self._setup_model()

    def _check_arguments_and_make_kl_controller(
        self,
        env: GymEnv | str | None,
        *,
        kl_coef: float,
        kl_target: float | Schedule,
        adaptive_kl: bool,
        kl_tolerance: float,
        kl_adapt_factor: float,
        kl_coef_bounds: Sequence[float],
        kl_controller_class: type[KLCoefController] | str,
        kl_controller_kwargs: dict[str, Any] | None,
        n_steps: int,
        batch_size: int,
        n_epochs: int,
        normalize_advantage: bool,
        clip_range: float | Schedule | None,
        clip_range_vf: float | Schedule | None,
        target_kl: float | None,
        rollout_buffer_class: type[RolloutBuffer] | None = None,
        ref_policy: PolicySource | None = None,
        ref_kl_coef: float | Schedule = 1.0,
        ref_tau: float = 0.0,
    ) -> None:
        """
        Validate the arguments (TypeError for a wrong type, ValueError for a wrong value, naming the parameter and
        what it accepts) and create ``self.kl_controller`` (a ``kl_controller_class``) and the reference policy
        (loaded, frozen; moved to the device and checked against the environment's spaces in ``_setup_model``).

        Called first in ``__init__`` by PPOKL and its variants: every check runs before an
        environment is made or a network built.
        """
        self.kl_controller = make_kl_controller(
            kl_controller_class,
            kl_controller_kwargs,
            kl_coef=kl_coef,
            kl_target=kl_target,
            adaptive_kl=adaptive_kl,
            kl_tolerance=kl_tolerance,
            kl_adapt_factor=kl_adapt_factor,
            kl_coef_bounds=kl_coef_bounds,
        )
        check_ppo_hyperparameters(n_steps, batch_size, n_epochs, normalize_advantage, clip_range, clip_range_vf, target_kl)
        if rollout_buffer_class is not None and not issubclass(rollout_buffer_class, KLBufferMixin):
            raise ValueError(
                f"`rollout_buffer_class` must mix in sb3_ppo_kl.common.buffers.KLBufferMixin, got {rollout_buffer_class.__name__}"
            )
        # An environment object can be checked now (a string is checked once it is made, in _check_env)
        action_space = getattr(env, "action_space", None)
        if isinstance(action_space, spaces.Space):
            self._check_action_space(action_space)
        self._make_ref_policy(ref_policy, ref_kl_coef, ref_tau)

    def _check_action_space(self, action_space: spaces.Space) -> None:
        if not isinstance(action_space, self.supported_action_spaces):
            # ValueError, as SB3's own check of unsupported action spaces raises
            raise ValueError(  # noqa: TRY004
                f"{type(self).__name__} does not support the action space {action_space}; "
                f"supported: {', '.join(space.__name__ for space in self.supported_action_spaces)}"
            )

    def _check_env(self) -> None:
        """
        Checks that need the environment, once the base class has made it.

        A ``batch_size`` larger than the rollout is accepted, as PPO, MaskablePPO and RecurrentPPO accept it:
        each epoch is then one minibatch of the whole rollout.
        """
        if self.env is None:
            return
        self._check_action_space(self.action_space)

    @property
    def kl_coef(self) -> float:
        """The current KL coefficient beta (the value the next update uses)."""
        return self.kl_controller.kl_coef

    @kl_coef.setter
    def kl_coef(self, value: float) -> None:
        self.kl_controller.kl_coef = check_real("kl_coef", value, "a finite number >= 0", lambda value: value >= 0)

    def _setup_model(self) -> None:
        # Rebuilds what load() does not restore. The KL controller (beta) is restored with __dict__
        # and must not be touched here; a 0.2.0 model's removed options are dropped, with a warning.
        drop_removed_options(self)
        if self.rollout_buffer_class is None:
            flat, dict_ = self.kl_rollout_buffer_classes
            self.rollout_buffer_class = dict_ if isinstance(self.observation_space, spaces.Dict) else flat
        clip_range, clip_range_vf = self.clip_range, self.clip_range_vf
        # The next base builds the policy and the buffer: SB3's OnPolicyAlgorithm, or for the variants
        # sb3-contrib's MaskablePPO / RecurrentPPO, whose _setup_model wraps clip_range in a schedule
        # unconditionally. PPOKL's clip_range may be None; give them a placeholder and restore it.
        self.clip_range = 0.0 if clip_range is None else clip_range
        super()._setup_model()

        self.clip_range = None if clip_range is None else FloatSchedule(clip_range)
        self.clip_range_vf = None if clip_range_vf is None else FloatSchedule(clip_range_vf)
        self._setup_ref_policy()

    def train(self) -> None:
        """
        One update: snapshot the rollout policy (and the reference); ``n_epochs`` passes of minibatch steps on the
        penalised loss; measure ``d`` over the whole rollout; adapt beta; move the reference; log.
        """
        # Snapshot: the action distribution of the policy that collected the rollout (and of the reference) for every
        # sample, evaluated in the mode the rollout policy acted in (affects batch norm / dropout)
        self.policy.set_training_mode(False)
        self._snapshot_rollout_policy()
        self._snapshot_ref_policy()
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        progress = self._current_progress_remaining
        clip_range = None if self.clip_range is None else self.clip_range(progress)  # type: ignore[operator]
        clip_range_vf = None if self.clip_range_vf is None else self.clip_range_vf(progress)  # type: ignore[operator]
        beta, ref_kl_coef = self.kl_coef, self.ref_kl_coef  # constant within an update; beta is adapted after it
        stats: dict[str, list[float]] = defaultdict(list)

        continue_training = True
        for epoch in range(self.n_epochs):
            approx_kl_divs = []  # SB3 logs the last epoch's
            for minibatch, batch in enumerate(self.rollout_buffer.get(self.batch_size)):  # type: ignore[attr-defined]
                rollout_data = batch.data
                values, log_prob, entropy = self._evaluate_actions(rollout_data)
                values = values.flatten()
                valid = self._valid_samples(rollout_data)  # None, or the unpadded rows of recurrent minibatches
                advantages = rollout_data.advantages
                # Normalization does not make sense if mini batchsize == 1
                valid_advantages = advantages if valid is None else advantages[valid]
                if self.normalize_advantage and len(valid_advantages) > 1:
                    advantages = (advantages - valid_advantages.mean()) / (valid_advantages.std() + 1e-8)

                # The importance-sampled surrogate, r_t(theta) * A_t; optionally clipped as in PPO2
                ratio = th.exp(log_prob - rollout_data.old_log_prob)
                surrogate = advantages * ratio
                if clip_range is not None:
                    surrogate = th.min(surrogate, advantages * th.clamp(ratio, 1 - clip_range, 1 + clip_range))
                    stats["clip_fraction"].append(masked_mean((th.abs(ratio - 1) > clip_range).float(), valid).item())
                policy_loss = -masked_mean(surrogate, valid)
                # The KL penalty: beta * KL[pi_old(.|s) || pi_theta(.|s)], averaged over states
                kl_div = masked_mean(self._kl_to_old(batch, log_prob), valid)
                kl_penalty = beta * kl_div

                if clip_range_vf is None:
                    values_pred = values
                else:  # clip the difference between old and new value (depends on the reward scaling)
                    values_pred = rollout_data.old_values + th.clamp(
                        values - rollout_data.old_values, -clip_range_vf, clip_range_vf
                    )
                if valid is None:
                    value_loss = F.mse_loss(rollout_data.returns, values_pred)
                else:
                    value_loss = masked_mean((rollout_data.returns - values_pred) ** 2, valid)
                # Entropy loss favours exploration; approximate it when there is no analytical form
                entropy_loss = -masked_mean(-log_prob if entropy is None else entropy, valid)

                loss = policy_loss + kl_penalty + self.ent_coef * entropy_loss + self.vf_coef * value_loss
                # With a reference policy: + ref_kl_coef * KL[pi_ref(.|s) || pi_theta(.|s)], averaged over states
                if batch.ref_dist_params is not None:
                    ref_penalty = ref_kl_coef * masked_mean(
                        per_state_kl(batch.ref_dist_params, self.policy.action_dist), valid
                    )
                    stats["ref_kl_penalty"].append(ref_penalty.item())
                    loss = loss + ref_penalty

                stats["value_loss"].append(value_loss.item())
                stats["policy_gradient_loss"].append(policy_loss.item())
                stats["kl_minibatch"].append(kl_div.item())
                stats["kl_penalty"].append(beta * stats["kl_minibatch"][-1])
                stats["entropy_loss"].append(entropy_loss.item())

                # SB3's optional early stop on the sampled KL estimate (independent of beta). Only the last epoch's
                # estimates are logged, as SB3 does: without target_kl the other epochs need none
                if self.target_kl is not None or epoch == self.n_epochs - 1:
                    with th.no_grad():
                        approx_kl_div = masked_mean(sampled_kl(rollout_data.old_log_prob, log_prob), valid).item()
                    approx_kl_divs.append(approx_kl_div)
                    if self.target_kl is not None and approx_kl_div > 1.5 * self.target_kl:
                        continue_training = False
                        if self.verbose >= 1:
                            print(f"Early stopping at step {epoch} due to reaching max kl: {approx_kl_div:.2f}")
                        break

                self.policy.optimizer.zero_grad()
                loss.backward()
                grad_norm = th.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
                if not math.isfinite(grad_norm):  # a 0-d tensor: math's check costs less than torch's
                    self._raise_non_finite(epoch, minibatch, value_loss, policy_loss, kl_div, entropy_loss)
                self.policy.optimizer.step()

            self._n_updates += 1
            if not continue_training:
                break

        # d, the KL between the policy before and after this update over the whole rollout, adapts beta; the
        # reference (with ref_tau > 0) moves toward the policy
        kl, ref_kl = self._measured_rollout_kl()
        self.kl_controller.update(kl, progress)
        self._move_ref_policy()
        stats["approx_kl"] = approx_kl_divs
        self._log_update(stats, loss, kl, ref_kl, clip_range, clip_range_vf)

    def _raise_non_finite(self, epoch: int, minibatch: int, *terms: th.Tensor) -> None:
        """
        The guard of a step whose gradient is not finite: the step is not applied (the gradients are dropped), and
        :class:`~sb3_ppo_kl.NonFiniteError` names the non-finite terms of the loss (value loss, policy loss, KL,
        entropy loss, in this order) and where the update stood.
        """
        self.policy.optimizer.zero_grad(set_to_none=True)
        names = ("value loss", "policy loss (ratio * advantage)", "KL divergence", "entropy loss")
        bad = [name for name, term in zip(names, terms) if not th.isfinite(term)] or ["gradient norm"]
        raise NonFiniteError(
            f"{type(self).__name__}: non-finite {', '.join(bad)} in the update after {self.num_timesteps} timesteps "
            f"(epoch {epoch + 1}/{self.n_epochs}, minibatch {minibatch + 1}). This step was not applied: the "
            "parameters are those of the last finite step and the model can still be saved."
        )

    def _log_update(
        self,
        stats: dict[str, list[float]],
        loss: th.Tensor,
        kl: float,
        ref_kl: float | None,
        clip_range: float | None,
        clip_range_vf: float | None,
    ) -> None:
        """Record an update's train/* values: SB3 PPO's, then beta, ``d`` and the reference's."""
        for key in ("entropy_loss", "policy_gradient_loss", "value_loss", "approx_kl"):
            self.logger.record(f"train/{key}", np.mean(stats[key]))
        self.logger.record("train/loss", loss.item())
        explained_var = explained_variance(self.rollout_buffer.values.flatten(), self.rollout_buffer.returns.flatten())  # type: ignore[attr-defined]
        self.logger.record("train/explained_variance", explained_var)
        if hasattr(self.policy, "log_std"):
            self.logger.record("train/std", th.exp(self.policy.log_std).mean().item())
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/kl_coef", self.kl_coef)
        self.logger.record("train/kl", kl)
        self.logger.record("train/kl_target", self.kl_controller.target(self._current_progress_remaining))
        if ref_kl is not None:
            self.logger.record("train/ref_kl", ref_kl)
            self.logger.record("train/ref_kl_penalty", np.mean(stats["ref_kl_penalty"]))
        if self.ref_policy is not None:
            self.logger.record("train/ref_kl_coef", self.ref_kl_coef)
            if self.ref_tau > 0:
                self.logger.record("train/ref_updates", self._n_ref_updates)
        self.logger.record("train/kl_penalty", np.mean(stats["kl_penalty"]))
        self.logger.record("train/kl_minibatch", np.mean(stats["kl_minibatch"]))
        if clip_range is not None:
            self.logger.record("train/clip_fraction", np.mean(stats["clip_fraction"]))
            self.logger.record("train/clip_range", clip_range)
        if clip_range_vf is not None:
            self.logger.record("train/clip_range_vf", clip_range_vf)

    def learn(
        self: SelfPPOKL,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 1,
        tb_log_name: str = "PPOKL",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfPPOKL:
        with distribution_validation_skipped(self.check_finite_env):
            return super().learn(
                total_timesteps=total_timesteps,
                callback=callback,
                log_interval=log_interval,
                tb_log_name=tb_log_name,
                reset_num_timesteps=reset_num_timesteps,
                progress_bar=progress_bar,
            )

    def _setup_learn(self, *args: Any, **kwargs: Any) -> tuple[int, BaseCallback]:
        # Every learn() (PPOKL's, MaskablePPO's, RecurrentPPO's) starts here, also after a load(): on CPU the default
        # Adam steps with torch's multi-tensor implementation (the same parameters, bit for bit; common/optim.py)
        use_multi_tensor_adam(self.policy.optimizer)
        return super()._setup_learn(*args, **kwargs)

    def _init_callback(self, callback: MaybeCallback, progress_bar: bool = False) -> BaseCallback:
        """
        SB3's callback for ``learn()`` (the user's, a list made one, the progress bar), wrapped in a
        :class:`~sb3_ppo_kl.common.finite.CheckFiniteCallback` when ``check_finite_env`` is True: a non-finite
        observation or reward from the environment raises :class:`~sb3_ppo_kl.NonFiniteError` naming the env and the
        step, before it enters the rollout buffer or reaches the policy.

        :param callback: Callback(s) called at every step with state of the algorithm.
        :param progress_bar: Display a progress bar using tqdm and rich.
        :return: A hybrid callback calling `callback` and performing evaluation.
        """
        callback = super()._init_callback(callback, progress_bar)
        if not self.check_finite_env:
            return callback
        checked = CheckFiniteCallback(callback)
        checked.init_callback(self)
        return checked

    def save(
        self,
        path: str | pathlib.Path | io.BufferedIOBase,
        exclude: Iterable[str] | None = None,
        include: Iterable[str] | None = None,
    ) -> None:
        """
        Save all the attributes of the object and the model parameters in a zip-file, atomically.

        The zip is SB3's, written to the file SB3 would write (``".zip"`` appended to a path without a suffix),
        but through a temporary file in the same directory, flushed to disk and renamed over the target with
        ``os.replace`` (see :func:`sb3_ppo_kl.common.atomic.atomic_write`). Whenever the process dies (a kill, an
        out-of-memory kill, a pre-empted node) and whatever fails (a full disk), the path holds either the old
        model or the new one, whole; a save that raises leaves the old file untouched. SB3's callbacks that save
        (``CheckpointCallback``, ``EvalCallback``'s best model) get this too. A file object is written as SB3
        writes it.

        :param path: path to the file where the rl agent should be saved, or a binary file object
        :param exclude: name of parameters that should be excluded in addition to the default ones
        :param include: name of parameters that might be excluded but should be included anyway
        """
        if not isinstance(path, (str, os.PathLike)):
            super().save(path, exclude=exclude, include=include)
            return
        with atomic_write(save_target(path)) as file:
            super().save(file, exclude=exclude, include=include)  # type: ignore[arg-type]

    @classmethod
    def load(
        cls: type[SelfPPOKL],
        path: str | pathlib.Path | io.BufferedIOBase,
        env: GymEnv | None = None,
        device: th.device | str = "auto",
        custom_objects: dict[str, Any] | None = None,
        print_system_info: bool = False,
        force_reset: bool = True,
        safe: bool | SafeLoadLimits = False,
        **kwargs: Any,
    ) -> SelfPPOKL:
        """
        Load the model from a zip-file: SB3's ``load``, and with ``safe=True`` without trusting the file.

        SB3's ``load`` trusts its file: it decodes the zip's ``":serialized:"`` fields (spaces, policy class,
        schedules, ``kl_controller``...) with ``cloudpickle``, which runs whatever a crafted file names, makes the
        environment the file names and restores every key of the file. With ``safe=True``
        (:mod:`sb3_ppo_kl.common.safe_load`) the file is read once and bounded (:class:`~sb3_ppo_kl.SafeLoadLimits`);
        each field is decoded by an allowlist that admits only what a model of SB3, sb3-contrib or this package saves
        (:func:`~sb3_ppo_kl.common.safe_pickle.admitted`) and refuses anything else before it is called; only this
        class's attributes are restored; ``env`` and ``tensorboard_log`` are the caller's, never the file's; and the
        policies' sizes are checked before they are built. SB3's ``load`` then reads the same bytes from memory.
        ``lr_schedule`` is not decoded: it is rebuilt from ``learning_rate``, as on every load.

        :param path: path to the file (or a file-like) where to load the agent from
        :param env: the new environment to run the loaded model on (can be None if you only need prediction from a
            trained model); has priority over any saved environment (with ``safe=True``, the only one)
        :param device: Device on which the code should run.
        :param custom_objects: Dictionary of objects to replace upon loading: a field given here is not decoded at
            all (with ``safe=True`` either), as in SB3
        :param print_system_info: Whether to print system info from the saved model and the current system info
        :param force_reset: Force call to ``reset()`` before training to avoid unexpected behavior.
        :param safe: False (default): SB3's ``load``, which trusts the file. True: the safe path, for a file from
            someone else, with the default limits; a :class:`~sb3_ppo_kl.SafeLoadLimits`: the safe path with these
            limits (for a model larger than the defaults allow)
        :param kwargs: extra arguments to change the model when loading (``tensorboard_log=...`` included)
        :return: new model instance with loaded parameters
        :raises TypeError: if ``safe`` is not a bool or a SafeLoadLimits
        :raises ~sb3_ppo_kl.SafeLoadError: with ``safe`` set, for anything refused (a field that names a class or
            function outside the allowlist, an unknown attribute, a file or policy over the limits, weights torch
            refuses); the error names the member or field and what was refused
        """
        if not isinstance(safe, (bool, np.bool_, SafeLoadLimits)):
            raise TypeError(f"`safe` must be a bool (True or False) or a SafeLoadLimits, got {described(safe)}")
        with removed_classes():  # the classes a 0.2.0 model may name (see sb3_ppo_kl.common.legacy)
            if isinstance(safe, SafeLoadLimits) or safe:
                where = repr(str(path)) if isinstance(path, (str, os.PathLike)) else "<file object>"
                path, custom_objects = prepare_load(
                    cls,
                    path,
                    env,
                    {"lr_schedule": None, **(custom_objects or {})},
                    kwargs,
                    safe if isinstance(safe, SafeLoadLimits) else None,
                    context=f"{cls.__name__}.load({where}, safe=True)",
                    remedy="If you trust this file, load it with safe=False, or give that field yourself in "
                    "custom_objects (SB3 then does not decode it).",
                )
            return super().load(
                path,
                env=env,
                device=device,
                custom_objects=custom_objects,
                print_system_info=print_system_info,
                force_reset=force_reset,
                **kwargs,
            )
