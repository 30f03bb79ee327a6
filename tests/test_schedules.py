"""HoldThenLinearSchedule: held, then linear, then constant; validated; pickled as SB3 pickles schedules."""

import pickle

import cloudpickle
import pytest
from stable_baselines3.common.utils import LinearSchedule

from sb3_ppo_kl import HoldThenLinearSchedule


def test_holds_then_decays_then_stays():
    schedule = HoldThenLinearSchedule(1.0, 0.0, hold_fraction=0.4, end_fraction=0.8)
    # progress_remaining = 1 - fraction of training done; the benchmark's 500k steps: 200k held, 0 from 400k
    for done, value in [(0.0, 1.0), (0.2, 1.0), (0.4, 1.0), (0.5, 0.75), (0.6, 0.5), (0.7, 0.25), (0.8, 0.0), (1.0, 0.0)]:
        assert schedule(1.0 - done) == pytest.approx(value), done
    assert repr(schedule) == "HoldThenLinearSchedule(start=1.0, end=0.0, hold_fraction=0.4, end_fraction=0.8)"


def test_without_hold_it_is_sb3_linear_schedule():
    ours, sb3 = HoldThenLinearSchedule(2.0, 0.5, end_fraction=0.6), LinearSchedule(2.0, 0.5, 0.6)
    for i in range(11):
        assert ours(i / 10) == pytest.approx(sb3(i / 10))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(start="1"), "`start` must be a finite number"),
        (dict(start=float("inf")), "`start` must be a finite number"),
        (dict(end=True), "`end` must be a finite number"),
        (dict(hold_fraction=0.5, end_fraction=0.5), "0 <= hold_fraction < end_fraction <= 1"),
        (dict(hold_fraction=-0.1), "0 <= hold_fraction < end_fraction <= 1"),
        (dict(end_fraction=1.5), "0 <= hold_fraction < end_fraction <= 1"),
    ],
)
def test_invalid_arguments(kwargs, message):
    kwargs.setdefault("start", 1.0)
    with pytest.raises(ValueError, match=message):
        HoldThenLinearSchedule(**kwargs)


@pytest.mark.parametrize("dumps", [pickle.dumps, cloudpickle.dumps])
def test_pickles(dumps):
    schedule = HoldThenLinearSchedule(1.0, 0.1, 0.25, 0.5)
    loaded = pickle.loads(dumps(schedule))
    assert repr(loaded) == repr(schedule) and loaded(0.6) == schedule(0.6)
