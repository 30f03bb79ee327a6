"""
The passes of PPO1 over a whole rollout, shared by PPOKL and its variants: the snapshot of the policy that collected
it (and of a reference) for every sample, and ``d``, the mean KL between the policy before and after an update.

:class:`RolloutKLMixin` also holds the hooks through which these passes and the minibatch loss evaluate a batch of
the rollout (:meth:`~RolloutKLMixin._evaluate_actions`, :meth:`~RolloutKLMixin._action_distribution`,
:meth:`~RolloutKLMixin._valid_samples`): a feed-forward policy's here; MaskablePPOKL passes the stored action masks,
RecurrentPPOKL the stored LSTM states and the mask of its padded sequences.
"""

import math
from typing import TYPE_CHECKING, Any

import torch as th
from gymnasium import spaces
from stable_baselines3.common.distributions import Distribution
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.policies import BasePolicy

from sb3_ppo_kl.common.buffers import KLBufferMixin, KLRolloutBatch
from sb3_ppo_kl.common.finite import NonFiniteError
from sb3_ppo_kl.common.kl import KLCoefController, distribution_params, has_analytic_kl, per_state_kl, sampled_kl

# Samples per forward pass when the whole rollout is evaluated (old-policy snapshot, KL after the update).
FULL_PASS_BATCH_SIZE = 4096

# The mixin is an OnPolicyAlgorithm for the type checker only: at run time it precedes one in the algorithm's bases.
if TYPE_CHECKING:
    _Algorithm = OnPolicyAlgorithm
else:
    _Algorithm = object


def masked_mean(x: th.Tensor, valid: th.Tensor | None) -> th.Tensor:
    """Mean of ``x`` over the valid rows (``x[valid].mean()``, as RecurrentPPO masks its losses), or over all when None."""
    return x.mean() if valid is None else x[valid].mean()


class RolloutKLMixin(_Algorithm):
    """The rollout-wide passes of PPO1 and the hooks that evaluate a batch of the rollout (see the module)."""

    rollout_buffer: KLBufferMixin  # type: ignore[assignment]
    kl_controller: KLCoefController

    def _evaluate_actions(self, rollout_data: Any, policy: Any = None) -> tuple[th.Tensor, th.Tensor, th.Tensor | None]:
        """
        Values, log-probabilities and entropy of the rollout's actions under the current policy (or under
        ``policy``, the reference policy, when given).

        As a side effect ``policy.action_dist`` holds the action distribution of these states:
        SB3 policies fill that object in place on every forward pass (sb3-contrib's too). Variants
        whose policies take more inputs override this method: MaskablePPOKL passes the stored action
        masks, RecurrentPPOKL the stored LSTM states and episode starts.
        """
        actions = rollout_data.actions
        if isinstance(self.action_space, spaces.Discrete):
            actions = actions.long().flatten()
        return (policy or self.policy).evaluate_actions(rollout_data.observations, actions)

    def _action_distribution(self, rollout_data: Any, policy: Any = None) -> Distribution:
        """
        The action distribution of the rollout's states under the current policy (or ``policy``): the actor alone,
        without the value function, for the full-rollout passes that need only the distribution (the old-policy
        and reference snapshots, and ``d``). Like :meth:`_evaluate_actions` it leaves the distribution in
        ``policy.action_dist``, and variants override it the same way.
        """
        return (policy or self.policy).get_distribution(rollout_data.observations)

    def _valid_samples(self, rollout_data: Any) -> th.Tensor | None:
        """
        Boolean mask of the minibatch rows that are real samples, or None when all are.

        PPOKL's minibatches have no padding. :class:`~sb3_ppo_kl.RecurrentPPOKL` overrides this
        with the mask of its padded sequences; every mean of the update (losses, KL, ``d``) is
        taken over the valid rows only (see :func:`_masked_mean`).
        """
        return None

    def _kl_to_old(self, batch: KLRolloutBatch, log_prob: th.Tensor) -> th.Tensor:
        """Per-sample ``KL[pi_old || pi_theta]`` for a batch just passed through :meth:`_evaluate_actions`."""
        if batch.old_dist_params is not None:
            return per_state_kl(batch.old_dist_params, self.policy.action_dist)
        return sampled_kl(batch.data.old_log_prob, log_prob)

    def _snapshot_rollout_policy(self) -> None:
        """Store the rollout policy's action distribution for every sample, in one pass without gradients."""
        self.rollout_buffer.old_dist_params = None
        if not has_analytic_kl(self.policy.action_dist):
            return  # the sampled KL needs only the rollout's log-probabilities, already stored
        self.rollout_buffer.old_dist_params = self._rollout_dist_params(self.policy)

    def _rollout_dist_params(self, policy: BasePolicy) -> th.Tensor:
        """``policy``'s :func:`distribution_params` for every sample of the rollout, in its flattened order."""
        params, indices = [], []
        with th.no_grad():
            for batch in self.rollout_buffer.get(FULL_PASS_BATCH_SIZE):  # type: ignore[attr-defined]
                batch_params = distribution_params(self._action_distribution(batch.data, policy))
                batch_indices = th.as_tensor(batch.indices, device=batch_params.device)
                valid = self._valid_samples(batch.data)
                if valid is not None:  # scatter back only the real samples, not the padding
                    batch_params, batch_indices = batch_params[valid], batch_indices[valid]
                params.append(batch_params)
                indices.append(batch_indices)
        flat = th.cat(params)
        snapshot = th.empty_like(flat)
        snapshot[th.cat(indices)] = flat
        return snapshot

    def _rollout_kl(self) -> tuple[float, float | None]:
        """
        ``d``, the mean KL over the whole rollout between the rollout policy and the current policy, and in the
        same pass the mean ``KL[pi_ref || pi_theta]`` over the rollout (None without a reference policy).
        """
        with_ref = self.rollout_buffer.ref_dist_params is not None
        totals, count = th.zeros(2 if with_ref else 1), 0
        with th.no_grad():
            for batch in self.rollout_buffer.get(FULL_PASS_BATCH_SIZE):  # type: ignore[attr-defined]
                if batch.old_dist_params is None:  # the sampled KL needs the log-probabilities of the rollout's actions
                    _, log_prob, _ = self._evaluate_actions(batch.data)
                else:
                    self._action_distribution(batch.data)
                    log_prob = batch.data.old_log_prob  # unused by the analytic KL
                kl = self._kl_to_old(batch, log_prob)
                kls = [kl]
                if with_ref:
                    kls.append(per_state_kl(batch.ref_dist_params, self.policy.action_dist))
                valid = self._valid_samples(batch.data)
                if valid is not None:
                    kls = [values[valid] for values in kls]
                totals += th.stack([values.sum() for values in kls]).cpu()
                count += kl.numel() if valid is None else int(valid.sum())
        means = (totals / count).tolist()
        return means[0], means[1] if with_ref else None

    def _measured_rollout_kl(self) -> tuple[float, float | None]:
        """:meth:`_rollout_kl` in evaluation mode (the mode the rollout policy acted in), refused unless ``d`` is finite."""
        self.policy.set_training_mode(False)
        kl, ref_kl = self._rollout_kl()
        if not math.isfinite(kl):
            raise NonFiniteError(
                f"{type(self).__name__}: the KL between the policies before and after the update after "
                f"{self.num_timesteps} timesteps is {kl}; beta was left at {self.kl_controller.kl_coef}"
            )
        return kl, ref_kl
