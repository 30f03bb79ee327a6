import inspect

import pytest
import torch as th
from stable_baselines3.common.callbacks import BaseCallback

from sb3_ppo_kl import KLCoefController
from sb3_ppo_kl.common.checks import check_real

# Small MLPs on 2 cores run fastest single-threaded (measured in benchmarks/speed.py).
th.set_num_threads(1)


def collect_rollout(model) -> None:
    """Fill the model's rollout buffer with one rollout, without training (SB3's learn() minus train())."""
    _, callback = model._setup_learn(model.n_steps * model.n_envs, callback=None)
    callback.on_training_start(locals(), globals())
    assert model.collect_rollouts(model.env, callback, model.rollout_buffer, n_rollout_steps=model.n_steps)


@pytest.fixture
def rollout():
    return collect_rollout


def rollout_tensors(model) -> tuple[th.Tensor, th.Tensor, th.Tensor, th.Tensor, th.Tensor]:
    """The last rollout of ``model`` as tensors: observations, actions, old log-probs, normalised advantages, returns."""
    buffer = model.rollout_buffer
    advantages = th.as_tensor(buffer.advantages).flatten()
    return (
        th.as_tensor(buffer.observations),
        th.as_tensor(buffer.actions),
        th.as_tensor(buffer.log_probs).flatten(),
        (advantages - advantages.mean()) / (advantages.std() + 1e-8),
        th.as_tensor(buffer.returns).flatten(),
    )


def sgd_by_hand(policy, loss, steps: int, lr: float) -> None:
    """``steps`` plain SGD steps on ``policy``'s parameters, each on the loss that ``loss()`` builds from it."""
    params = list(policy.parameters())
    for _ in range(steps):
        grads = th.autograd.grad(loss(), params, allow_unused=True)
        with th.no_grad():
            for param, grad in zip(params, grads):
                if grad is not None:
                    param -= lr * grad


def assert_takes_every_ppokl_argument(variant) -> None:
    """A variant's constructor takes every argument PPOKL adds to SB3's PPO, with PPOKL's default."""
    from stable_baselines3 import PPO

    from sb3_ppo_kl import PPOKL

    ours = inspect.signature(variant.__init__).parameters
    ppo_kl = inspect.signature(PPOKL.__init__).parameters
    added = set(ppo_kl) - set(inspect.signature(PPO.__init__).parameters)
    assert {"kl_target", "kl_coef", "kl_adapt_factor", "ref_policy"} <= added
    assert added <= set(ours), sorted(added - set(ours))
    for name in added:
        assert ours[name].default == ppo_kl[name].default, name


class PerUpdate(BaseCallback):
    """The reference logs of every update: read at the next rollout's start (before SB3 dumps them) and at the end."""

    def __init__(self):
        super().__init__()
        self.rows = []

    def _read(self):
        values = self.logger.name_to_value
        if "train/ref_kl_coef" in values:
            self.rows.append({key: values.get(f"train/{key}") for key in ("ref_kl", "ref_kl_coef", "ref_kl_penalty")})

    def _on_rollout_start(self):
        self._read()

    def _on_step(self):
        return True

    def _on_training_end(self):
        self._read()


class ScalingController(KLCoefController):
    """A user's own rule with an argument of its own: multiply beta by ``factor`` after every update."""

    def __init__(
        self,
        kl_coef=1.0,
        kl_target=0.01,
        adaptive_kl=True,
        kl_tolerance=1.5,
        kl_adapt_factor=2.0,
        kl_coef_bounds=(1e-4, 1e4),
        factor: float = 0.5,
    ):
        super().__init__(kl_coef, kl_target, adaptive_kl, kl_tolerance, kl_adapt_factor, kl_coef_bounds)
        self.factor = check_real("factor", factor, "a finite number > 0", lambda value: value > 0)

    def adapt(self, kl: float, target: float) -> float:
        return self.kl_coef * self.factor


class Call:
    """A pickle payload: unpickling it calls ``function(*args)``, as a crafted model file would."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args
