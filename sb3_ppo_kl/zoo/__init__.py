"""
RL Zoo glue: registers PPOKL (and its variants) in rl_zoo3 and ships their hyperparameters.

rl_zoo3 has no plugin mechanism: algorithms are found in ``rl_zoo3.utils.ALGOS`` and, for
``-optimize``, in ``rl_zoo3.hyperparams_opt.HYPERPARAMS_SAMPLER`` / ``HYPERPARAMS_CONVERTER``.
:func:`register` adds our entries to those dictionaries (the same objects rl_zoo3's train and
enjoy scripts read), as RL Zoo's own guide does for SBX.

    python -m sb3_ppo_kl.zoo train --algo ppo_kl --env CartPole-v1 -f logs/
    python -m sb3_ppo_kl.zoo enjoy --algo ppo_kl --env CartPole-v1 -f logs/ --no-render

Names: ``ppo_kl`` (PPOKL), ``ppo_kl_lstm`` (RecurrentPPOKL, as RL Zoo's ``ppo_lstm``) and
``ppo_kl_mask`` (MaskablePPOKL; its environments must provide ``action_masks()``).

rl_zoo3 and optuna (the ``[zoo]`` extra) are imported when a function needs them, so that this module, its
``ALGOS`` and ``default_config`` import without them, and the command line can say how to install them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stable_baselines3.common.base_class import BaseAlgorithm

from sb3_ppo_kl.ppo_kl import PPOKL
from sb3_ppo_kl.ppo_kl_mask import MaskablePPOKL
from sb3_ppo_kl.ppo_kl_recurrent import RecurrentPPOKL

if TYPE_CHECKING:
    import optuna

HYPERPARAMS_DIR = Path(__file__).parent / "hyperparams"

# rl_zoo3 name -> algorithm. Each name has its hyperparameter file HYPERPARAMS_DIR / f"{name}.yml".
ALGOS: dict[str, type[BaseAlgorithm]] = {"ppo_kl": PPOKL, "ppo_kl_mask": MaskablePPOKL, "ppo_kl_lstm": RecurrentPPOKL}


class _NoneOrClipTrial:
    """
    An Optuna trial seen through RL Zoo's PPO sampler, with one change: the ``clip_range``
    choices gain ``None``, so that pure PPO1 (no clipping) is part of the search space.
    Everything else is forwarded to the real trial.
    """

    def __init__(self, trial: optuna.Trial):
        self._trial = trial

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        if name == "clip_range":
            choices = [None, *choices]
        return self._trial.suggest_categorical(name, choices)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._trial, name)


def sample_ppo_kl_params(trial: optuna.Trial, n_actions: int, n_envs: int, additional_args: dict) -> dict[str, Any]:
    """
    RL Zoo's PPO search space (``rl_zoo3.hyperparams_opt.sample_ppo_params``) with ``clip_range``
    in {None, 0.1, 0.2, 0.3, 0.4}, plus PPOKL's own parameters:

    - ``kl_target``: log-uniform in [0.001, 0.1]
    - ``kl_coef`` (initial beta): log-uniform in [0.01, 10]
    - ``adaptive_kl``: True or False (fixed beta)
    """
    from rl_zoo3 import hyperparams_opt

    hyperparams = hyperparams_opt.sample_ppo_params(_NoneOrClipTrial(trial), n_actions, n_envs, additional_args)  # type: ignore[arg-type]
    hyperparams["kl_target"] = trial.suggest_float("kl_target", 0.001, 0.1, log=True)
    hyperparams["kl_coef"] = trial.suggest_float("kl_coef", 0.01, 10.0, log=True)
    hyperparams["adaptive_kl"] = trial.suggest_categorical("adaptive_kl", [True, False])
    return hyperparams


def convert_ppo_kl_params(sampled_params: dict[str, Any]) -> dict[str, Any]:
    """The inverse direction, for ``--trial-id`` / loading a study: Optuna's raw params to PPOKL arguments."""
    from rl_zoo3 import hyperparams_opt

    kl_keys = ("kl_target", "kl_coef", "adaptive_kl")
    hyperparams = hyperparams_opt.convert_onpolicy_params({k: v for k, v in sampled_params.items() if k not in kl_keys})
    hyperparams.update({k: sampled_params[k] for k in kl_keys if k in sampled_params})
    return hyperparams


# PPOKL's arguments that take a schedule, beyond rl_zoo3's own (learning_rate, clip_range, clip_range_vf)
SCHEDULED = ("kl_target", "ref_kl_coef")


def _preprocess_schedules(hyperparams: dict[str, Any]) -> dict[str, Any]:
    """
    rl_zoo3's schedule preprocessing, extended to ``kl_target`` and ``ref_kl_coef``: ``"lin_0.02"`` in a yml file
    becomes a value that falls linearly from 0.02 to 0 over training, as it does for ``clip_range``
    (``ref_kl_coef: lin_1.0``: the KL to the reference weighs 1.0 at the start and nothing at the end).
    """
    from rl_zoo3.utils import SimpleLinearSchedule

    assert _RL_ZOO_PREPROCESS_SCHEDULES is not None, "register() keeps rl_zoo3's own before replacing it"
    hyperparams = _RL_ZOO_PREPROCESS_SCHEDULES(hyperparams)
    for key in SCHEDULED:
        value = hyperparams.get(key)
        if isinstance(value, str):
            kind, _, start = value.partition("_")
            try:
                initial = float(start)
            except ValueError:
                kind = ""
            if kind != "lin":
                raise ValueError(f"`{key}` in a hyperparameter file must be a number or 'lin_<start>', got {value!r}")
            hyperparams[key] = SimpleLinearSchedule(initial)
    return hyperparams


# rl_zoo3's own ExperimentManager._preprocess_schedules, kept by the first register()
_RL_ZOO_PREPROCESS_SCHEDULES: Callable[[dict[str, Any]], dict[str, Any]] | None = None


def register() -> None:
    """Make our algorithms known to rl_zoo3 (idempotent)."""
    global _RL_ZOO_PREPROCESS_SCHEDULES
    from rl_zoo3 import hyperparams_opt, utils
    from rl_zoo3.exp_manager import ExperimentManager

    if _RL_ZOO_PREPROCESS_SCHEDULES is None:
        _RL_ZOO_PREPROCESS_SCHEDULES = ExperimentManager._preprocess_schedules
    for name, algo in ALGOS.items():
        utils.ALGOS[name] = algo
        hyperparams_opt.HYPERPARAMS_SAMPLER[name] = sample_ppo_kl_params
        hyperparams_opt.HYPERPARAMS_CONVERTER[name] = convert_ppo_kl_params
    ExperimentManager._preprocess_schedules = staticmethod(_preprocess_schedules)  # type: ignore[method-assign]


def default_config(algo: str) -> str:
    """Path of our shipped hyperparameter file for ``algo``."""
    return str(HYPERPARAMS_DIR / f"{algo}.yml")
