from collections.abc import Sequence
from typing import Any, ClassVar, TypeVar

import torch as th
from gymnasium import spaces
from sb3_contrib import MaskablePPO
from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy
from stable_baselines3.common.base_class import maybe_make_env
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.distributions import Distribution
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, Schedule

from sb3_ppo_kl.common.buffers import KLMaskableDictRolloutBuffer, KLMaskableRolloutBuffer
from sb3_ppo_kl.common.finite import distribution_validation_skipped
from sb3_ppo_kl.common.kl import KLCoefController
from sb3_ppo_kl.common.reference import PolicySource
from sb3_ppo_kl.ppo_kl.ppo_kl import PPOKL

SelfMaskablePPOKL = TypeVar("SelfMaskablePPOKL", bound="MaskablePPOKL")


# PPOKL's batch_size, clip_range and rollout_buffer widen MaskablePPO's (None: no clipping; a KL buffer): mypy's [misc]
class MaskablePPOKL(PPOKL, MaskablePPO):  # type: ignore[misc]
    """
    PPO with an adaptive KL penalty ("PPO1") and invalid action masking: sb3-contrib's
    ``MaskablePPO`` with :class:`~sb3_ppo_kl.PPOKL`'s loss and beta rule.

    Paper: Schulman et al. (2017), "Proximal Policy Optimization Algorithms", section 4,
    https://arxiv.org/abs/1707.06347. Invalid action masking: Huang & Ontañón (2020),
    https://arxiv.org/abs/2006.14171

    A drop-in for ``MaskablePPO``: the same policies (``MlpPolicy``, ``CnnPolicy``,
    ``MultiInputPolicy``), rollout collection, ``learn(..., use_masking=True)``,
    ``predict(..., action_masks=...)``, ``MaskableEvalCallback`` and ``evaluate_policy`` from
    ``sb3_contrib.common.maskable``; ``isinstance(model, MaskablePPO)`` holds. The update is
    PPOKL's (see its docstring), with ``clip_range=None`` by default.

    The KL penalty and beta's ``d`` compare the rollout policy and the current policy masked with the
    same action masks, the ones stored with each sample: the KL between the distributions over the
    valid actions. A masked action has probability exactly 0 under both and contributes exactly 0.

    :param policy: The policy model to use (MlpPolicy, CnnPolicy, MultiInputPolicy); must subclass
        ``MaskableActorCriticPolicy``
    :param env: The environment to learn from (if registered in Gym, can be str); it must provide
        action masks (``action_masks()`` method, or sb3-contrib's ``ActionMasker`` wrapper) unless
        ``learn(use_masking=False)``
    :param learning_rate: Adam step size, a float or a schedule of the progress remaining (1 to 0).
        Default 3e-4.
    :param n_steps: Steps per environment per update; the rollout has ``n_steps * n_envs`` samples.
        Default 2048.
    :param batch_size: Minibatch size, ``>= 2`` (``>= 1`` with ``normalize_advantage=False``); one larger than the
        rollout is the whole rollout, as in MaskablePPO. Default 64.
    :param n_epochs: Passes over the rollout per update. Default 10.
    :param gamma: Discount factor. Default 0.99.
    :param gae_lambda: GAE lambda. Default 0.95.
    :param kl_target: Target KL ``d_targ`` between consecutive policies, nats per state, ``> 0``, or a
        schedule of the progress remaining (1 to 0), as ``clip_range``. Default 0.01.
    :param kl_coef: Initial KL coefficient beta, ``>= 0``. Default 1.0. An adaptive beta starts inside
        ``kl_coef_bounds``, so ``> 0``: ``kl_coef=0`` (no penalty) needs ``adaptive_kl=False``.
    :param adaptive_kl: Adapt beta toward ``kl_target`` after every update (True, default), or keep
        ``kl_coef`` fixed (False).
    :param kl_tolerance: Beta is left alone while ``kl_target / kl_tolerance <= d <= kl_target * kl_tolerance``,
        ``> 1``. Default 1.5.
    :param kl_adapt_factor: Factor by which beta is multiplied or divided, ``> 1``. Default 2.0.
    :param kl_coef_bounds: ``(low, high)``, two real numbers with ``0 <= low <= high``: adapted beta is clamped
        to this range. Default ``(1e-4, 1e4)``. With ``adaptive_kl=True``, ``low`` must be ``> 0``: a beta of 0
        would stay 0 for good (0 times ``kl_adapt_factor`` is 0).
    :param kl_controller_class: The rule that adapts beta, a :class:`~sb3_ppo_kl.KLCoefController` subclass.
        Default ``KLCoefController`` (the paper's rule); a class's name also does (see PPOKL).
    :param kl_controller_kwargs: None (default), or a dict of the controller class's own arguments.
    :param ref_policy: None (default), or a frozen reference policy: ``ref_kl_coef * KL[pi_ref || pi_theta]``
        joins the loss, as in PPOKL (see its docstring for the direction). It must be a maskable policy
        (``MaskableActorCriticPolicy``, or the zip of a MaskablePPO / MaskablePPOKL model), and is masked with the
        stored action masks, as the policy is; :meth:`~sb3_ppo_kl.PPOKL.from_pretrained` converts a
        pretrained PPO policy of the same architecture.
    :param ref_kl_coef: Coefficient of the KL to the reference, ``>= 0``, or a schedule. Default 1.0.
    :param ref_tau: Soft update coefficient of the reference, in ``[0, 1]``: 0 (default) keeps it frozen; otherwise
        after every update it becomes ``(1 - ref_tau) * reference + ref_tau * policy``, as
        in PPOKL (see its docstring). It then needs a reference of the policy's architecture.
    :param clip_range: None (default) for pure PPO1. A float or schedule adds PPO2's ratio clipping on
        top of the penalty.
    :param clip_range_vf: Clipping of the value function update. None (default): no clipping.
        IMPORTANT: this clipping depends on the reward scaling.
    :param normalize_advantage: Normalise advantages per minibatch. Default True.
    :param ent_coef: Entropy coefficient. Default 0.0.
    :param vf_coef: Value function coefficient. Default 0.5.
    :param max_grad_norm: Maximum gradient norm. Default 0.5.
    :param rollout_buffer_class: Rollout buffer class; must be an sb3-contrib maskable buffer mixing in
        :class:`~sb3_ppo_kl.common.buffers.KLBufferMixin`. None (default) picks
        :class:`~sb3_ppo_kl.common.buffers.KLMaskableRolloutBuffer` or ``KLMaskableDictRolloutBuffer``.
    :param rollout_buffer_kwargs: Keyword arguments for the rollout buffer.
    :param target_kl: SB3's optional early stop on the sampled KL estimate, ``1.5 * target_kl``.
        Default None (never). Independent of ``kl_target``.
    :param stats_window_size: Episodes averaged for the rollout logs. Default 100.
    :param tensorboard_log: TensorBoard log directory (None: no TensorBoard).
    :param policy_kwargs: Additional arguments for the policy.
    :param verbose: 0 silent, 1 info, 2 debug.
    :param seed: Seed for the pseudo random generators.
    :param device: Device (cpu, cuda, auto).
    :param _init_setup_model: Whether to build the network at the creation of the instance.
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = MaskablePPO.policy_aliases
    supported_action_spaces: ClassVar[tuple[type[spaces.Space], ...]] = (
        spaces.Discrete,
        spaces.MultiDiscrete,
        spaces.MultiBinary,
    )
    kl_rollout_buffer_classes: ClassVar[tuple[type[RolloutBuffer], type[RolloutBuffer]]] = (
        KLMaskableRolloutBuffer,
        KLMaskableDictRolloutBuffer,
    )
    policy: MaskableActorCriticPolicy  # type: ignore[assignment]

    def __init__(
        self,
        policy: str | type[MaskableActorCriticPolicy],
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
        # Make an environment given by name now, so that an unsupported action space is a ValueError
        # here rather than an assertion in MaskablePPO's __init__
        env = maybe_make_env(env, verbose)  # type: ignore[assignment]
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
        # MaskablePPO's __init__ (not PPOKL's, which passes gSDE arguments MaskablePPO does not take);
        # PPOKL's _setup_model, train() and kl_coef come first in the MRO, MaskablePPO's
        # collect_rollouts() and predict() next.
        MaskablePPO.__init__(
            self,
            policy,
            env,
            learning_rate=learning_rate,
            n_steps=n_steps,
            batch_size=batch_size,
            n_epochs=n_epochs,
            gamma=gamma,
            gae_lambda=gae_lambda,
            clip_range=clip_range,  # type: ignore[arg-type]
            clip_range_vf=clip_range_vf,
            normalize_advantage=normalize_advantage,
            ent_coef=ent_coef,
            vf_coef=vf_coef,
            max_grad_norm=max_grad_norm,
            rollout_buffer_class=rollout_buffer_class,
            rollout_buffer_kwargs=rollout_buffer_kwargs,
            target_kl=target_kl,
            stats_window_size=stats_window_size,
            tensorboard_log=tensorboard_log,
            policy_kwargs=policy_kwargs,
            verbose=verbose,
            seed=seed,
            device=device,
            _init_setup_model=False,
        )
        self._check_env()

        if _init_setup_model:
            self._setup_model()

    def _evaluate_actions(self, rollout_data: Any, policy: Any = None) -> tuple[th.Tensor, th.Tensor, th.Tensor | None]:
        """
        PPOKL's hook with the sample's stored action masks: the same masks the rollout policy acted under, and
        the reference policy is masked with.
        """
        actions = rollout_data.actions
        if isinstance(self.action_space, spaces.Discrete):
            actions = actions.long().flatten()
        return (policy or self.policy).evaluate_actions(
            rollout_data.observations, actions, action_masks=rollout_data.action_masks
        )

    def _action_distribution(self, rollout_data: Any, policy: Any = None) -> Distribution:
        """PPOKL's hook with the sample's stored action masks, as :meth:`_evaluate_actions`."""
        return (policy or self.policy).get_distribution(rollout_data.observations, action_masks=rollout_data.action_masks)

    def learn(  # type: ignore[override]
        self: SelfMaskablePPOKL,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 1,
        tb_log_name: str = "MaskablePPOKL",
        reset_num_timesteps: bool = True,
        use_masking: bool = True,
        progress_bar: bool = False,
    ) -> SelfMaskablePPOKL:
        with distribution_validation_skipped(self.check_finite_env):
            return MaskablePPO.learn(  # type: ignore[return-value]
                self,
                total_timesteps=total_timesteps,
                callback=callback,
                log_interval=log_interval,
                tb_log_name=tb_log_name,
                reset_num_timesteps=reset_num_timesteps,
                use_masking=use_masking,
                progress_bar=progress_bar,
            )
