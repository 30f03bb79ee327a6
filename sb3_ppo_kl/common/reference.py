"""
A frozen reference policy: loading one from an SB3 policy or model zip, rebuilding it when a model is
loaded, and copying pretrained weights into a policy of the same architecture.

The reference is stored with a model as its weights (a state dict, saved by SB3 next to the policy's)
and a *spec*: its class and constructor arguments, from which :func:`build_policy` rebuilds the
module before the weights are loaded into it. The module itself is never pickled.
"""

import inspect
import numbers
import os
from pathlib import Path
from typing import Any

import torch as th
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from stable_baselines3.common.distributions import Distribution
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.save_util import load_from_zip_file

from sb3_ppo_kl.common.kl import _GAUSSIAN

PolicySource = BasePolicy | str | os.PathLike


def _constant_schedule(progress_remaining: float) -> float:
    """The learning rate a frozen policy is built with: never used (a reference is never optimised)."""
    del progress_remaining
    return 0.0


def accepts(cls: type, name: str) -> bool:
    """Whether ``cls``'s constructor has a parameter of this name."""
    return name in inspect.signature(cls.__init__).parameters  # type: ignore[misc]


def is_real(value: Any) -> bool:
    """A real number, not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def policy_spec(policy: BasePolicy) -> dict[str, Any]:
    """
    What :func:`build_policy` needs to rebuild ``policy``: ``{"policy_class": ..., "kwargs": ...}``.

    The kwargs are SB3's ``_get_constructor_parameters()`` (the data ``BasePolicy.save`` stores), without
    the learning-rate schedule, plus ``share_features_extractor``, which SB3 does not record.
    """
    kwargs = dict(policy._get_constructor_parameters())
    kwargs.pop("lr_schedule", None)
    if accepts(type(policy), "share_features_extractor") and hasattr(policy, "share_features_extractor"):
        kwargs["share_features_extractor"] = policy.share_features_extractor
    return {"policy_class": type(policy), "kwargs": kwargs}


def build_policy(spec: dict[str, Any]) -> BasePolicy:
    """A new policy (random weights, on the CPU) from a :func:`policy_spec`."""
    policy_class = spec["policy_class"]
    kwargs = dict(spec["kwargs"])
    if accepts(policy_class, "lr_schedule"):
        kwargs["lr_schedule"] = _constant_schedule
    return policy_class(**kwargs)


def freeze(policy: BasePolicy) -> BasePolicy:
    """Evaluation mode, no gradients: the policy can no longer be trained. Returns it."""
    policy.set_training_mode(False)
    policy.requires_grad_(False)
    return policy


def load_policy(source: Any, name: str) -> BasePolicy:
    """
    A fresh copy, on the CPU, of an SB3 policy, or of the policy of an SB3 model zip.

    :param source: a ``BasePolicy`` (copied: the original is left untouched), or the path (str or
        ``Path``, with or without ``.zip``) of a model saved by SB3's, sb3-contrib's or this package's
        ``save()``: PPO, A2C, MaskablePPO, PPOKL, MaskablePPOKL...
    :param name: the argument's name, for error messages
    :raises ValueError: for anything else, a missing file, or a zip without a policy
    """
    if isinstance(source, BasePolicy):
        policy = build_policy(policy_spec(source))
        policy.load_state_dict(source.state_dict())
        return policy
    if not isinstance(source, (str, os.PathLike)):
        raise ValueError(  # noqa: TRY004 (ValueError as for every other bad argument)
            f"`{name}` must be an SB3 policy (a BasePolicy) or the path of an SB3 model zip, got {type(source).__name__}"
        )
    path = Path(source)
    if not path.exists() and path.with_suffix(".zip").exists():
        path = path.with_suffix(".zip")
    if not path.is_file():
        raise ValueError(f"`{name}`: no SB3 model zip at {str(source)!r}")
    data, params, _ = load_from_zip_file(path, device="cpu")
    if not data or "policy_class" not in data or "policy" not in params:
        raise ValueError(f"`{name}`: {str(source)!r} is not an SB3 model zip with a policy")
    policy_class = data["policy_class"]
    policy_kwargs = dict(data.get("policy_kwargs") or {})
    policy_kwargs.pop("device", None)
    net_arch = policy_kwargs.get("net_arch")
    if isinstance(net_arch, list) and net_arch and isinstance(net_arch[0], dict):
        policy_kwargs["net_arch"] = net_arch[0]  # the format of SB3 < 1.8, as BaseAlgorithm.load converts it
    kwargs: dict[str, Any] = dict(observation_space=data["observation_space"], action_space=data["action_space"])
    if accepts(policy_class, "lr_schedule"):
        kwargs["lr_schedule"] = _constant_schedule
    if accepts(policy_class, "use_sde") and "use_sde" not in policy_kwargs:
        kwargs["use_sde"] = bool(data.get("use_sde", False))
    policy = policy_class(**kwargs, **policy_kwargs)
    policy.load_state_dict(params["policy"])
    return policy


def check_reference(reference: BasePolicy, policy: BasePolicy, algorithm: str) -> None:
    """
    ValueError unless ``reference`` can be compared with ``policy`` state by state: the same observation and
    action spaces, a feed-forward policy, and the same family of action distribution (Gaussian, or the same
    discrete distribution class, so that :func:`~sb3_ppo_kl.common.kl.distribution_params` line up).
    """
    if reference.observation_space != policy.observation_space:
        raise ValueError(
            f"`ref_policy` has the observation space {reference.observation_space}, the environment "
            f"{policy.observation_space}; they must be equal"
        )
    if reference.action_space != policy.action_space:
        raise ValueError(
            f"`ref_policy` has the action space {reference.action_space}, the environment {policy.action_space}; "
            "they must be equal"
        )
    if isinstance(reference, RecurrentActorCriticPolicy):
        raise ValueError(  # noqa: TRY004 (ValueError as for every other bad argument)
            f"`ref_policy` is a recurrent policy ({type(reference).__name__}); {algorithm} supports feed-forward "
            "reference policies only"
        )
    ours, theirs = getattr(policy, "action_dist", None), getattr(reference, "action_dist", None)
    if not (isinstance(ours, Distribution) and isinstance(theirs, Distribution)):
        raise ValueError(  # noqa: TRY004
            f"`ref_policy` ({type(reference).__name__}) has no SB3 action distribution (`action_dist`)"
        )
    if not (isinstance(ours, _GAUSSIAN) and isinstance(theirs, _GAUSSIAN)) and type(ours) is not type(theirs):
        raise ValueError(
            f"`ref_policy`'s action distribution is a {type(theirs).__name__}, {algorithm}'s policy's a "
            f"{type(ours).__name__}: the KL between them is not defined state by state. Give a reference of "
            f"the policy class {algorithm} uses (from_pretrained() converts a pretrained policy to it)"
        )


def copy_weights(source: BasePolicy, target: BasePolicy, name: str) -> None:
    """
    Load ``source``'s weights into ``target``; ValueError naming every difference if their architectures differ.
    """
    theirs, ours = source.state_dict(), target.state_dict()
    missing = sorted(set(ours) - set(theirs))
    unexpected = sorted(set(theirs) - set(ours))
    shapes = [
        f"{key}: {tuple(theirs[key].shape)} vs {tuple(ours[key].shape)}"
        for key in ours
        if key in theirs and theirs[key].shape != ours[key].shape
    ]
    if missing or unexpected or shapes:
        details = []
        if missing:
            details.append(f"weights only the new policy has: {missing}")
        if unexpected:
            details.append(f"weights only `{name}` has: {unexpected}")
        if shapes:
            details.append(f"shapes that differ (`{name}` vs new policy): {shapes}")
        raise ValueError(
            f"`{name}` ({type(source).__name__}) has a different architecture from the new policy "
            f"({type(target).__name__}): {'; '.join(details)}. Give the same policy_kwargs (net_arch, ...) or leave "
            "policy_kwargs out to take the pretrained policy's"
        )
    with th.no_grad():
        target.load_state_dict(theirs)


def policy_kwargs_for(source: BasePolicy, policy_class: type) -> dict[str, Any]:
    """
    The ``policy_kwargs`` that make an algorithm build a ``policy_class`` of ``source``'s architecture:
    ``source``'s constructor arguments without the spaces, ``use_sde`` (an algorithm argument) and the
    ones ``policy_class`` does not take.
    """
    kwargs = policy_spec(source)["kwargs"]
    for key in ("observation_space", "action_space", "lr_schedule", "use_sde"):
        kwargs.pop(key, None)
    for key in ("squash_output", "full_std", "use_expln"):  # None unless gSDE: left to the defaults
        if kwargs.get(key) is None:
            kwargs.pop(key, None)
    return {key: value for key, value in kwargs.items() if accepts(policy_class, key)}
