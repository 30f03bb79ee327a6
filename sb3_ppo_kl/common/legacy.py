"""
Models saved by sb3_ppo_kl 0.2.0 with the options that 0.3.0 removed (issue 45): they load, with a warning naming
every option that is ignored from then on, and train on without it.

The removed options lost their comparisons in the benchmarks (the user guide's "what was tried" table): the value
warm-up (``value_warmup_rollouts``), the adapted and bounded reference coefficient (``ref_kl_target``,
``ref_kl_coef_bounds``), the hard reset of the reference (``ref_update_interval``), the anneal schedule
(``HoldThenLinearSchedule``), the stop inside the update (``kl_stop``, ``kl_stop_interval``) and the log-proportional
controller (``LogProportionalKLController``).

Two of them were classes, pickled by name in a 0.2.0 zip. While :func:`removed_classes` is active (PPOKL's ``load``
holds it), those names resolve to the stand-ins below, so that SB3's decoder and the safe one
(:mod:`~sb3_ppo_kl.common.safe_load`, which admits this package's controllers and schedules by kind) can read the
fields; :func:`drop_removed_options` then replaces them on the loaded model. Outside ``load`` the names do not exist.
"""

import contextlib
import sys
import threading
import types
import warnings
from collections.abc import Iterator
from typing import Any

from sb3_ppo_kl.common.kl import STANDARD_CONTROLLER_ARGUMENTS, KLCoefController

_KL_MODULE = "sb3_ppo_kl.common.kl"
#: The module of 0.2.0's schedules, present only while a 0.2.0 model loads (the safe decoder admits it too)
SCHEDULES_MODULE = "sb3_ppo_kl.common.schedules"


class _RemovedLogProportionalKLController(KLCoefController):
    """What a 0.2.0 ``LogProportionalKLController`` unpickles to; :func:`drop_removed_options` replaces it."""

    gain: float = 0.2


class _RemovedHoldThenLinearSchedule:
    """What a 0.2.0 ``HoldThenLinearSchedule`` unpickles to (its state: start, end, hold_fraction, end_fraction)."""

    start: float
    end: float
    hold_fraction: float
    end_fraction: float

    def __call__(self, progress_remaining: float) -> float:
        """The 0.2.0 schedule's value: ``start``, then linear to ``end`` between the two fractions of training."""
        elapsed = 1.0 - progress_remaining
        if elapsed <= self.hold_fraction:
            return self.start
        if elapsed >= self.end_fraction:
            return self.end
        return self.start + (elapsed - self.hold_fraction) / (self.end_fraction - self.hold_fraction) * (self.end - self.start)


# the names the pickles of 0.2.0 use
_RemovedLogProportionalKLController.__module__ = _KL_MODULE
_RemovedLogProportionalKLController.__name__ = _RemovedLogProportionalKLController.__qualname__ = "LogProportionalKLController"
_RemovedHoldThenLinearSchedule.__module__ = SCHEDULES_MODULE
_RemovedHoldThenLinearSchedule.__name__ = _RemovedHoldThenLinearSchedule.__qualname__ = "HoldThenLinearSchedule"

_lock = threading.RLock()


@contextlib.contextmanager
def removed_classes() -> Iterator[None]:
    """
    While active, ``sb3_ppo_kl.common.kl.LogProportionalKLController`` and
    ``sb3_ppo_kl.common.schedules.HoldThenLinearSchedule`` (a module of its own) name the stand-ins, so that a 0.2.0
    zip's ``kl_controller`` and ``_ref_kl_coef_schedule`` can be decoded. Both are removed again on exit.
    """
    with _lock:
        kl_module = sys.modules[_KL_MODULE]
        schedules = types.ModuleType(SCHEDULES_MODULE, "sb3_ppo_kl 0.2.0's schedules, while a 0.2.0 model loads")
        schedules.HoldThenLinearSchedule = _RemovedHoldThenLinearSchedule  # type: ignore[attr-defined]
        added_module = SCHEDULES_MODULE not in sys.modules  # not already there (a load within a load)
        added_name = not hasattr(kl_module, "LogProportionalKLController")
        if added_module:
            sys.modules[SCHEDULES_MODULE] = schedules
        if added_name:
            kl_module.LogProportionalKLController = _RemovedLogProportionalKLController  # type: ignore[attr-defined]
        try:
            yield
        finally:
            if added_name:
                del kl_module.LogProportionalKLController  # type: ignore[attr-defined]
            if added_module:
                del sys.modules[SCHEDULES_MODULE]


# attribute of a 0.2.0 model -> the value that changed nothing (no warning when the file has it)
_REMOVED_ATTRIBUTES: dict[str, Any] = {
    "value_warmup_rollouts": 0,
    "kl_stop": None,
    "kl_stop_interval": 4,
    "ref_update_interval": 1,
}
# the counters of the removed options: dropped without a word
_REMOVED_COUNTERS = ("_n_rollouts_trained", "_n_policy_updates")
#: Every attribute of a 0.2.0 model that :func:`drop_removed_options` consumes (the safe path restores these, and
#: only these, of the names the model no longer has)
REMOVED_STATE = frozenset({*_REMOVED_ATTRIBUTES, *_REMOVED_COUNTERS, "ref_kl_controller"})


def drop_removed_options(model: Any) -> None:
    """
    Remove from a loaded model (its ``__dict__``, restored from a 0.2.0 zip) the state of the removed options, and
    warn once, naming each option that was set and is ignored from now on, with what the model does instead:

    - ``value_warmup_rollouts``, ``kl_stop``, ``kl_stop_interval``: dropped; every update trains the policy and runs
      its ``n_epochs``;
    - ``ref_update_interval``: dropped; the reference moves after every update (with ``ref_tau > 0``);
    - ``ref_kl_target``, ``ref_kl_coef_bounds`` (the adapted reference coefficient, ``ref_kl_controller``): the
      coefficient stays fixed at its value in the file;
    - ``ref_kl_coef`` as a ``HoldThenLinearSchedule``: fixed at the schedule's value where training stopped;
    - ``kl_controller_class=LogProportionalKLController``: beta continues from its value in the file under the
      paper's rule (:class:`~sb3_ppo_kl.KLCoefController`, with the same target, band, factor and bounds).
    """
    state = model.__dict__
    ignored = []
    for name, default in _REMOVED_ATTRIBUTES.items():
        if name in state:
            value = state.pop(name)
            if value != default:
                ignored.append(f"{name}={value!r}")
    for name in _REMOVED_COUNTERS:
        state.pop(name, None)
    ref_controller = state.pop("ref_kl_controller", None)
    if isinstance(ref_controller, KLCoefController):
        if ref_controller.adaptive_kl:
            ignored.append(f"ref_kl_target={ref_controller.kl_target!r}")
            ignored.append(f"ref_kl_coef_bounds={ref_controller.kl_coef_bounds!r}")
        if state.get("_ref_kl_coef_schedule") is None:
            state["_ref_kl_coef"] = ref_controller.kl_coef
    schedule = state.get("_ref_kl_coef_schedule")
    if isinstance(schedule, _RemovedHoldThenLinearSchedule):
        value = float(schedule(state.get("_current_progress_remaining", 1.0)))
        ignored.append(
            f"ref_kl_coef=HoldThenLinearSchedule(start={schedule.start}, end={schedule.end}, "
            f"hold_fraction={schedule.hold_fraction}, end_fraction={schedule.end_fraction}) (now fixed at {value})"
        )
        state["_ref_kl_coef_schedule"] = None
        state["_ref_kl_coef"] = value
    controller = state.get("kl_controller")
    if isinstance(controller, _RemovedLogProportionalKLController):
        ignored.append(f"kl_controller_class=LogProportionalKLController (gain={controller.gain})")
        state["kl_controller"] = KLCoefController(
            **{name: getattr(controller, name) for name in STANDARD_CONTROLLER_ARGUMENTS}
        )
    if ignored:
        warnings.warn(
            f"{type(model).__name__}: this model was saved with options that sb3_ppo_kl 0.3.0 removed (they lost their "
            f"comparisons; see the user guide's 'what was tried'), ignored from now on: {'; '.join(ignored)}. The "
            "model trains on as PPOKL without them: every update runs its n_epochs, the reference (if any) moves after "
            "every update when ref_tau > 0, its coefficient is fixed, and beta follows the paper's rule.",
            UserWarning,
            stacklevel=3,
        )
