"""
Behaviour cloning: train an SB3 model's policy to give the demonstrated actions the highest log-likelihood, from a
Minari dataset or from arrays, before fine-tuning it with :meth:`~sb3_ppo_kl.PPOKL.from_pretrained`.
"""

import math
import sys
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
import torch as th
from gymnasium import spaces
from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.logger import HumanOutputFormat, Logger
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.utils import obs_as_tensor

from sb3_ppo_kl.common.checks import check_bool, check_int, check_real
from sb3_ppo_kl.common.finite import NonFiniteError

SelfModel = TypeVar("SelfModel", bound=BaseAlgorithm)


def behaviour_clone(
    model: SelfModel,
    demonstrations: Any,
    epochs: int = 10,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    seed: int | None = None,
    progress_bar: bool = False,
) -> SelfModel:
    """
    Behaviour cloning: train ``model.policy`` by maximum likelihood on demonstrated (observation, action) pairs.

    The loss of every minibatch ``B`` of demonstrations is the mean negative log-likelihood of their actions::

        _, log_prob, _ = model.policy.evaluate_actions(observations[B], actions[B])
        loss = -log_prob.mean()

    minimised by Adam (its own optimizer, not the policy's: ``model.policy.optimizer`` is left as it is) over
    ``epochs`` passes, each over the demonstrations in a new random order, in minibatches of ``batch_size``
    (the last one smaller when ``batch_size`` does not divide their number). Only the parameters the action
    distribution depends on learn: the actor's layers, the layers it shares with the critic (a shared features
    extractor), and for Box actions the log standard deviation; the value head, and every layer only the critic
    uses, stay as they are. The policy is in training mode during cloning (batch norm and dropout behave as in
    ``train()``) and in evaluation mode afterwards. Observations are given to the policy as they are: with
    ``VecNormalize`` or a wrapper that transforms observations, give them transformed as the model sees them.

    Then fine-tune the clone, keeping it close to what it learned::

        model = behaviour_clone(PPO("MlpPolicy", env), (observations, actions))
        fine_tuned = PPOKL.from_pretrained(model, env, ref_kl_coef=1.0)

    :param model: an SB3 model with a feed-forward actor-critic policy (SB3's ``ActorCriticPolicy`` and its
        subclasses, sb3-contrib's ``MaskableActorCriticPolicy``): PPO, A2C, PPOKL, MaskablePPO, MaskablePPOKL. Its
        observation and action spaces are the ones the demonstrations must have. Maskable policies are cloned without action
        masks: the likelihood is the unmasked distribution's, which puts the demonstrated (valid) actions first, so
        the masked distribution does too. Recurrent policies (RecurrentPPO, RecurrentPPOKL) are refused: their LSTM
        needs whole sequences, with the LSTM state carried from step to step, which minibatches of single transitions
        do not give.
    :param demonstrations: a ``minari.MinariDataset`` (every step of every episode: ``episode.observations[:-1]``
        with ``episode.actions``; its observation and action spaces must be the model's), or a pair
        ``(observations, actions)`` of arrays (NumPy arrays, tensors or sequences) with one row per step:
        ``observations`` of shape ``(n, *observation_space.shape)`` (a dict of such arrays, one per key, for Dict
        observation spaces), ``actions`` of shape ``(n, *action_space.shape)`` (``(n,)`` or ``(n, 1)`` for Discrete),
        in the action space (Box actions may lie outside its bounds, as the unclipped samples of a Gaussian policy).
        Minari is an optional dependency (``pip install "sb3-ppo-kl[minari]"``).
    :param epochs: passes over the demonstrations, an integer ``>= 1``. Default 10.
    :param batch_size: demonstrations per minibatch, an integer ``>= 1``. Default 64.
    :param learning_rate: Adam's step size, a finite number ``> 0``. Default 1e-3.
    :param seed: the seed of the minibatch order (a generator of its own). None (default): the order is drawn from
        PyTorch's global generator, which SB3 seeds when the model is made with ``seed=...``.
    :param progress_bar: show a tqdm progress bar over the minibatches, with the last epoch's mean negative
        log-likelihood. Default False, as ``learn(progress_bar=...)``; needs ``tqdm`` (SB3's ``extra``).
    :return: ``model``, its policy cloned. Each epoch's mean negative log-likelihood is recorded as ``bc/nll`` (with
        ``bc/epoch``) and dumped, in the model's logger when it has one (``model.set_logger()``, or a previous
        ``learn()``), else printed when ``model.verbose >= 1``.
    :raises TypeError: for arguments of the wrong type: a model that is not an SB3 model, a policy that is not a
        feed-forward actor-critic one, demonstrations that are neither a Minari dataset nor a pair of arrays,
        arrays of non-numeric data, or a number of the wrong type
    :raises ValueError: for demonstrations that do not fit the model (spaces, shapes, dtypes, actions outside the
        action space, non-finite values), none at all, observations and actions of different lengths, or a number
        out of range. Every check is made before the policy changes.
    :raises ~sb3_ppo_kl.NonFiniteError: if the loss becomes non-finite; that step is not applied
    """
    policy = _check_model(model)
    epochs = check_int("epochs", epochs, "an integer >= 1", lambda value: value >= 1)
    batch_size = check_int("batch_size", batch_size, "an integer >= 1", lambda value: value >= 1)
    learning_rate = check_real("learning_rate", learning_rate, "a finite number > 0", lambda value: value > 0)
    if seed is not None:
        seed = check_int("seed", seed, "None or an integer")
    progress_bar = check_bool("progress_bar", progress_bar)
    observations, actions = _demonstrations(demonstrations, model.observation_space, model.action_space)
    bar = _progress_bar(progress_bar, epochs * math.ceil(len(actions) / batch_size))

    device = policy.device
    obs = obs_as_tensor(observations, device)
    act = th.as_tensor(actions, device=device)
    if isinstance(model.action_space, spaces.Discrete):
        act = act.long().flatten()
    logger = getattr(model, "_logger", None) or Logger(None, [HumanOutputFormat(sys.stdout)] if model.verbose >= 1 else [])
    optimizer = th.optim.Adam(_actor_parameters(policy, _rows(obs, slice(0, batch_size)), act[:batch_size]), lr=learning_rate)
    generator = None if seed is None else th.Generator().manual_seed(seed)
    n = len(act)
    policy.set_training_mode(True)
    try:
        for epoch in range(epochs):
            order = th.randperm(n, generator=generator).to(device)
            losses = []
            for start in range(0, n, batch_size):
                batch = order[start : start + batch_size]
                _, log_prob, _ = policy.evaluate_actions(_rows(obs, batch), act[batch])
                loss = -log_prob.mean()
                optimizer.zero_grad()
                loss.backward()
                losses.append(loss.item())
                if not math.isfinite(losses[-1]):
                    raise NonFiniteError(
                        f"behaviour_clone: the negative log-likelihood is {losses[-1]} in epoch {epoch + 1}/{epochs}, "
                        f"minibatch {start // batch_size + 1}. This step was not applied: the policy has the "
                        "parameters of the last finite step"
                    )
                optimizer.step()
                if bar is not None:
                    bar.update()
            nll = float(np.mean(losses))
            if bar is not None:
                bar.set_postfix(nll=f"{nll:.4f}")
            logger.record("bc/epoch", epoch + 1)
            logger.record("bc/nll", nll)
            logger.dump(step=epoch + 1)
    finally:
        policy.set_training_mode(False)
        if bar is not None:
            bar.close()
    return model


def _check_model(model: Any) -> ActorCriticPolicy | MaskableActorCriticPolicy:
    """``model.policy``; TypeError unless ``model`` is an SB3 model with a feed-forward actor-critic policy."""
    if not isinstance(model, BaseAlgorithm):
        hint = " (give the model whose policy it is)" if isinstance(model, th.nn.Module) else ""
        raise TypeError(f"`model` must be an SB3 model (PPO, A2C, PPOKL, MaskablePPO...), got {type(model).__name__}{hint}")
    policy = model.policy
    if isinstance(policy, RecurrentActorCriticPolicy):
        raise TypeError(
            f"`model` ({type(model).__name__}) has a recurrent policy ({type(policy).__name__}): behaviour_clone trains on "
            "single transitions in shuffled minibatches, and an LSTM policy needs whole sequences with its state carried "
            "from step to step. Clone a feed-forward policy (PPO, A2C, PPOKL, MaskablePPO...) instead"
        )
    if not isinstance(policy, (ActorCriticPolicy, MaskableActorCriticPolicy)):
        raise TypeError(
            "`model`'s policy must be an actor-critic policy (SB3's ActorCriticPolicy: PPO, A2C, PPOKL...; sb3-contrib's "
            f"MaskableActorCriticPolicy: MaskablePPO, MaskablePPOKL), got {type(policy).__name__}"
        )
    return policy


def _demonstrations(
    demonstrations: Any, observation_space: spaces.Space, action_space: spaces.Space
) -> tuple[Any, np.ndarray]:
    """The demonstrations as ``(observations, actions)`` NumPy arrays, checked against the model's spaces."""
    minari_dataset = _minari_dataset_class()
    if minari_dataset is not None and isinstance(demonstrations, minari_dataset):
        observations, actions = _from_minari(demonstrations, observation_space, action_space)
    elif isinstance(demonstrations, (tuple, list)) and len(demonstrations) == 2:
        observations, actions = demonstrations
    else:
        raise TypeError(
            "`demonstrations` must be a minari.MinariDataset or a pair (observations, actions) of arrays, got "
            + (
                f"a {type(demonstrations).__name__} of length {len(demonstrations)}"
                if isinstance(demonstrations, (tuple, list))
                else type(demonstrations).__name__
            )
        )
    if isinstance(observation_space, spaces.Dict):
        if not isinstance(observations, Mapping) or set(observations) != set(observation_space.spaces):
            raise TypeError(
                f"`demonstrations`' observations must be a dict of arrays with the keys {sorted(observation_space.spaces)} "
                f"of the model's Dict observation space, got {_describe(observations)}"
            )
        observations = {
            key: _observation_array(f"observations[{key!r}]", observations[key], space)
            for key, space in observation_space.spaces.items()
        }
        lengths = {key: len(value) for key, value in observations.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"`demonstrations`' observations have different lengths per key: {lengths}")
        n_observations = next(iter(lengths.values()))
    else:
        observations = _observation_array("observations", observations, observation_space)
        n_observations = len(observations)
    actions = _action_array(actions, action_space)
    if n_observations != len(actions):
        raise ValueError(
            f"`demonstrations` has {n_observations} observations and {len(actions)} actions: they must be as many, "
            "one action per observation"
        )
    if n_observations == 0:
        raise ValueError("`demonstrations` is empty: there is no (observation, action) pair to clone")
    return observations, actions


def _minari_dataset_class() -> type | None:
    """``minari.MinariDataset``, or None when Minari is not installed (it is an optional dependency)."""
    try:
        import minari
    except ImportError:
        return None
    return minari.MinariDataset


def _from_minari(dataset: Any, observation_space: spaces.Space, action_space: spaces.Space) -> tuple[Any, np.ndarray]:
    """Every step of every episode of a Minari dataset, after checking its spaces against the model's."""
    _check_space("observation", dataset.observation_space, observation_space)
    if dataset.action_space != action_space:
        raise ValueError(
            f"`demonstrations` (Minari dataset {dataset.id!r}) has the action space {dataset.action_space}, the model "
            f"{action_space}; they must be equal"
        )
    episodes = list(dataset.iterate_episodes())
    if not episodes:
        raise ValueError(f"`demonstrations` (Minari dataset {dataset.id!r}) is empty: it has no episode")
    actions = np.concatenate([np.asarray(episode.actions) for episode in episodes])
    if isinstance(observation_space, spaces.Dict):  # every episode has one observation more than actions: the last
        keys = observation_space.spaces
        return {key: np.concatenate([episode.observations[key][:-1] for episode in episodes]) for key in keys}, actions
    return np.concatenate([np.asarray(episode.observations)[:-1] for episode in episodes]), actions


def _check_space(kind: str, given: spaces.Space, expected: spaces.Space) -> None:
    """
    ValueError unless a dataset's observation space fits the model's: a Box of the same shape whose dtype converts to
    the model's within its kind (NumPy's same_kind: float64 to float32, not float to uint8), a Dict of such spaces under the same keys, else equal.
    """
    if isinstance(expected, spaces.Dict) and isinstance(given, spaces.Dict) and set(given.spaces) == set(expected.spaces):
        for key, space in expected.spaces.items():
            _check_space(f"{kind} {key!r}", given.spaces[key], space)
        return
    if isinstance(expected, spaces.Box) and isinstance(given, spaces.Box):
        fits = given.shape == expected.shape and np.can_cast(given.dtype, expected.dtype, casting="same_kind")
    else:
        fits = given == expected
    if not fits:
        raise ValueError(
            f"`demonstrations` has the {kind} space {given}, the model {expected}: a Box must have the same shape and "
            "a dtype that converts to the model's within its kind, any other space must be equal"
        )


def _describe(value: Any) -> str:
    return f"{type(value).__name__} of shape {value.shape}" if hasattr(value, "shape") else type(value).__name__


def _as_numeric_array(name: str, value: Any) -> np.ndarray:
    """``value`` as a NumPy array of numbers or bools; TypeError naming ``name`` for anything else."""
    if isinstance(value, th.Tensor):
        value = value.detach().cpu().numpy()
    elif isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        value = np.asarray(value)
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "biuf":
        raise TypeError(f"`demonstrations`' {name} must be an array (or tensor) of numbers, got {_describe(value)}")
    return value


def _observation_array(name: str, value: Any, space: spaces.Space) -> np.ndarray:
    """Observations as an array of ``space``'s dtype, one row per step; ValueError unless every row is in the space."""
    array = _as_numeric_array(name, value)
    shape = space.shape or ()
    if array.ndim < 1 or array.shape[1:] != shape:
        raise ValueError(
            f"`demonstrations`' {name} must have the shape (n, *{shape}) of the model's observation space {space}, "
            f"got {array.shape}"
        )
    if space.dtype is not None and not np.can_cast(array.dtype, space.dtype, casting="same_kind"):
        raise ValueError(
            f"`demonstrations`' {name} are {array.dtype}, the model's observation space {space} is {space.dtype}: "
            "a conversion to another kind of number (NumPy's same_kind casting) is refused"
        )
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise ValueError(f"`demonstrations`' {name} must be finite; row {int(np.argwhere(~np.isfinite(array))[0][0])} is not")
    array = array.astype(space.dtype, copy=False) if space.dtype is not None else array
    if not isinstance(space, spaces.Box):  # Discrete, MultiDiscrete, MultiBinary observations: values in the space
        outside = [index for index, row in enumerate(array) if not space.contains(row)]
        if outside:
            raise ValueError(f"`demonstrations`' {name} at row {outside[0]} is {array[outside[0]].tolist()!r}, not in {space}")
    return array


def _action_array(value: Any, space: spaces.Space) -> np.ndarray:
    """Actions as an array, one row per step, checked against the action space (Box: finite, any value)."""
    array = _as_numeric_array("actions", value)
    shape = space.shape or ()
    if isinstance(space, spaces.Discrete) and array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]  # (n, 1), as SB3's rollout buffer stores Discrete actions
    if array.ndim < 1 or array.shape[1:] != shape:
        raise ValueError(
            f"`demonstrations`' actions must have the shape (n, *{shape}) of the model's action space {space}, "
            f"got {array.shape}"
        )
    if not np.isfinite(array).all():
        raise ValueError(f"`demonstrations`' actions must be finite; row {int(np.argwhere(~np.isfinite(array))[0][0])} is not")
    if isinstance(space, spaces.Box):
        return array.astype(space.dtype, copy=False)
    if isinstance(space, spaces.Discrete):
        low, high = np.zeros_like(array), np.full_like(array, space.n - 1)
    elif isinstance(space, spaces.MultiDiscrete):
        low, high = np.zeros_like(array), np.broadcast_to(space.nvec - 1, array.shape)
    else:  # MultiBinary
        low, high = np.zeros_like(array), np.ones_like(array)
    bad = (array != np.round(array)) | (array < low) | (array > high)
    if bad.any():
        row = int(np.argwhere(bad)[0][0])
        raise ValueError(
            f"`demonstrations`' action at row {row} is {array[row].tolist()!r}, not in the model's action space {space}"
        )
    # SB3's distributions take the indices of categorical actions as integers, Bernoulli outcomes as floats
    return array.astype(np.float32 if isinstance(space, spaces.MultiBinary) else np.int64, copy=False)


def _rows(observations: Any, rows: Any) -> Any:
    """
    The given rows of a tensor of observations, or of each tensor of a dict of them (typed Any: sb3-contrib's
    MaskableActorCriticPolicy types its observations as a tensor only).
    """
    if isinstance(observations, dict):
        return {key: value[rows] for key, value in observations.items()}
    return observations[rows]


def _actor_parameters(
    policy: ActorCriticPolicy | MaskableActorCriticPolicy, observations: Any, actions: th.Tensor
) -> list[th.nn.Parameter]:
    """
    The parameters the log-probabilities of actions depend on (those the gradient reaches), found with one pass in
    evaluation mode, which leaves batch norm's statistics alone.
    """
    policy.set_training_mode(False)
    parameters = list(policy.parameters())
    _, log_prob, _ = policy.evaluate_actions(observations, actions)
    grads = th.autograd.grad(log_prob.sum(), parameters, allow_unused=True)
    return [parameter for parameter, grad in zip(parameters, grads) if grad is not None]


def _progress_bar(show: bool, total: int) -> Any:
    """A tqdm bar over ``total`` minibatches, or None."""
    if not show:
        return None
    try:
        from tqdm import tqdm
    except ImportError as error:
        raise ImportError(
            "behaviour_clone(progress_bar=True) needs tqdm: pip install tqdm (or stable-baselines3[extra])"
        ) from error
    return tqdm(total=total, desc="behaviour cloning", unit="minibatch")
