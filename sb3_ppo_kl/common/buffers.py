"""Rollout buffers that also hold, per sample, the action distribution of the policy that collected it."""

from typing import Any, NamedTuple

import numpy as np
import torch as th
from sb3_contrib.common.maskable.buffers import MaskableDictRolloutBuffer, MaskableRolloutBuffer
from sb3_contrib.common.recurrent.buffers import RecurrentDictRolloutBuffer, RecurrentRolloutBuffer
from stable_baselines3.common.buffers import DictRolloutBuffer, RolloutBuffer


class KLRolloutBatch(NamedTuple):
    """
    One minibatch of a :class:`KLBufferMixin` buffer.

    :param data: what the underlying SB3 / sb3-contrib buffer yields (``RolloutBufferSamples``, ...)
    :param old_dist_params: the rollout policy's :func:`~sb3_ppo_kl.common.kl.distribution_params`
        for these samples, or None when no snapshot was taken
    :param indices: the samples' positions in the flattened rollout, one per row of ``data``
        (for the recurrent buffers, padded rows hold position 0 and are masked out by ``data.mask``)
    :param ref_dist_params: the frozen reference policy's :func:`~sb3_ppo_kl.common.kl.distribution_params`
        for these samples, or None when the algorithm has no reference policy
    """

    data: Any
    old_dist_params: th.Tensor | None
    indices: np.ndarray
    ref_dist_params: th.Tensor | None = None


class KLBufferMixin:
    """
    Mix into an SB3 rollout buffer (first in the bases) to attach the old policy's distribution
    parameters to every minibatch.

    The algorithm fills ``old_dist_params`` (and ``ref_dist_params``, the reference policy's, when it has
    one) once per update, in the flattened sample order that ``get()`` indexes; ``reset()`` clears them
    with the rest of the rollout.
    """

    old_dist_params: th.Tensor | None = None
    ref_dist_params: th.Tensor | None = None

    def reset(self) -> None:
        super().reset()  # type: ignore[misc]
        self.old_dist_params = None
        self.ref_dist_params = None

    def _get_samples(self, batch_inds: np.ndarray, *args: Any, **kwargs: Any) -> KLRolloutBatch:  # type: ignore[override]
        # *args: the base buffer's own arguments (SB3's `env`; sb3-contrib's recurrent `env_change, env`)
        data = super()._get_samples(batch_inds, *args, **kwargs)  # type: ignore[misc]
        indices = self._row_indices(batch_inds)
        old = ref = None
        if self.old_dist_params is not None:
            old = self.old_dist_params[th.as_tensor(indices, device=self.old_dist_params.device)]
        if self.ref_dist_params is not None:
            ref = self.ref_dist_params[th.as_tensor(indices, device=self.ref_dist_params.device)]
        return KLRolloutBatch(data, old, indices, ref)

    def _row_indices(self, batch_inds: np.ndarray) -> np.ndarray:
        """The flattened-rollout position of every row of the minibatch the base buffer just built."""
        return batch_inds


class KLRecurrentBufferMixin(KLBufferMixin):
    """
    :class:`KLBufferMixin` for sb3-contrib's recurrent buffers, whose minibatches are sequences
    padded to a common length.

    The old parameters are padded exactly as the other fields: the base ``_get_samples`` leaves the
    padding function of this minibatch in ``self.pad_and_flatten``; padding the sample indices with
    it gives, for each padded row, its position in the rollout (padding rows get position 0, a
    valid sample, so the old parameters stay finite there; ``data.mask`` excludes them).
    """

    def _row_indices(self, batch_inds: np.ndarray) -> np.ndarray:
        return self.pad_and_flatten(np.asarray(batch_inds)).cpu().numpy()  # type: ignore[attr-defined]


# The buffers below yield KLRolloutBatch (the base buffer's samples plus the old distribution) where their bases
# yield the samples alone: an intended change of _get_samples' return type, which mypy reports as [misc].
class KLRolloutBuffer(KLBufferMixin, RolloutBuffer):  # type: ignore[misc]
    """SB3's :class:`~stable_baselines3.common.buffers.RolloutBuffer` with the old policy's distribution per sample."""


class KLDictRolloutBuffer(KLBufferMixin, DictRolloutBuffer):  # type: ignore[misc]
    """SB3's :class:`~stable_baselines3.common.buffers.DictRolloutBuffer` with the old policy's distribution per sample."""


class KLMaskableRolloutBuffer(KLBufferMixin, MaskableRolloutBuffer):  # type: ignore[misc]
    """sb3-contrib's ``MaskableRolloutBuffer`` with the old policy's (masked) distribution per sample."""


class KLMaskableDictRolloutBuffer(KLBufferMixin, MaskableDictRolloutBuffer):  # type: ignore[misc]
    """sb3-contrib's ``MaskableDictRolloutBuffer`` with the old policy's (masked) distribution per sample."""


class KLRecurrentRolloutBuffer(KLRecurrentBufferMixin, RecurrentRolloutBuffer):  # type: ignore[misc]
    """sb3-contrib's ``RecurrentRolloutBuffer`` with the old policy's distribution per sample."""


class KLRecurrentDictRolloutBuffer(KLRecurrentBufferMixin, RecurrentDictRolloutBuffer):  # type: ignore[misc]
    """sb3-contrib's ``RecurrentDictRolloutBuffer`` with the old policy's distribution per sample."""
