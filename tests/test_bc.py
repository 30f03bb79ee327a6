"""sb3_ppo_kl.behaviour_clone: a clone of a CartPole expert, from arrays and from a local Minari dataset, and every bad
input refused by name before the policy changes."""

import copy

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from sb3_contrib import MaskablePPO, RecurrentPPO
from stable_baselines3 import A2C, PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import KVWriter, Logger

from sb3_ppo_kl import PPOKL, MaskablePPOKL, NonFiniteError, RecurrentPPOKL, behaviour_clone


@pytest.fixture(scope="module")
def expert():
    """SB3's PPO trained briefly on CartPole-v1: 8,192 steps, a return of about 260 of 500 (random: about 20)."""
    model = PPO(
        "MlpPolicy",
        make_vec_env("CartPole-v1", n_envs=8, seed=0),
        n_steps=64,
        batch_size=256,
        learning_rate=3e-3,
        seed=0,
        device="cpu",
        policy_kwargs=dict(net_arch=[32, 32]),
    )
    model.learn(8192)
    return model


def _episodes(expert, n_steps, seed):
    """Whole episodes of the expert acting deterministically: ``[(observations (T + 1, 4), actions (T,), rewards,
    terminations, truncations)]``, at least ``n_steps`` steps in all (the last episode cut there, truncated)."""
    env = gym.make("CartPole-v1")
    episodes, total = [], 0
    while total < n_steps:
        obs, _ = env.reset(seed=seed + len(episodes))
        observations, actions, rewards, terminations, truncations = [obs], [], [], [], []
        done = False
        while not done:
            action, _ = expert.predict(obs, deterministic=True)
            obs, reward, terminated, truncated, _ = env.step(int(action))
            total += 1
            truncated = truncated or total == n_steps
            observations.append(obs)
            actions.append(int(action))
            rewards.append(reward)
            terminations.append(terminated)
            truncations.append(truncated)
            done = terminated or truncated
        episodes.append(tuple(map(np.asarray, (observations, actions, rewards, terminations, truncations))))
    return episodes


def _pairs(episodes):
    return np.concatenate([e[0][:-1] for e in episodes]), np.concatenate([e[1] for e in episodes])


@pytest.fixture(scope="module")
def demo_episodes(expert):
    return _episodes(expert, 3000, seed=100)


@pytest.fixture(scope="module")
def demonstrations(demo_episodes):
    return _pairs(demo_episodes)


@pytest.fixture(scope="module")
def held_out(expert):
    """States the expert visits in other episodes than the demonstrations', and its actions there."""
    observations, _ = _pairs(_episodes(expert, 1000, seed=10_000))
    return observations, expert.predict(observations, deterministic=True)[0]


def _agreement(model, held_out):
    observations, actions = held_out
    return float(np.mean(model.predict(observations, deterministic=True)[0] == actions))


def _minari_dataset(episodes, dataset_id="sb3-ppo-kl/cartpole-expert-v0", **spaces):
    minari = pytest.importorskip("minari")
    from minari.data_collector import EpisodeBuffer

    buffers = [
        EpisodeBuffer(observations=o, actions=a, rewards=r, terminations=te, truncations=tr) for o, a, r, te, tr in episodes
    ]
    with pytest.warns(UserWarning):  # Minari asks for an author, a description...: not needed here
        return minari.create_dataset_from_buffers(dataset_id, buffers, **({"env": "CartPole-v1"} if not spaces else spaces))


@pytest.fixture
def minari_path(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))


def _dict_cartpole():
    """CartPole-v1 with Dict observations: ``{"state": observation}``."""
    env = gym.make("CartPole-v1")
    return gym.wrappers.TransformObservation(
        env, lambda obs: {"state": obs}, gym.spaces.Dict({"state": env.observation_space})
    )


def _state(model):
    return copy.deepcopy(model.policy.state_dict())


@pytest.mark.parametrize("algo", [PPO, A2C, PPOKL, MaskablePPOKL])
def test_a_clone_from_arrays_picks_the_experts_actions(algo, demonstrations, held_out):
    """A fresh model of another architecture than the expert's learns its actions: >= 90% agreement on held-out states;
    the value function and the critic's layers are untouched, the policy's own optimizer too."""
    model = algo("MlpPolicy", "CartPole-v1", seed=1, device="cpu")
    assert _agreement(model, held_out) < 0.8  # the fresh policy is no clone yet
    before, optimizer = _state(model), copy.deepcopy(model.policy.optimizer.state_dict())
    assert behaviour_clone(model, demonstrations, seed=0) is model
    assert _agreement(model, held_out) >= 0.9
    after = model.policy.state_dict()
    for key, value in before.items():
        assert th.equal(after[key], value) == ("value_net" in key), key
    assert model.policy.optimizer.state_dict() == optimizer
    assert not model.policy.training


def test_a_clone_from_a_local_minari_dataset(demo_episodes, held_out, minari_path):
    """The same clone from the same episodes written as a Minari dataset, bit for bit; it fine-tunes with from_pretrained."""
    episodes = demo_episodes
    dataset = _minari_dataset(episodes)
    assert dataset.total_steps == 3000
    from_minari = behaviour_clone(PPO("MlpPolicy", "CartPole-v1", seed=1, device="cpu"), dataset, seed=0)
    from_arrays = behaviour_clone(PPO("MlpPolicy", "CartPole-v1", seed=1, device="cpu"), _pairs(episodes), seed=0)
    assert _agreement(from_minari, held_out) >= 0.9
    for key, value in from_arrays.policy.state_dict().items():
        assert th.equal(from_minari.policy.state_dict()[key], value), key
    fine_tuned = PPOKL.from_pretrained(from_minari, "CartPole-v1", n_steps=64, batch_size=64, ref_tau=0.1, seed=0)
    for key, value in from_minari.policy.state_dict().items():
        assert th.equal(fine_tuned.ref_policy.state_dict()[key], value), key
    fine_tuned.learn(64)
    assert fine_tuned.logger.name_to_value["train/ref_kl"] > 0


def test_box_actions_learn_the_log_std():
    """Actions drawn from N(0.5, 0.2^2) whatever the state: the clone's Gaussian gets that mean and that std."""
    rng = np.random.default_rng(0)
    observations = rng.uniform(-1.0, 1.0, size=(2000, 3)).astype(np.float32)
    actions = rng.normal(0.5, 0.2, size=(2000, 1)).astype(np.float32)
    model = PPO("MlpPolicy", "Pendulum-v1", seed=0, device="cpu")
    behaviour_clone(model, (observations, actions), epochs=10, learning_rate=1e-2, seed=0)
    with th.no_grad():
        distribution = model.policy.get_distribution(th.as_tensor(observations[:200]))
    assert distribution.distribution.mean.mean().item() == pytest.approx(0.5, abs=0.05)
    assert th.exp(model.policy.log_std).item() == pytest.approx(0.2, rel=0.15)


def test_dict_observations_and_the_logger(demonstrations):
    """Dict observations as a dict of arrays; each epoch's mean negative log-likelihood is logged, and falls."""

    model = PPO("MultiInputPolicy", make_vec_env(_dict_cartpole), seed=0, device="cpu")

    class Keep(KVWriter):
        def __init__(self):
            self.rows = []

        def write(self, key_values, key_excluded, step):
            self.rows.append((step, dict(key_values)))

        def close(self):
            pass

    kept = Keep()
    model.set_logger(Logger(None, [kept]))
    observations, actions = demonstrations
    behaviour_clone(model, ({"state": observations}, actions), epochs=3, seed=0)
    assert [step for step, _ in kept.rows] == [1, 2, 3] and [row["bc/epoch"] for _, row in kept.rows] == [1, 2, 3]
    nll = [row["bc/nll"] for _, row in kept.rows]
    assert nll[0] > nll[1] > nll[2] > 0


def test_seed_and_progress_bar(demonstrations, capsys):
    """The same seed gives the same clone; another seed another minibatch order; None follows SB3's seeding."""

    def clone(seed, **kwargs):
        model = PPO("MlpPolicy", "CartPole-v1", seed=1, device="cpu")
        return behaviour_clone(model, demonstrations, epochs=1, seed=seed, **kwargs).policy.action_net.weight

    assert th.equal(clone(0, progress_bar=True), clone(0))
    assert "behaviour cloning" in capsys.readouterr().err
    assert not th.equal(clone(0), clone(1))
    assert th.equal(clone(None), clone(None))  # the model's seed=1 seeds PyTorch's global generator


def test_a_loss_that_becomes_non_finite_is_not_applied():
    """Actions far from the policy's mean and a step size of 1e30: the first step sends the weights and the log-std
    to about +-1e30 (the std to infinity), so the loss of the second is not finite; that step is refused before the
    optimizer applies it."""
    space = gym.spaces.Box(-1.0, 1.0, (3,), np.float32, seed=0)
    observations = np.stack([space.sample() for _ in range(256)])
    actions = np.full((256, 1), 100.0, np.float32)
    model = PPO("MlpPolicy", "Pendulum-v1", seed=1, device="cpu")
    with pytest.raises(
        NonFiniteError, match=r"the negative log-likelihood is (nan|inf) in epoch 1/10, minibatch 2. This step"
    ):
        behaviour_clone(model, (observations, actions), learning_rate=1e30, seed=0)
    assert all(th.isfinite(param).all() for param in model.policy.parameters())
    assert not model.policy.training


def _uint8_cartpole():
    """CartPole-v1 with its observations scaled to uint8."""
    space = gym.spaces.Box(0, 255, (4,), np.uint8)
    return gym.wrappers.TransformObservation(
        gym.make("CartPole-v1"), lambda obs: np.clip(obs * 10 + 128, 0, 255).astype(np.uint8), space
    )


def _bad_inputs(observations, actions):
    """(model, demonstrations, keyword arguments, error, message): every input behaviour_clone refuses."""
    cartpole = PPO("MlpPolicy", "CartPole-v1", seed=0, device="cpu")
    nan = observations.copy()
    nan[7, 2] = np.nan
    return [
        (
            cartpole.policy,
            (observations, actions),
            {},
            TypeError,
            r"`model` must be an SB3 model .*got ActorCriticPolicy \(give the model",
        ),
        ("PPO", (observations, actions), {}, TypeError, "`model` must be an SB3 model"),
        (
            RecurrentPPO("MlpLstmPolicy", "CartPole-v1", seed=0, device="cpu"),
            (observations, actions),
            {},
            TypeError,
            r"`model` \(RecurrentPPO\) has a recurrent policy \(RecurrentActorCriticPolicy\): .* needs whole sequences",
        ),
        (
            RecurrentPPOKL("MlpLstmPolicy", "CartPole-v1", seed=0, device="cpu"),
            (observations, actions),
            {},
            TypeError,
            r"`model` \(RecurrentPPOKL\) has a recurrent policy",
        ),
        (cartpole, observations, {}, TypeError, r"`demonstrations` must be a minari.MinariDataset or a pair .*got ndarray"),
        (cartpole, (observations, actions, actions), {}, TypeError, "got a tuple of length 3"),
        (
            cartpole,
            ("obs", actions),
            {},
            TypeError,
            r"`demonstrations`' observations must be an array \(or tensor\) of numbers, got str",
        ),
        (cartpole, (observations.astype(complex), actions), {}, TypeError, "observations must be an array .* of numbers"),
        (cartpole, (observations, actions.astype(str)), {}, TypeError, "`demonstrations`' actions must be an array"),
        (
            cartpole,
            (observations[:, :3], actions),
            {},
            ValueError,
            r"observations must have the shape \(n, \*\(4,\)\) .* got \(3000, 3\)",
        ),
        (cartpole, (observations, actions[:, None, None]), {}, ValueError, r"actions must have the shape \(n, \*\(\)\)"),
        (cartpole, (observations, actions[:-1]), {}, ValueError, "`demonstrations` has 3000 observations and 2999 actions"),
        (cartpole, (observations[:0], actions[:0]), {}, ValueError, "`demonstrations` is empty"),
        (cartpole, (nan, actions), {}, ValueError, "`demonstrations`' observations must be finite; row 7 is not"),
        (
            cartpole,
            (observations, np.where(np.arange(3000) == 5, 2, actions)),
            {},
            ValueError,
            "action at row 5 is 2, not in the model's action space Discrete",
        ),
        (cartpole, (observations, actions + 0.5), {}, ValueError, "action at row 0 is 0.5, not in the model's action space"),
        (cartpole, (observations, actions - 1), {}, ValueError, "not in the model's action space Discrete"),
        (
            PPO("MlpPolicy", make_vec_env(_uint8_cartpole), seed=0, device="cpu"),
            (observations, actions),
            {},
            ValueError,
            r"observations are float32, the model's observation space .* is uint8",
        ),
        (
            PPO("MlpPolicy", "Pendulum-v1", seed=0, device="cpu"),
            (observations[:, :3], np.full((3000, 1), np.inf, np.float32)),
            {},
            ValueError,
            "actions must be finite; row 0 is not",
        ),
        (
            PPO("MultiInputPolicy", make_vec_env(_dict_cartpole), seed=0, device="cpu"),
            (observations, actions),
            {},
            TypeError,
            r"observations must be a dict of arrays with the keys \['state'\]",
        ),
        (cartpole, (observations, actions), dict(epochs=0), ValueError, "`epochs` must be an integer >= 1, got 0"),
        (cartpole, (observations, actions), dict(epochs=2.0), TypeError, "`epochs` must be an integer >= 1, got 2.0"),
        (cartpole, (observations, actions), dict(batch_size=0), ValueError, "`batch_size` must be an integer >= 1"),
        (
            cartpole,
            (observations, actions),
            dict(learning_rate=-1e-3),
            ValueError,
            "`learning_rate` must be a finite number > 0",
        ),
        (
            cartpole,
            (observations, actions),
            dict(learning_rate="1e-3"),
            TypeError,
            "`learning_rate` must be a finite number > 0",
        ),
        (cartpole, (observations, actions), dict(seed="0"), TypeError, "`seed` must be None or an integer"),
        (cartpole, (observations, actions), dict(progress_bar=1), TypeError, "`progress_bar` must be a bool"),
    ]


def test_bad_input_is_refused_by_name_before_training(demonstrations):
    for model, given, kwargs, error, message in _bad_inputs(*demonstrations):
        before = (
            None
            if isinstance(model, str)
            else copy.deepcopy(model.state_dict() if isinstance(model, th.nn.Module) else model.policy.state_dict())
        )
        with pytest.raises(error, match=message):
            behaviour_clone(model, given, **kwargs)
        if before is not None:
            after = model.state_dict() if isinstance(model, th.nn.Module) else model.policy.state_dict()
            assert all(th.equal(after[key], value) for key, value in before.items()), message


def test_minari_datasets_that_do_not_fit_are_refused(expert, demonstrations, minari_path):
    pytest.importorskip("minari")
    cartpole = PPO("MlpPolicy", "CartPole-v1", seed=0, device="cpu")
    empty = _minari_dataset([], "sb3-ppo-kl/empty-v0")
    with pytest.raises(ValueError, match=r"`demonstrations` \(Minari dataset 'sb3-ppo-kl/empty-v0'\) is empty"):
        behaviour_clone(cartpole, empty)
    episodes = _episodes(expert, 50, seed=0)
    cartpole_data = _minari_dataset(episodes, "sb3-ppo-kl/small-v0")
    with pytest.raises(ValueError, match=r"`demonstrations` has the observation space Box\(.*\(4,\), float32\), the model"):
        behaviour_clone(PPO("MlpPolicy", "Acrobot-v1", seed=0, device="cpu"), cartpole_data)
    three_actions = _minari_dataset(
        [(o, a, r, te, tr) for o, a, r, te, tr in episodes],
        "sb3-ppo-kl/three-actions-v0",
        observation_space=cartpole.observation_space,
        action_space=gym.spaces.Discrete(3),
    )
    with pytest.raises(ValueError, match=r"has the action space Discrete\(3\), the model Discrete\(2\); they must be equal"):
        behaviour_clone(cartpole, three_actions)
    masked = MaskablePPO("MlpPolicy", "CartPole-v1", seed=0, device="cpu")
    behaviour_clone(masked, cartpole_data, epochs=1)  # sb3-contrib's MaskablePPO clones too (without masks)
