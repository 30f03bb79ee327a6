"""
A frozen reference policy: loading one from an SB3 policy or model zip, rebuilding it when a model is
loaded, and copying pretrained weights into a policy of the same architecture.

The reference is stored with a model as its weights (a state dict, saved by SB3 next to the policy's)
and a *spec*: its class and constructor arguments, from which :func:`build_policy` rebuilds the
module before the weights are loaded into it. The module itself is never pickled.
"""

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch as th
from gymnasium import spaces
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.distributions import Distribution
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import GymEnv, Schedule
from stable_baselines3.common.utils import polyak_update

from sb3_ppo_kl.common.buffers import KLBufferMixin
from sb3_ppo_kl.common.checks import check_real, check_schedule, scheduled_value
from sb3_ppo_kl.common.kl import comparable_distributions, has_analytic_kl
from sb3_ppo_kl.common.safe_load import ModelZip, accepts, check_policy_size, policy_kwargs_of, with_lr_schedule

PolicySource = BasePolicy | str | os.PathLike

#: ``ref_tau`` of the reference :meth:`ReferencePolicyMixin.from_pretrained` gives by default: the soft update that
#: won the fine-tuning benchmark on LunarLander-v3 and LunarLanderContinuous-v3 (issues 31 and 45), and ended
#: under PPO on Walker2d-v5 and HalfCheetah-v5, where it was checked afterwards (issue 46)
PRETRAINED_REF_TAU = 0.3


def policy_spec(policy: BasePolicy) -> dict[str, Any]:
    """
    What :func:`build_policy` needs to rebuild ``policy``: ``{"policy_class": ..., "kwargs": ...}``.

    The kwargs are SB3's ``_get_constructor_parameters()`` (the data ``BasePolicy.save`` stores), without
    the learning-rate schedule, plus ``share_features_extractor``, which SB3 does not record, and for sb3-contrib's
    recurrent policies their LSTM's arguments, which it does not record.
    """
    kwargs = dict(policy._get_constructor_parameters())
    kwargs.pop("lr_schedule", None)
    if accepts(type(policy), "share_features_extractor") and hasattr(policy, "share_features_extractor"):
        kwargs["share_features_extractor"] = policy.share_features_extractor
    if isinstance(policy, RecurrentActorCriticPolicy):  # sb3-contrib records none of its LSTM's arguments
        kwargs.update(
            lstm_hidden_size=policy.lstm_actor.hidden_size,
            n_lstm_layers=policy.lstm_actor.num_layers,
            shared_lstm=policy.shared_lstm,
            enable_critic_lstm=policy.enable_critic_lstm,
            lstm_kwargs=dict(policy.lstm_kwargs),
        )
    return {"policy_class": type(policy), "kwargs": kwargs}


def build_policy(spec: dict[str, Any]) -> BasePolicy:
    """A new policy (random weights, on the CPU) from a :func:`policy_spec`."""
    return spec["policy_class"](**with_lr_schedule(spec["policy_class"], spec["kwargs"]))


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
    :raises ~sb3_ppo_kl.common.safe_load.SafeLoadError: (a ValueError) if a field the policy needs names a class or
        function outside :func:`~sb3_ppo_kl.common.safe_load.admitted`: a zip is decoded without running its code
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
    # Someone else's file (sb3_ppo_kl.common.safe_load): read once and bounded; the fields the policy needs decoded
    # with the allowlist, the others not at all; the policy's size checked on the meta device before it is built
    model_zip = ModelZip.read(
        path,
        context=f"`{name}` ({str(source)!r})",
        remedy="If you trust this file, load the model with its algorithm's load() (e.g. PPO.load(path)) and give "
        f"its policy: {name}=model.policy.",
        raise_limit="PPOKL.load(path, safe=SafeLoadLimits({limit}=...)) (or the file's algorithm's load) and give its "
        f"policy: {name}=model.policy",
    )
    fields = ("policy_class", "policy_kwargs", "observation_space", "action_space")
    data = {**(model_zip.data or {}), **model_zip.fields(fields=fields)}
    if not model_zip.data or "policy_class" not in data or "policy.pth" not in model_zip.members:
        raise ValueError(f"`{name}`: {str(source)!r} is not an SB3 model zip with a policy")
    policy_class = data["policy_class"]
    if not (isinstance(policy_class, type) and issubclass(policy_class, BasePolicy)):
        raise ValueError(  # noqa: TRY004 (a bad file, as the other errors of this function)
            f"`{name}`: the policy_class of {str(source)!r} is not an SB3 policy class: {policy_class!r}"
        )
    kwargs = policy_kwargs_of(policy_class, data, data.get("use_sde", False))
    check_policy_size(policy_class, kwargs, "the fields 'policy_class' and 'policy_kwargs'", model_zip.limits, model_zip.how)
    weights = model_zip.weights("policy.pth")
    policy = policy_class(**kwargs)
    policy.load_state_dict(weights)  # type: ignore[arg-type]  # SB3 types its state dicts as tensors
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
    recurrent = isinstance(policy, RecurrentActorCriticPolicy)
    if isinstance(reference, RecurrentActorCriticPolicy) != recurrent:
        kind = "a recurrent" if isinstance(reference, RecurrentActorCriticPolicy) else "a feed-forward"
        raise ValueError(
            f"`ref_policy` is {kind} policy ({type(reference).__name__}); {algorithm} takes "
            + (
                "recurrent reference policies only (RecurrentActorCriticPolicy)"
                if recurrent
                else "feed-forward reference policies only"
            )
        )
    ours, theirs = getattr(policy, "action_dist", None), getattr(reference, "action_dist", None)
    if not (isinstance(ours, Distribution) and isinstance(theirs, Distribution)):
        raise ValueError(  # noqa: TRY004
            f"`ref_policy` ({type(reference).__name__}) has no SB3 action distribution (`action_dist`)"
        )
    if not comparable_distributions(ours, theirs):
        raise ValueError(
            f"`ref_policy`'s action distribution is a {type(theirs).__name__}, {algorithm}'s policy's a "
            f"{type(ours).__name__}: the KL between them is not defined state by state. Give a reference of "
            f"the policy class {algorithm} uses (from_pretrained() converts a pretrained policy to it)"
        )


def architecture_differences(source: BasePolicy, target: BasePolicy, name: str, other: str) -> list[str]:
    """
    How the state dicts of ``source`` (the argument ``name``) and ``target`` (described as ``other``) differ: the
    weights only one of them has and the shapes that differ, in words; empty when they have the same architecture.
    """
    theirs, ours = source.state_dict(), target.state_dict()
    missing = sorted(set(ours) - set(theirs))
    unexpected = sorted(set(theirs) - set(ours))
    shapes = [
        f"{key}: {tuple(theirs[key].shape)} vs {tuple(ours[key].shape)}"
        for key in ours
        if key in theirs and theirs[key].shape != ours[key].shape
    ]
    details = []
    if missing:
        details.append(f"weights only {other} has: {missing}")
    if unexpected:
        details.append(f"weights only `{name}` has: {unexpected}")
    if shapes:
        details.append(f"shapes that differ (`{name}` vs {other}): {shapes}")
    return details


def copy_weights(source: BasePolicy, target: BasePolicy, name: str) -> None:
    """
    Load ``source``'s weights into ``target``; ValueError naming every difference if their architectures differ.
    """
    details = architecture_differences(source, target, name, "the new policy")
    if details:
        raise ValueError(
            f"`{name}` ({type(source).__name__}) has a different architecture from the new policy "
            f"({type(target).__name__}): {'; '.join(details)}. Give the same policy_kwargs (net_arch, ...) or leave "
            "policy_kwargs out to take the pretrained policy's"
        )
    with th.no_grad():
        target.load_state_dict(source.state_dict())


def move_toward(reference: BasePolicy, policy: BasePolicy, tau: float) -> None:
    """
    The soft update of a target network, as SB3's DQN and SAC make it: every parameter of ``reference`` becomes
    ``(1 - tau) * reference + tau * policy`` (SB3's ``polyak_update``, in place), and every buffer (batch norm's
    running statistics, its batch count) becomes the policy's, as SB3 copies the running statistics. The two must
    have the same state-dict keys and shapes; the parameters are paired by name.
    """
    ours = dict(policy.named_parameters())
    theirs = dict(reference.named_parameters())
    names = list(theirs)
    polyak_update([ours[name] for name in names], [theirs[name] for name in names], tau)
    buffers = dict(policy.named_buffers())
    with th.no_grad():
        for name, buffer in reference.named_buffers():
            buffer.copy_(buffers[name])


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


SelfReferenceModel = TypeVar("SelfReferenceModel", bound="ReferencePolicyMixin")

# The mixin is an OnPolicyAlgorithm for the type checker only: at run time it precedes one in the algorithm's bases.
if TYPE_CHECKING:
    _Algorithm = OnPolicyAlgorithm
else:
    _Algorithm = object


class ReferencePolicyMixin(_Algorithm):
    """
    The reference-policy options of :class:`~sb3_ppo_kl.PPOKL` and its variants: ``ref_policy``, ``ref_kl_coef``
    (a number or a schedule), ``ref_tau``, and :meth:`from_pretrained`. Mixed into PPOKL before SB3's
    ``OnPolicyAlgorithm``; the variants inherit it with PPOKL.

    What it adds to the model: ``ref_policy`` (never optimised), ``ref_kl_coef`` (the value in use), and once per
    update ``rollout_buffer.ref_dist_params``, the reference's distribution for every sample, which the algorithm's
    loss compares with the policy's. With ``ref_tau > 0`` the reference moves toward the policy after every update
    (:meth:`_move_ref_policy`), as SB3's DQN and SAC move their target networks. The reference is saved as its
    weights and a spec (:func:`policy_spec`), never pickled.
    """

    ref_policy: BasePolicy | None
    _ref_policy_spec: dict[str, Any] | None
    rollout_buffer: KLBufferMixin  # type: ignore[assignment]

    # ref_kl_coef: a number, or a schedule of the progress remaining (then _ref_kl_coef is its value at the start)
    _ref_kl_coef: float = 1.0
    _ref_kl_coef_schedule: Schedule | None = None
    #: The soft update coefficient of the reference (0: frozen; 1: a copy of the policy), see ``ref_tau`` in PPOKL.
    #: Class attributes too, for models saved before the reference could move: they load with a frozen reference.
    ref_tau: float = 0.0
    # The moves of the reference so far, saved with the model
    _n_ref_updates: int = 0

    @property
    def ref_kl_coef(self) -> float:
        """
        The current coefficient of the KL to the reference policy (the value the next update uses): the fixed
        value, or the schedule's value at the current progress remaining.
        """
        if self._ref_kl_coef_schedule is not None:
            return scheduled_value("ref_kl_coef", self._ref_kl_coef_schedule, self._current_progress_remaining)
        return self._ref_kl_coef

    @ref_kl_coef.setter
    def ref_kl_coef(self, value: float | Schedule) -> None:
        """A number ``>= 0`` or a schedule of the progress remaining giving numbers ``>= 0``."""
        if callable(value):
            check_schedule("ref_kl_coef", value)
            self._ref_kl_coef_schedule = value
            self._ref_kl_coef = scheduled_value("ref_kl_coef", value, 1.0)
            return
        self._ref_kl_coef = check_real("ref_kl_coef", value, "a finite number >= 0 or a schedule", lambda v: v >= 0)
        self._ref_kl_coef_schedule = None

    def _make_ref_policy(self, ref_policy: PolicySource | None, ref_kl_coef: float | Schedule, ref_tau: float = 0.0) -> None:
        """
        Validate the reference arguments, set ``self.ref_kl_coef`` and ``self.ref_tau``, and load the reference
        policy, frozen, on the CPU, into ``self.ref_policy`` (with ``self._ref_policy_spec``, what rebuilds it on load).
        """
        self.ref_tau = check_real("ref_tau", ref_tau, "a finite number in [0, 1]", lambda v: 0 <= v <= 1)
        if ref_policy is None and self.ref_tau > 0:
            raise ValueError(f"`ref_tau` applies to a reference policy; give `ref_policy`, got ref_tau={ref_tau!r}")
        self._n_ref_updates = 0
        self.ref_kl_coef = ref_kl_coef  # type: ignore[assignment]  # the setter checks it
        self.ref_policy: BasePolicy | None = None
        self._ref_policy_spec: dict[str, Any] | None = None
        if ref_policy is None:
            return
        reference = load_policy(ref_policy, "ref_policy")
        self._ref_policy_spec = policy_spec(reference)
        self.ref_policy = freeze(reference)

    def _setup_ref_policy(self) -> None:
        """
        Put the reference policy on the device, frozen, and check it against the policy. On ``load()`` it is
        rebuilt here from ``self._ref_policy_spec``; ``load()`` then loads its saved weights into it.
        """
        if self._ref_policy_spec is None:
            self.ref_policy = None
            return
        if self.ref_policy is None:
            self.ref_policy = build_policy(self._ref_policy_spec)
        self.ref_policy = freeze(self.ref_policy.to(self.device))
        check_reference(self.ref_policy, self.policy, type(self).__name__)
        if self.ref_tau > 0:  # the reference moves toward the policy: it must have the policy's weights, name by name
            details = architecture_differences(self.ref_policy, self.policy, "ref_policy", "the policy")
            if details:
                raise ValueError(
                    f"`ref_tau`={self.ref_tau} moves the reference toward the policy, so `ref_policy` "
                    f"({type(self.ref_policy).__name__}) must have the policy's architecture ({type(self.policy).__name__}): "
                    f"{'; '.join(details)}. Give a reference of the policy's architecture, or ref_tau=0 for a frozen one"
                )

    def _get_torch_save_params(self) -> tuple[list[str], list[str]]:
        state_dicts, variables = super()._get_torch_save_params()
        if self.ref_policy is not None:
            state_dicts = [*state_dicts, "ref_policy"]  # its weights, saved and loaded as the policy's
        return state_dicts, variables

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "ref_policy"]  # the module is never pickled (see _ref_policy_spec)

    def _move_ref_policy(self) -> None:
        """
        After an update, move the reference toward the policy by ``ref_tau`` (:func:`move_toward`) and count the move.
        Nothing moves while ``ref_tau`` is 0 or without a reference.
        """
        if self.ref_policy is None or self.ref_tau == 0:
            return
        move_toward(self.ref_policy, self.policy, self.ref_tau)
        self._n_ref_updates += 1

    @classmethod
    def from_pretrained(
        cls: type[SelfReferenceModel],
        pretrained: PolicySource | BaseAlgorithm,
        env: GymEnv | str,
        policy: str | type[BasePolicy] | None = None,
        **kwargs: Any,
    ) -> SelfReferenceModel:
        """
        A new model whose policy starts as a copy of a pretrained policy, and which keeps close to it.

        ::

            model = PPOKL.from_pretrained("expert.zip", env)

        :param pretrained: an SB3 model (PPO, A2C, PPOKL, MaskablePPO..., e.g. one returned by
            :func:`~sb3_ppo_kl.behaviour_clone`), its policy (``model.policy``) or the path of an SB3 model zip.
            Its policy's weights are copied into the new policy (``load_state_dict``); the model itself is left
            untouched.
        :param env: the environment to fine-tune on; its spaces must be the pretrained policy's
        :param policy: the policy class or alias; None (default) takes the pretrained policy's class when this
            algorithm uses it, else ``"MlpPolicy"`` (``"MultiInputPolicy"`` for Dict observations)
        :param kwargs: the algorithm's other arguments. ``policy_kwargs`` defaults to the pretrained policy's
            architecture (net_arch, activation, features extractor...), ``use_sde`` to whether it used gSDE.
            ``ref_policy`` defaults to the pretrained policy (as this algorithm's policy class, so that
            MaskablePPOKL masks it); pass ``ref_policy=None`` to fine-tune without a reference. That default
            reference starts as the pretrained policy and moves toward the new one after every update with
            ``ref_tau=0.3`` (:data:`PRETRAINED_REF_TAU`). In the fine-tuning benchmark (the user guide's fine-tuning
            page) it protected a behaviour clone at least as well as a frozen reference and ended higher on three
            of four tasks; on Walker2d-v5 the frozen reference did both better, and no setting protected and ended
            as high as SB3 PPO on every task. ``ref_tau=0`` keeps it frozen. ``ref_kl_coef`` (default 1.0) applies
            to it as to any other. A ``ref_policy`` given here is the constructor's, frozen unless ``ref_tau`` is given.
        :raises ValueError: if the new policy's architecture differs from the pretrained one (naming the weights
            that differ), or for any invalid argument
        """
        source = load_policy(pretrained.policy if isinstance(pretrained, BaseAlgorithm) else pretrained, "pretrained")
        if policy is None:
            own = tuple(cls.policy_aliases.values())
            if isinstance(source, own):
                policy = type(source)
            else:
                policy = "MultiInputPolicy" if isinstance(source.observation_space, spaces.Dict) else "MlpPolicy"
                if policy not in cls.policy_aliases:
                    raise ValueError(
                        f"`pretrained` is a {type(source).__name__}; {cls.__name__} fine-tunes the policies "
                        f"{', '.join(sorted({p.__name__ for p in own}))}: give a pretrained policy of one of them"
                    )
        policy_class = cls.policy_aliases[policy] if isinstance(policy, str) else policy
        if "policy_kwargs" not in kwargs:
            kwargs["policy_kwargs"] = policy_kwargs_for(source, policy_class)
        if "use_sde" not in kwargs and getattr(source, "use_sde", False) and accepts(cls, "use_sde"):
            kwargs["use_sde"] = True
        default_reference = "ref_policy" not in kwargs
        ref_kwargs = {key: kwargs.pop(key) for key in ("ref_kl_coef", "ref_tau") if default_reference and key in kwargs}
        model = cls(policy, env, **kwargs)  # type: ignore[arg-type]
        copy_weights(source, model.policy, "pretrained")
        if default_reference:
            ref_kl_coef, ref_tau = ref_kwargs.get("ref_kl_coef", 1.0), ref_kwargs.get("ref_tau", PRETRAINED_REF_TAU)
            model._make_ref_policy(model.policy, ref_kl_coef, ref_tau)
            model._setup_ref_policy()
        return model

    def _snapshot_ref_policy(self) -> None:
        """Store the reference policy's action distribution for every sample (none without a reference)."""
        self.rollout_buffer.ref_dist_params = None
        if self.ref_policy is None:
            return
        if not has_analytic_kl(self.ref_policy.action_dist):  # type: ignore[arg-type]
            raise ValueError(
                f"`ref_policy`'s action distribution {type(self.ref_policy.action_dist).__name__} has no analytic KL"
            )
        with th.no_grad():
            self.rollout_buffer.ref_dist_params = self._reference_dist_params(self.ref_policy)

    def _reference_dist_params(self, ref_policy: BasePolicy) -> th.Tensor:
        """
        The reference's :func:`~sb3_ppo_kl.common.kl.distribution_params` for every sample of the rollout, in the
        buffer's flattened order: by default the algorithm's full pass over the rollout (``_rollout_dist_params``,
        which a feed-forward reference needs); RecurrentPPOKL runs its reference over the rollout in time order with
        the reference's own LSTM states (:func:`~sb3_ppo_kl.ppo_kl_recurrent.ppo_kl_recurrent.recurrent_reference_dist_params`).
        """
        return self._rollout_dist_params(ref_policy)

    def _rollout_dist_params(self, policy: BasePolicy) -> th.Tensor:
        raise NotImplementedError  # the algorithm's
