"""
Non-finite values, from the environment or from an update, stop training with :class:`NonFiniteError`.

:class:`CheckFiniteCallback` checks what the environment returns at every step of the rollout (observations,
rewards, the terminal observations SB3 bootstraps truncated episodes through) and the first observation of
``learn()``. SB3's ``collect_rollouts`` (and sb3-contrib's, for MaskablePPO and RecurrentPPO) calls the callback
right after ``env.step()``, before the step enters the rollout buffer and before the policy's next forward pass, so
a NaN is reported with the environment and the step that produced it, instead of surfacing later as a torch error
(``Expected parameter loc ...``) or a non-finite loss.

With that check on, :func:`distribution_validation_skipped` turns off torch's own checks of the action distributions
for the duration of ``learn()``: they look for the same NaN, later and at a cost.
"""

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback
from torch.distributions import Distribution


class NonFiniteError(FloatingPointError, ValueError):
    """
    A non-finite value stopped training: an observation or a reward from the environment (before it entered the
    rollout buffer), or a loss term, KL or gradient of a policy update (the step was not applied).

    Also a ValueError, so that RL Zoo's tuner prunes such a trial (as it does for the ValueError
    torch raises when SB3 PPO's distribution turns NaN) instead of stopping the study.
    """


# Arrays up to this size are summed in Python: for a few numbers that costs a fraction of NumPy's reduction
_PYTHON_SUM_SIZE = 64


def _all_finite(values: Any) -> bool:
    """
    Whether every entry of an observation, a Dict observation or a reward array is finite: the fast check of every
    step. NaN and inf propagate through a sum, so a finite sum proves every entry finite; a non-finite sum may also
    be the overflow of large finite entries, which :func:`_non_finite` (exact) tells apart.
    """
    if isinstance(values, dict):
        return all(_all_finite(value) for value in values.values())
    dtype = values.dtype
    if dtype.kind != "f":
        return dtype.kind != "c" or bool(np.isfinite(values).all())  # integers and bools (images, discrete) are finite
    if values.size <= _PYTHON_SUM_SIZE:
        return math.isfinite(sum(values.ravel().tolist()))  # Python floats: float16 and float32 entries never overflow
    # float16 sums overflow soon (65504): they add up in float32
    return math.isfinite(np.add.reduce(values, axis=None, dtype=np.float32 if dtype.itemsize < 4 else None))


def _non_finite(values: Any, name: str, per_env: bool) -> list[tuple[int, str]]:
    """
    Every env that returned a non-finite entry, with a description: the exact search, once :func:`_all_finite` failed.

    :param values: an array (or a dict of arrays) of shape ``(n_envs, ...)`` when ``per_env``, else one env's
    :param name: what the values are (``"reward"``, ``"observation"``, ``"observation['position']"``...)
    :param per_env: whether the first axis is the env index
    :return: ``(env index, description)`` pairs, the env index 0 when not ``per_env``; empty when all are finite
    """
    if isinstance(values, dict):
        return [found for key, value in values.items() for found in _non_finite(value, f"{name}[{key!r}]", per_env)]
    values = np.asarray(values)
    if values.dtype.kind not in "fc":
        return []
    found = []
    bad = ~np.isfinite(values)
    for env in np.flatnonzero(bad.reshape(len(values), -1).any(axis=1)) if per_env else ([0] if bad.any() else []):
        env_values, env_bad = (values[env], bad[env]) if per_env else (values, bad)
        index = tuple(int(i) for i in np.argwhere(env_bad)[0]) if env_bad.ndim else ()
        where = f" at index {index}" if index else ""
        found.append((int(env), f"a non-finite {name} ({env_values[index]}{where})"))
    return found


@contextmanager
def distribution_validation_skipped(skip: bool) -> Iterator[None]:
    """
    Within the block, and only when ``skip`` is True, torch builds distributions without checking their arguments
    (``torch.distributions.Distribution.set_default_validate_args(False)``); the setting found is restored after it,
    also when the block raises.

    torch checks every distribution it builds (a Gaussian's mean for NaN, its standard deviation for > 0) and every
    sample whose log-probability it takes. SB3 builds one at every step of a rollout and in every minibatch of an
    update, and these checks took about a tenth of SB3 PPO's rollout time on Pendulum-v1 and HalfCheetah-v5 (the
    speed section of the benchmarks guide). PPOKL's ``learn()`` skips them while ``check_finite_env`` is on: a NaN
    from the environment is then refused before it reaches the policy, and an update whose loss or gradient is not
    finite is refused before its step, so the parameters stay finite. What torch's checks would still have caught
    is a NaN the policy makes from finite inputs (parameters made non-finite from outside, or an overflow in the
    network): :class:`CheckFiniteCallback` refuses the action it chose, naming the policy, right after that step
    instead of before it (a categorical distribution's sampling refuses it itself), and in an update the guard
    refuses the step. Validation changes no number: the checks only read.
    """
    if not skip:
        yield
        return
    validated = Distribution._validate_args
    Distribution.set_default_validate_args(False)
    try:
        yield
    finally:
        Distribution.set_default_validate_args(validated)


class CheckFiniteCallback(BaseCallback):
    """
    Raise :class:`NonFiniteError`, naming the env, the step and the value, as soon as the environment returns a
    non-finite observation or reward; then call the user's callback.

    It wraps the callback ``learn()`` runs (the user's, after SB3 made one of it, see
    :meth:`~sb3_ppo_kl.PPOKL._init_callback`), and checks:

    - at the start of ``learn()``: the first observation (from ``reset()``);
    - after every ``env.step()``: the actions the policy chose (a non-finite one is the policy's, not the
      environment's: torch's own check of the action distribution, which would have refused it, is skipped while
      this check runs), the new observations (every key of a Dict observation), the rewards, and the
      ``terminal_observation`` of every env whose episode ended (SB3 bootstraps a truncated episode through it).

    The check runs before the step enters the rollout buffer and before the next forward pass of the policy. Its
    cost is a sum over the actions, one over the observations and one over the rewards per step (see the speed guide
    in the docs).

    :param callback: the callback to call after the checks, already initialised (``init_callback`` called)
    """

    def __init__(self, callback: BaseCallback):
        super().__init__()
        self.callback = callback
        self._step_locals: dict[str, Any] = {}

    def update_locals(self, locals_: dict[str, Any]) -> None:
        # Keep the rollout's locals by reference (the check reads them at once), and pass them on
        self._step_locals = locals_
        self.callback.update_locals(locals_)

    def _on_training_start(self) -> None:
        last_obs = self.model._last_obs
        if last_obs is not None and not _all_finite(last_obs):
            self._raise(
                _non_finite(last_obs, "observation", per_env=True), "in the first observation of learn() (from reset())"
            )
        self.callback.on_training_start(self.locals, self.globals)

    def _on_rollout_start(self) -> None:
        self.callback.on_rollout_start()

    def _on_step(self) -> bool:
        step = self._step_locals
        actions = step.get("actions")
        if actions is not None and not _all_finite(actions):
            self._raise_action(_non_finite(actions, "action", per_env=True))
        if not (_all_finite(step["new_obs"]) and _all_finite(step["rewards"])):
            self._raise(
                _non_finite(step["new_obs"], "observation", per_env=True)
                + _non_finite(step["rewards"], "reward", per_env=True)
            )
        for env, info in enumerate(step["infos"]):  # a terminal observation comes with an episode's end
            if "terminal_observation" in info and info["terminal_observation"] is not None:
                terminal = _as_arrays(info["terminal_observation"])
                if not _all_finite(terminal):
                    self._raise([(env, text) for _, text in _non_finite(terminal, "terminal observation", per_env=False)])
        return self.callback.on_step()

    def _on_rollout_end(self) -> None:
        self.callback.on_rollout_end()

    def _on_training_end(self) -> None:
        self.callback.on_training_end()

    def _raise(self, found: list[tuple[int, str]], when: str | None = None) -> None:
        """Raise NonFiniteError for what was found; nothing when it is empty (finite entries whose sum overflowed)."""
        if not found:
            return
        n_envs = self.training_env.num_envs
        when = when or self._at_this_step()
        returned = "; ".join(f"env {env} (of {n_envs}) returned {text}" for env, text in found)
        raise NonFiniteError(
            f"{type(self.model).__name__}: {returned}, {when}. Training stopped before it entered the rollout buffer "
            "or reached the policy; the model's parameters are those of the last update and it can be saved. Look for "
            "the cause in the environment and its wrappers (SB3's VecCheckNan wrapper also names the action that led to "
            "it)."
        )

    def _raise_action(self, found: list[tuple[int, str]]) -> None:
        """Raise NonFiniteError for a non-finite action the policy chose; nothing when ``found`` is empty."""
        if not found:
            return
        n_envs = self.training_env.num_envs
        chose = "; ".join(f"{text} for env {env} (of {n_envs})" for env, text in found)
        raise NonFiniteError(
            f"{type(self.model).__name__}: the policy chose {chose}, {self._at_this_step()}. Training stopped before it "
            "entered the rollout buffer. The environment's values before it were finite: look for non-finite parameters "
            "of the policy or an overflow in its network."
        )

    def _at_this_step(self) -> str:
        return f"at step {self.n_calls} of this learn() call (num_timesteps={self.model.num_timesteps})"


def _as_arrays(observation: Any) -> Any:
    """A terminal observation (one env's, as the env returned it) as an array, or a dict of arrays."""
    if isinstance(observation, dict):
        return {key: np.asarray(value) for key, value in observation.items()}
    return np.asarray(observation)
