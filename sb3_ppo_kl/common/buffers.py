"""Rollout buffers that also hold, per sample, the action distribution of the policy that collected it."""

from typing import Any, NamedTuple

import numpy as np
import torch as th
from stable_baselines3.common.buffers import DictRolloutBuffer, RolloutBuffer
from stable_baselines3.common.vec_env import VecNormalize


class KLRolloutBatch(NamedTuple):
    """
    One minibatch of a :class:`KLBufferMixin` buffer.

    :param data: what the underlying SB3 / sb3-contrib buffer yields (``RolloutBufferSamples``, ...)
    :param old_dist_params: the rollout policy's :func:`~sb3_ppo_kl.common.kl.distribution_params`
        for these samples, or None when no snapshot was taken
    :param indices: the samples' positions in the flattened rollout
    """

    data: Any
    old_dist_params: th.Tensor | None
    indices: np.ndarray


class KLBufferMixin:
    """
    Mix into an SB3 rollout buffer (first in the bases) to attach the old policy's distribution
    parameters to every minibatch.

    The algorithm fills ``old_dist_params`` once per update, in the flattened sample order that
    ``get()`` indexes; ``reset()`` clears it with the rest of the rollout.
    """

    old_dist_params: th.Tensor | None = None

    def reset(self) -> None:
        super().reset()  # type: ignore[misc]
        self.old_dist_params = None

    def _get_samples(self, batch_inds: np.ndarray, env: VecNormalize | None = None) -> KLRolloutBatch:  # type: ignore[override]
        data = super()._get_samples(batch_inds, env)  # type: ignore[misc]
        old = None if self.old_dist_params is None else self.old_dist_params[th.as_tensor(batch_inds, device=self.old_dist_params.device)]
        return KLRolloutBatch(data, old, batch_inds)


class KLRolloutBuffer(KLBufferMixin, RolloutBuffer):
    """SB3's :class:`~stable_baselines3.common.buffers.RolloutBuffer` with the old policy's distribution per sample."""


class KLDictRolloutBuffer(KLBufferMixin, DictRolloutBuffer):
    """SB3's :class:`~stable_baselines3.common.buffers.DictRolloutBuffer` with the old policy's distribution per sample."""
