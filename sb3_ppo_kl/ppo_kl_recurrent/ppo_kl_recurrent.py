from collections.abc import Sequence
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch as th
from gymnasium import spaces
from sb3_contrib import RecurrentPPO
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.distributions import Distribution
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, Schedule

from sb3_ppo_kl.common.buffers import KLRecurrentDictRolloutBuffer, KLRecurrentRolloutBuffer
from sb3_ppo_kl.common.finite import distribution_validation_skipped
from sb3_ppo_kl.common.kl import KLCoefController, distribution_params
from sb3_ppo_kl.common.reference import PolicySource
from sb3_ppo_kl.common.rollout import FULL_PASS_BATCH_SIZE
from sb3_ppo_kl.ppo_kl.ppo_kl import PPOKL

SelfRecurrentPPOKL = TypeVar("SelfRecurrentPPOKL", bound="RecurrentPPOKL")


# PPOKL's batch_size and clip_range accept what RecurrentPPO's do and more (None: no clipping): mypy's [misc]
class RecurrentPPOKL(PPOKL, RecurrentPPO):  # type: ignore[misc]
    """
    PPO with an adaptive KL penalty ("PPO1") and LSTM policies: sb3-contrib's ``RecurrentPPO`` with
    :class:`~sb3_ppo_kl.PPOKL`'s loss and beta rule.

    Paper: Schulman et al. (2017), "Proximal Policy Optimization Algorithms", section 4,
    https://arxiv.org/abs/1707.06347

    A drop-in for ``RecurrentPPO``: the same policies (``MlpLstmPolicy``, ``CnnLstmPolicy``,
    ``MultiInputLstmPolicy``), rollout collection, ``predict(obs, state=..., episode_start=...)``,
    callbacks and save/load; ``isinstance(model, RecurrentPPO)`` holds. The update is PPOKL's (see
    its docstring), with ``clip_range=None`` by default.

    The KL between the rollout policy and the current policy is computed, like RecurrentPPO's losses,
    on the sequences of the rollout starting from the LSTM states stored during collection. Padded
    steps of the minibatches are masked out of every loss term, the KL penalty and beta's ``d``
    (``x[mask].mean()``, as RecurrentPPO does).

    :param policy: The policy model to use (MlpLstmPolicy, CnnLstmPolicy, MultiInputLstmPolicy); must
        subclass ``RecurrentActorCriticPolicy``
    :param env: The environment to learn from (if registered in Gym, can be str)
    :param learning_rate: Adam step size, a float or a schedule of the progress remaining (1 to 0).
        Default 3e-4.
    :param n_steps: Steps per environment per update; the rollout has ``n_steps * n_envs`` samples.
        Default 128 (RecurrentPPO's).
    :param batch_size: Minibatch size in samples before padding, ``>= 2`` (``>= 1`` with ``normalize_advantage=False``); one larger than the rollout is the whole rollout,
        as in RecurrentPPO.
        Default 128 (RecurrentPPO's).
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
    :param ref_policy: None (default), or a frozen recurrent reference policy (a ``RecurrentActorCriticPolicy``, or
        the zip of a RecurrentPPO / RecurrentPPOKL model): ``ref_kl_coef * KL[pi_ref || pi_theta]`` joins the loss, as
        in PPOKL (see its docstring). The rollout stores the LSTM states of the policy that collected it, not the
        reference's, so the reference keeps its own: once per update its actor LSTM runs over the rollout in time
        order, one sequence of ``n_steps`` per environment with the stored episode starts, from its state at the end
        of the previous rollout (zeros at the start, and after ``load()``, as RecurrentPPO's own states), and its
        distribution is stored for every sample (:func:`~sb3_ppo_kl.ppo_kl_recurrent.ppo_kl_recurrent.recurrent_reference_dist_params`).
        Its LSTM may differ in size from the policy's (unless ``ref_tau > 0``). :meth:`~sb3_ppo_kl.PPOKL.from_pretrained` fine-tunes a
        pretrained RecurrentPPO policy of the same architecture.
    :param ref_kl_coef: Coefficient of the KL to the reference, ``>= 0``, or a schedule. Default 1.0.
    :param ref_tau: Soft update coefficient of the reference, in ``[0, 1]``: 0 (default) keeps it frozen; otherwise
        after every update it becomes ``(1 - ref_tau) * reference + ref_tau * policy``, as
        in PPOKL (see its docstring). It then needs a reference of the policy's architecture. The reference's LSTM moves
        with its other weights; its LSTM states carry on from one rollout to the next as before.
    :param clip_range: None (default) for pure PPO1. A float or schedule adds PPO2's ratio clipping on
        top of the penalty.
    :param clip_range_vf: Clipping of the value function update. None (default): no clipping.
        IMPORTANT: this clipping depends on the reward scaling.
    :param normalize_advantage: Normalise advantages per minibatch (over its unpadded steps). Default True.
    :param ent_coef: Entropy coefficient. Default 0.0.
    :param vf_coef: Value function coefficient. Default 0.5.
    :param max_grad_norm: Maximum gradient norm. Default 0.5.
    :param use_sde: Use generalized State Dependent Exploration (gSDE). Default False.
    :param sde_sample_freq: Sample a new gSDE noise matrix every n steps; -1 (default): once per rollout.
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

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = RecurrentPPO.policy_aliases
    supported_action_spaces: ClassVar[tuple[type[spaces.Space], ...]] = (
        spaces.Box,
        spaces.Discrete,
        spaces.MultiDiscrete,
        spaces.MultiBinary,
    )
    kl_rollout_buffer_classes: ClassVar[tuple[type[RolloutBuffer], type[RolloutBuffer]]] = (
        KLRecurrentRolloutBuffer,
        KLRecurrentDictRolloutBuffer,
    )
    policy: RecurrentActorCriticPolicy  # type: ignore[assignment]
    # The reference's actor LSTM (hidden, cell) states at the end of the last rollout; None: zeros
    _ref_lstm_states: tuple[th.Tensor, th.Tensor] | None = None

    def __init__(
        self,
        policy: str | type[RecurrentActorCriticPolicy],
        env: GymEnv | str,
        learning_rate: float | Schedule = 3e-4,
        n_steps: int = 128,
        batch_size: int = 128,
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
            ref_policy=ref_policy,
            ref_kl_coef=ref_kl_coef,
            ref_tau=ref_tau,
        )
        # RecurrentPPO's __init__ (not PPOKL's, which passes buffer arguments RecurrentPPO does not take);
        # PPOKL's _setup_model, train() and kl_coef come first in the MRO, RecurrentPPO's
        # collect_rollouts() and _excluded_save_params() next.
        RecurrentPPO.__init__(
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
            use_sde=use_sde,
            sde_sample_freq=sde_sample_freq,
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

    def _setup_model(self) -> None:
        super()._setup_model()  # PPOKL's, then RecurrentPPO's
        self._ref_lstm_states = None  # as RecurrentPPO's own LSTM states, not saved: zeros on load
        # RecurrentPPO always builds sb3-contrib's own recurrent buffer: replace it by the KL buffer of
        # the same shape (self.rollout_buffer_class, picked by PPOKL's _setup_model)
        buffer_class: Any = self.rollout_buffer_class  # a recurrent KL buffer, which takes the hidden state shape
        self.rollout_buffer = buffer_class(
            self.n_steps,
            self.observation_space,
            self.action_space,
            self.rollout_buffer.hidden_state_shape,  # type: ignore[attr-defined]
            self.device,
            gamma=self.gamma,
            gae_lambda=self.gae_lambda,
            n_envs=self.n_envs,
        )

    def _evaluate_actions(self, rollout_data: Any, policy: Any = None) -> tuple[th.Tensor, th.Tensor, th.Tensor | None]:
        """PPOKL's hook, evaluating the padded sequences from the LSTM states stored in the rollout."""
        actions = rollout_data.actions
        if isinstance(self.action_space, spaces.Discrete):
            actions = actions.long().flatten()
        return (policy or self.policy).evaluate_actions(
            rollout_data.observations, actions, rollout_data.lstm_states, rollout_data.episode_starts
        )

    def _action_distribution(self, rollout_data: Any, policy: Any = None) -> Distribution:
        """PPOKL's hook through the actor's LSTM alone, from the LSTM states stored in the rollout."""
        distribution, _ = (policy or self.policy).get_distribution(
            rollout_data.observations, rollout_data.lstm_states.pi, rollout_data.episode_starts
        )
        return distribution

    def _valid_samples(self, rollout_data: Any) -> th.Tensor:
        """The unpadded steps of the minibatch, as RecurrentPPO masks its losses."""
        return rollout_data.mask > 1e-8

    def _reference_dist_params(self, ref_policy: BasePolicy) -> th.Tensor:
        """
        The reference over the rollout in time order, from its own LSTM states, which it keeps from one rollout to
        the next (see :func:`~sb3_ppo_kl.ppo_kl_recurrent.ppo_kl_recurrent.recurrent_reference_dist_params`).
        """
        params, self._ref_lstm_states = recurrent_reference_dist_params(
            ref_policy,  # type: ignore[arg-type]
            self.rollout_buffer,  # type: ignore[arg-type]
            self._ref_lstm_states,
            FULL_PASS_BATCH_SIZE,
        )
        return params

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_ref_lstm_states"]

    def learn(
        self: SelfRecurrentPPOKL,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 1,
        tb_log_name: str = "RecurrentPPOKL",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfRecurrentPPOKL:
        with distribution_validation_skipped(self.check_finite_env):
            return RecurrentPPO.learn(  # type: ignore[return-value]
                self,
                total_timesteps=total_timesteps,
                callback=callback,
                log_interval=log_interval,
                tb_log_name=tb_log_name,
                reset_num_timesteps=reset_num_timesteps,
                progress_bar=progress_bar,
            )


def recurrent_reference_dist_params(
    policy: RecurrentActorCriticPolicy,
    buffer: RolloutBuffer,
    lstm_states: tuple[th.Tensor, th.Tensor] | None,
    max_batch: int,
) -> tuple[th.Tensor, tuple[th.Tensor, th.Tensor]]:
    """
    A recurrent reference's :func:`~sb3_ppo_kl.common.kl.distribution_params` for every sample of a recurrent
    rollout buffer, from the reference's own LSTM states.

    The buffer stores the LSTM states of the policy that collected the rollout, not the reference's. So the
    reference's actor LSTM is run over the rollout in time order: one sequence per environment, its ``n_steps``
    observations with their ``episode_starts`` (which reset the state where an episode starts, as in collection),
    starting from ``lstm_states``, the reference's state at the end of the previous rollout. Chunks of at most
    ``max_batch`` samples (``max_batch // n_envs`` steps of every environment) carry the state from one to the next.
    The result is in the buffer's flattened order, environment-major (sample ``t`` of environment ``e`` at row
    ``e * n_steps + t``, sb3-contrib's ``swap_and_flatten``), the order in which minibatches index it.

    :param policy: the reference, a ``RecurrentActorCriticPolicy`` on the buffer's device
    :param buffer: a full sb3-contrib recurrent rollout buffer (``get()`` called or not)
    :param lstm_states: the reference actor's ``(hidden, cell)`` states, each ``(n_lstm_layers, n_envs, hidden)``,
        at the start of the rollout; None for zeros (the start of training)
    :param max_batch: the most samples per forward pass
    :return: the parameters, ``(n_envs * n_steps, k)``, and the reference's states after the rollout's last step
    """
    n_envs, n_steps = buffer.n_envs, buffer.buffer_size
    lstm = policy.lstm_actor
    if lstm_states is None:
        zeros = th.zeros((lstm.num_layers, n_envs, lstm.hidden_size), device=buffer.device)
        lstm_states = (zeros, zeros.clone())

    def env_major(array: np.ndarray) -> np.ndarray:  # (n_envs * n_steps, ...), whether get() has flattened it or not
        return array if buffer.generator_ready else buffer.swap_and_flatten(array)

    observations: Any = buffer.observations
    if isinstance(observations, dict):
        observations = {key: env_major(value) for key, value in observations.items()}
    else:
        observations = env_major(observations)
    episode_starts = env_major(buffer.episode_starts).reshape(n_envs, n_steps)
    steps_per_pass = max(1, max_batch // n_envs)
    params = []
    with th.no_grad():
        for start in range(0, n_steps, steps_per_pass):
            end = min(start + steps_per_pass, n_steps)
            rows = (np.arange(n_envs)[:, None] * n_steps + np.arange(start, end)[None, :]).ravel()  # env-major
            if isinstance(observations, dict):
                obs: Any = {key: buffer.to_torch(value[rows]) for key, value in observations.items()}
            else:
                obs = buffer.to_torch(observations[rows])
            starts = buffer.to_torch(episode_starts[:, start:end].ravel())
            distribution, (hidden, cell) = policy.get_distribution(obs, lstm_states, starts)
            lstm_states = (hidden, cell)
            params.append(distribution_params(distribution).reshape(n_envs, end - start, -1))
    return th.cat(params, dim=1).reshape(n_envs * n_steps, -1), lstm_states
