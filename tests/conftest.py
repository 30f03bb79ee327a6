import pytest
import torch as th

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
