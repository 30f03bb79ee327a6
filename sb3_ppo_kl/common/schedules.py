"""Schedules of the progress remaining (1 at the start of training, 0 at the end), as SB3's ``clip_range``."""

import math
import numbers


class HoldThenLinearSchedule:
    """
    Hold ``start`` for the first ``hold_fraction`` of training, then go linearly to ``end``, reached at
    ``end_fraction`` of training and kept to the end.

    SB3's :class:`~stable_baselines3.common.utils.LinearSchedule` (and ``get_linear_fn``) starts moving at once;
    this one waits. E.g. ``ref_kl_coef=HoldThenLinearSchedule(1.0, 0.0, hold_fraction=0.4, end_fraction=0.8)``
    holds the coefficient of the KL to the reference at 1.0 for the first 40% of the steps, decays it to 0 at 80%,
    and leaves it at 0 for the last 20%. A class, not a closure, so that it is pickled with a saved model and
    written out readably (``repr``).

    :param start: the value for ``1 - progress_remaining <= hold_fraction``
    :param end: the value for ``1 - progress_remaining >= end_fraction``. Default 0.0.
    :param hold_fraction: the fraction of training, ``0 <= hold_fraction < end_fraction``, during which ``start``
        is held. Default 0.0 (no hold: SB3's ``LinearSchedule``).
    :param end_fraction: the fraction of training, ``hold_fraction < end_fraction <= 1``, at which ``end`` is
        reached. Default 1.0 (at the end of training).
    """

    def __init__(self, start: float, end: float = 0.0, hold_fraction: float = 0.0, end_fraction: float = 1.0) -> None:
        for name, value in (("start", start), ("end", end), ("hold_fraction", hold_fraction), ("end_fraction", end_fraction)):
            if not (isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)):
                raise ValueError(f"`{name}` must be a finite number, got {value!r}")
        if not 0 <= hold_fraction < end_fraction <= 1:
            raise ValueError(
                f"`hold_fraction` and `end_fraction` must satisfy 0 <= hold_fraction < end_fraction <= 1, "
                f"got hold_fraction={hold_fraction!r}, end_fraction={end_fraction!r}"
            )
        self.start = float(start)
        self.end = float(end)
        self.hold_fraction = float(hold_fraction)
        self.end_fraction = float(end_fraction)

    def __call__(self, progress_remaining: float) -> float:
        elapsed = 1.0 - progress_remaining
        if elapsed <= self.hold_fraction:
            return self.start
        if elapsed >= self.end_fraction:
            return self.end
        decayed = (elapsed - self.hold_fraction) / (self.end_fraction - self.hold_fraction)
        return self.start + decayed * (self.end - self.start)

    def __repr__(self) -> str:
        return (
            f"HoldThenLinearSchedule(start={self.start}, end={self.end}, hold_fraction={self.hold_fraction}, "
            f"end_fraction={self.end_fraction})"
        )
