"""
Argument checks shared by every algorithm, controller and reference option of this package.

One rule for all of them: a value of the wrong type raises ``TypeError``, a value of the right type outside its range
raises ``ValueError``, and both messages name the argument and say what it accepts ("`kl_target` must be a finite
number > 0, got '0.01' (str)"). Every check runs before an environment is made or a network built.
"""

import math
import numbers
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np


def is_real(value: Any) -> bool:
    """A real number: an int, a float or a NumPy number; not a bool (``True`` is not a coefficient)."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def described(value: Any) -> str:
    """``value`` as an error message shows it: its repr and, for a wrong type, the type's name."""
    return f"{value!r} ({type(value).__name__})"


def check_real(name: str, value: Any, valid: str, condition: Callable[[float], bool] | None = None) -> float:
    """
    Validate a numeric argument and return it as a float.

    :param name: the argument's name, for the error message
    :param value: the value given
    :param valid: what the argument accepts, in words (``"a finite number > 0"``): the messages say
        "`name` must be <valid>, got ..."
    :param condition: the range the value must lie in (``lambda v: v > 0``); None: any finite number
    :return: ``float(value)``
    :raises TypeError: if ``value`` is not a real number (an int, a float or a NumPy number): a string, as a
        config file easily gives, None, or a bool (a bool is a bool, never a number)
    :raises ValueError: if ``value`` is not finite or fails ``condition``
    """
    if not is_real(value):
        raise TypeError(f"`{name}` must be {valid}, got {described(value)}")
    if not (math.isfinite(value) and (condition is None or condition(value))):
        raise ValueError(f"`{name}` must be {valid}, got {value!r}")
    return float(value)


def check_int(name: str, value: Any, valid: str, condition: Callable[[int], bool] | None = None) -> int:
    """
    Validate an integer argument (a Python or NumPy integer, not a bool) and return it as an int.

    :param name: the argument's name, for the error message
    :param value: the value given
    :param valid: what the argument accepts, in words (``"an integer >= 0"``)
    :param condition: the range the value must lie in; None: any integer
    :return: ``int(value)``
    :raises TypeError: if ``value`` is not an integer (a float such as ``2.0``, a string, a bool)
    :raises ValueError: if it fails ``condition``
    """
    if not (isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))):
        raise TypeError(f"`{name}` must be {valid}, got {described(value)}")
    if condition is not None and not condition(value):  # type: ignore[arg-type]
        raise ValueError(f"`{name}` must be {valid}, got {value!r}")
    return int(value)  # type: ignore[arg-type]


def check_bool(name: str, value: Any) -> bool:
    """
    Validate a flag: ``True`` or ``False`` (or a NumPy bool), nothing else.

    :param name: the argument's name, for the error message
    :param value: the value given
    :return: ``bool(value)``
    :raises TypeError: for anything but a bool: ``"yes"``, ``"False"`` (a true string) or ``1`` would otherwise be read
        as True in silence
    """
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"`{name}` must be a bool (True or False), got {described(value)}")
    return bool(value)


def check_optional_positive(name: str, value: Any, schedule: bool = False) -> None:
    """
    ``None`` (the option is off) or a finite number ``> 0``, as SB3 PPO's ``clip_range``, ``clip_range_vf`` and
    ``target_kl`` take; with ``schedule=True`` a callable of the progress remaining is accepted too (and checked
    where it is used).

    :raises TypeError: for anything else (a string, a bool)
    :raises ValueError: for a number that is not finite or ``<= 0``
    """
    if value is None or (schedule and callable(value)):
        return
    valid = "None (off), a finite number > 0" + (" or a schedule" if schedule else "")
    check_real(name, value, valid, lambda v: v > 0)


def check_coef_bounds(name: str, bounds: Any, adaptive: bool) -> tuple[float, float]:
    """
    Validate the bounds of an adaptive KL coefficient and return them as ``(low, high)`` floats.

    :param name: the argument's name, for the error message
    :param bounds: ``(low, high)``, a pair of real numbers with ``0 <= low <= high`` (``high`` may be ``inf``)
    :param adaptive: whether the coefficient adapts. An adaptive coefficient needs ``low > 0``: the rule multiplies
        and divides the coefficient, so a coefficient of 0 would stay 0 for good (0 times any factor is 0) and the
        penalty would be off in silence. A fixed coefficient never reads the bounds, and may be 0.
    :return: ``(low, high)``
    :raises TypeError: if ``bounds`` is not a pair of real numbers (a string, None, a pair with a string or a bool)
    :raises ValueError: for a pair of the wrong length, a NaN, ``low < 0``, ``low > high``, or ``low == 0`` when
        ``adaptive``
    """
    valid = "a pair (low, high) of real numbers with 0 <= low <= high"
    if isinstance(bounds, (str, bytes)) or not isinstance(bounds, Iterable):
        raise TypeError(f"`{name}` must be {valid}, got {described(bounds)}")
    pair = tuple(bounds)
    if not all(is_real(bound) for bound in pair):
        raise TypeError(f"`{name}` must be {valid}, got {bounds!r}")
    if not (len(pair) == 2 and not any(math.isnan(bound) for bound in pair) and 0 <= pair[0] <= pair[1]):
        raise ValueError(f"`{name}` must be {valid}, got {bounds!r}")
    low, high = float(pair[0]), float(pair[1])
    if adaptive and low == 0:
        raise ValueError(
            f"`{name}` must have low > 0 when the coefficient adapts (adaptive_kl=True): a coefficient of 0 would stay 0 "
            f"(0 times kl_adapt_factor is 0) and the penalty would be off for good, got {bounds!r}. For no penalty, use "
            "kl_coef=0 with adaptive_kl=False"
        )
    return low, high


def check_schedule(name: str, schedule: Callable[[float], float]) -> None:
    """A schedule of the progress remaining must give finite values ``>= 0`` at the start and at the end of training."""
    for progress in (1.0, 0.0):
        scheduled_value(name, schedule, progress)


def scheduled_value(name: str, schedule: Callable[[float], float], progress_remaining: float) -> float:
    """``schedule(progress_remaining)`` as a float; ValueError naming ``name`` unless it is finite and ``>= 0``."""
    value = schedule(progress_remaining)
    if not (is_real(value) and math.isfinite(value) and value >= 0):
        raise ValueError(
            f"`{name}` as a schedule must give finite numbers >= 0, got {value!r} at progress_remaining={progress_remaining}"
        )
    return float(value)


def check_ppo_hyperparameters(
    n_steps: int,
    batch_size: int,
    n_epochs: int,
    normalize_advantage: bool,
    clip_range: Any,
    clip_range_vf: Any,
    target_kl: Any,
) -> None:
    """
    The PPO arguments PPOKL shares with SB3 PPO, checked by this module's one rule: TypeError for a wrong type
    (``n_steps=True``, ``batch_size=64.0``, ``clip_range="0.2"``), ValueError for a value out of range, each naming the
    parameter and what it accepts.
    """
    check_int("n_steps", n_steps, "an integer >= 1", lambda value: value >= 1)
    check_int("n_epochs", n_epochs, "an integer >= 1", lambda value: value >= 1)
    check_bool("normalize_advantage", normalize_advantage)
    min_batch = 2 if normalize_advantage else 1
    when = " when normalize_advantage=True" if normalize_advantage else ""
    check_int("batch_size", batch_size, f"an integer >= {min_batch}{when}", lambda value: value >= min_batch)
    check_optional_positive("clip_range", clip_range, schedule=True)
    check_optional_positive("clip_range_vf", clip_range_vf, schedule=True)
    check_optional_positive("target_kl", target_kl)


def check_rollout_size(n_steps: int, n_envs: int, batch_size: int, normalize_advantage: bool) -> None:
    """
    SB3 PPO's own checks of the rollout against the minibatch (sb3-contrib's variants make none): a rollout of one
    sample cannot be normalised (ValueError), and a rollout that is not a multiple of the minibatch ends each epoch
    with a truncated minibatch, which SB3 PPO warns about in the same words.
    """
    rollout_size = n_steps * n_envs
    if normalize_advantage and rollout_size <= 1:
        raise ValueError(
            f"`n_steps * n_envs` must be > 1 when normalize_advantage=True, got n_steps={n_steps} and n_envs={n_envs}"
        )
    if rollout_size % batch_size > 0:
        warnings.warn(
            f"You have specified a mini-batch size of {batch_size},"
            f" but because the `RolloutBuffer` is of size `n_steps * n_envs = {rollout_size}`,"
            f" after every {rollout_size // batch_size} untruncated mini-batches,"
            f" there will be a truncated mini-batch of size {rollout_size % batch_size}\n"
            f"We recommend using a `batch_size` that is a factor of `n_steps * n_envs`.\n"
            f"Info: (n_steps={n_steps} and n_envs={n_envs})",
            stacklevel=3,
        )
