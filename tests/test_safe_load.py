"""
The safe path (issue 33): a model zip's ":serialized:" fields decoded with an allowlist, so that a file from
someone else runs none of its code. PPOKL.load(safe=True), the variants' load, from_pretrained and ref_policy=<path>.
"""

import base64
import builtins
import io
import json
import os
import pickle
import subprocess
import sys
import types
import zipfile
from collections import deque

import cloudpickle
import gymnasium as gym
import numpy as np
import pytest
import torch as th
from conftest import Call as _Call
from sb3_contrib import MaskablePPO, RecurrentPPO
from sb3_contrib.common.envs import InvalidActionEnvDiscrete
from sb3_contrib.common.recurrent.type_aliases import RNNStates
from stable_baselines3 import PPO
from stable_baselines3.common import save_util
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.utils import LinearSchedule
from torch import nn

from sb3_ppo_kl import PPOKL, KLCoefController, MaskablePPOKL, RecurrentPPOKL
from sb3_ppo_kl.common.safe_load import SafeLoadError, admitted, safe_custom_objects, safe_loads

SMALL = dict(n_steps=16, batch_size=16, n_epochs=1, seed=0)


def _fields(path) -> dict:
    with zipfile.ZipFile(path) as archive:
        return json.loads(archive.read("data"))


def _rewrite(source, target, **fields):
    """A copy of the zip ``source`` whose ``data`` has these fields pickled (as SB3 writes ":serialized:" fields); bytes
    are taken as the pickle."""
    with zipfile.ZipFile(source) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    data = json.loads(entries["data"])
    for key, obj in fields.items():
        pickled = obj if isinstance(obj, bytes) else cloudpickle.dumps(obj)
        data[key] = {":type:": "<crafted>", ":serialized:": base64.b64encode(pickled).decode()}
    entries["data"] = json.dumps(data).encode()
    with zipfile.ZipFile(target, "w") as archive:
        for name, content in entries.items():
            archive.writestr(name, content)
    return target


def _assert_same(a, b, where):
    """Equal value for value: arrays, tensors, containers, and objects (spaces, schedules, controllers) by __dict__."""
    assert type(a) is type(b), (where, type(a), type(b))
    if isinstance(a, np.ndarray):
        assert np.array_equal(a, b), where
    elif isinstance(a, th.Tensor):
        assert th.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple, deque)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, gym.spaces.Space):
        assert a == b, where
    elif hasattr(a, "__dict__") and not isinstance(a, type):
        _assert_same(vars(a), vars(b), where)
    else:
        assert a == b, where


def _assert_same_model(safe, trusted, path):
    """The model loaded safely equals SB3's load of the same file: every field of the file, and every state dict."""
    for key in _fields(path):
        _assert_same(getattr(safe, key), getattr(trusted, key), key)
    safe_params, trusted_params = safe.get_parameters(), trusted.get_parameters()
    assert safe_params.keys() == trusted_params.keys()
    for name in safe_params:
        _assert_same(safe_params[name], trusted_params[name], name)


@pytest.fixture(scope="module")
def ppo_zip(tmp_path_factory):
    path = tmp_path_factory.mktemp("safe") / "ppo.zip"
    PPO("MlpPolicy", "CartPole-v1", **SMALL).save(path)
    return path


@pytest.fixture(scope="module")
def ppokl_zip(tmp_path_factory):
    path = tmp_path_factory.mktemp("safe") / "ppokl.zip"
    PPOKL("MlpPolicy", "CartPole-v1", **SMALL).save(path)
    return path


def _open_by_name(path: str) -> bytes:
    """A pickle calling ``builtins.open(path, "w")``, written by hand (pickle itself names it ``io.open``)."""
    return f"cbuiltins\nopen\n(V{path}\nVw\ntR.".encode()


@pytest.mark.parametrize("refused", ["builtins.open", "io.open"])
def test_a_payload_in_observation_space_is_refused_and_sb3_runs_it(ppo_zip, tmp_path, refused):
    marker = tmp_path / "marker"
    payload = _open_by_name(str(marker)) if refused == "builtins.open" else _Call(builtins.open, str(marker), "w")
    crafted = _rewrite(ppo_zip, tmp_path / "crafted.zip", observation_space=payload)
    for load in (
        lambda: PPOKL.load(crafted, safe=True),
        lambda: PPOKL.from_pretrained(crafted, "CartPole-v1"),
        lambda: PPOKL("MlpPolicy", "CartPole-v1", ref_policy=crafted),
    ):
        with pytest.raises(SafeLoadError, match=f"the field 'observation_space' refers to {refused}, ") as error:
            load()
        assert (error.value.field, error.value.refused) == ("observation_space", refused)
        assert not marker.exists()
    # The payload is live: SB3's load opens the file (and only then finds that it is not a space)
    with pytest.raises(ValueError, match="not a Gymnasium space"):
        PPO.load(crafted)
    assert marker.exists()


@pytest.mark.parametrize(
    "field, payload",
    [
        ("policy_class", lambda marker: _Call(builtins.open, marker, "w")),
        ("policy_kwargs", lambda marker: {"net_arch": [8], "activation_fn": _Call(os.system, f"touch {marker}")}),
        ("policy_kwargs", lambda marker: {"features_extractor_kwargs": {"x": _Call(subprocess.call, ["touch", marker])}}),
        ("kl_controller", lambda marker: _Call(builtins.exec, f"open({marker!r}, 'w')")),
        ("kl_controller", lambda marker: _with_attribute(KLCoefController(), "kl_target", _Call(builtins.open, marker, "w"))),
        ("kl_controller", lambda marker: lambda: open(marker, "w")),  # noqa: SIM115 (a function serialized by value)
    ],
)
def test_payloads_in_other_fields_are_refused(ppokl_zip, tmp_path, field, payload):
    marker = tmp_path / "marker"
    crafted = _rewrite(ppokl_zip, tmp_path / "crafted.zip", **{field: payload(str(marker))})
    loads = [lambda: PPOKL.load(crafted, safe=True), lambda: MaskablePPOKL.load(crafted, safe=True)]
    if field != "kl_controller":  # the policy's fields: also read by from_pretrained and ref_policy
        loads += [
            lambda: PPOKL.from_pretrained(crafted, "CartPole-v1"),
            lambda: PPOKL("MlpPolicy", "CartPole-v1", ref_policy=crafted),
        ]
    for load in loads:
        with pytest.raises(SafeLoadError, match=f"the field '{field}' refers to ") as error:
            load()
        assert error.value.field == field and error.value.refused is not None
        assert error.value.refused in str(error.value)
        assert not marker.exists()


def _with_attribute(obj, name, value):
    setattr(obj, name, value)
    return obj


def test_the_allowlist():
    for module, name in [
        ("builtins", "open"),
        ("builtins", "exec"),
        ("builtins", "getattr"),
        ("os", "system"),
        ("subprocess", "Popen"),
        ("cloudpickle.cloudpickle", "_make_function"),
        ("torch", "load"),
        ("numpy", "load"),
        ("torch.nn.modules.linear", "Linear"),  # a torch module, not an activation
        ("stable_baselines3.common.utils", "get_schedule_fn"),  # a function of an admitted module
        ("stable_baselines3", "PPO"),  # a class of SB3 that is no policy, buffer, extractor or schedule
        ("sb3_ppo_kl.common.kl", "KLCoefController.__init__"),  # a dotted path reaches a function's globals
        ("sb3_ppo_kl.common.kl", "th"),
        ("conftest", "Call"),  # the tests' conftest: neither SB3, sb3-contrib nor sb3_ppo_kl
    ]:
        assert admitted(module, name) is None, (module, name)
    for module, name in [
        ("gymnasium.spaces.box", "Box"),
        ("numpy.core.multiarray", "_reconstruct"),  # NumPy 1's spelling
        ("stable_baselines3.common.policies", "ActorCriticPolicy"),
        ("sb3_contrib.common.maskable.buffers", "MaskableRolloutBuffer"),
        ("sb3_ppo_kl.common.buffers", "KLRolloutBuffer"),
        ("stable_baselines3.common.torch_layers", "NatureCNN"),
        ("torch.nn.modules.activation", "ReLU"),
        ("torch.optim.adam", "Adam"),
        ("stable_baselines3.common.sb2_compat.rmsprop_tf_like", "RMSpropTFLike"),
        ("sb3_ppo_kl.common.kl", "KLCoefController"),
    ]:
        assert admitted(module, name) is not None, (module, name)
    # torch's _load_from_bytes is admitted as a name, but the reader never calls it: it reads the storage itself, with
    # torch.load(weights_only=True) (test_a_tensor_is_read_by_torch_weights_only)


def test_no_module_is_imported_for_the_file():
    assert "antigravity" not in sys.modules
    with pytest.raises(SafeLoadError, match=r"refers to antigravity\.fly"):
        safe_loads(b"cantigravity\nfly\n.", "observation_space")
    assert "antigravity" not in sys.modules  # importing it would have opened a web browser


def test_a_policy_class_outside_the_packages_is_refused(monkeypatch):
    """A subclass of an admitted kind (an ActorCriticPolicy) from another package: it could run anything."""
    module = types.ModuleType("my_project")

    class Custom(ActorCriticPolicy):
        pass

    Custom.__module__, Custom.__qualname__ = "my_project", "Custom"
    module.Custom = Custom
    monkeypatch.setitem(sys.modules, "my_project", module)
    assert pickle.loads(pickle.dumps(Custom)) is Custom
    with pytest.raises(SafeLoadError, match=r"'policy_class' refers to my_project\.Custom"):
        safe_loads(pickle.dumps(Custom), "policy_class")


def test_spaces_and_tensors_decode_as_pickled():
    seeded = gym.spaces.Box(-1.0, 1.0, (3,), seed=4)
    seeded.sample()
    values = [
        seeded,
        gym.spaces.Dict({"a": gym.spaces.Discrete(3, start=1), "b": gym.spaces.MultiBinary([2, 2])}),
        gym.spaces.Tuple((gym.spaces.MultiDiscrete([3, 4]), gym.spaces.Text(5))),
        gym.spaces.Sequence(gym.spaces.Discrete(2)),
        gym.spaces.Graph(gym.spaces.Box(0, 1, (2,)), gym.spaces.Discrete(3)),
        gym.spaces.OneOf((gym.spaces.Discrete(2), gym.spaces.Box(0, 1, (1,)))),
        deque([{"r": 1.0, "l": 10, "t": 0.5}], maxlen=100),
        np.arange(6, dtype=np.float32).reshape(2, 3)[:, ::2],  # not contiguous: ndarray's _reconstruct
        RNNStates((th.ones(1, 2, 4), th.zeros(1, 2, 4)), (th.arange(8.0).reshape(1, 2, 4), th.ones(1, 2, 4))),
        th.float16,
    ]
    for value in values:
        decoded = safe_loads(cloudpickle.dumps(value), "field")
        _assert_same(decoded, value, repr(value))
    assert np.array_equal(safe_loads(cloudpickle.dumps(seeded), "x").np_random.random(3), seeded.np_random.random(3))


def test_a_tensor_is_read_by_torch_weights_only(tmp_path):
    marker = tmp_path / "marker"
    inner = io.BytesIO()
    th.save(_Call(builtins.open, str(marker), "w"), inner)  # a torch file whose pickle opens a file
    storage = _Call(th.storage._load_from_bytes, inner.getvalue())  # what a pickled tensor's storage refers to
    with pytest.raises(SafeLoadError, match=r"'_last_lstm_states' refers to io\.open \(in a torch storage"):
        safe_loads(cloudpickle.dumps(storage), "_last_lstm_states")
    assert not marker.exists()
    cloudpickle.loads(cloudpickle.dumps(storage))  # torch's own function runs it
    assert marker.exists()


def test_default_ppokl_loads_as_sb3_loads_it(tmp_path, monkeypatch):
    model = PPOKL("MlpPolicy", "CartPole-v1", **SMALL)
    model.learn(32)
    model.save(tmp_path / "model")
    with monkeypatch.context() as patch:  # SB3 unpickles no field itself: it takes them all from custom_objects
        patch.setattr(save_util.cloudpickle, "loads", lambda *args: pytest.fail("SB3 unpickled a field"))
        safe = PPOKL.load(tmp_path / "model", safe=True)
    _assert_same_model(safe, PPOKL.load(tmp_path / "model"), tmp_path / "model.zip")
    assert safe.kl_coef == model.kl_coef != 1.0
    with open(tmp_path / "model.zip", "rb") as file:  # a file object, read twice (the safe decoder, then SB3)
        _assert_same_model(PPOKL.load(io.BytesIO(file.read()), safe=True), safe, tmp_path / "model.zip")


def test_policy_kwargs_and_a_linear_schedule_load_as_sb3_loads_them(tmp_path):
    model = PPOKL(
        "MlpPolicy",
        "Pendulum-v1",
        policy_kwargs=dict(activation_fn=nn.ReLU, net_arch=[32, 32]),
        learning_rate=LinearSchedule(3e-4, 1e-5, 0.8),
        kl_target=LinearSchedule(0.02, 0.005, 1.0),
        clip_range=0.2,
        ref_policy=PPO("MlpPolicy", "Pendulum-v1", seed=1).policy,
        ref_kl_coef=LinearSchedule(1.0, 0.0, 0.5),
        **SMALL,
    )
    model.learn(16)
    model.save(tmp_path / "model")
    safe = PPOKL.load(tmp_path / "model", safe=True)
    _assert_same_model(safe, PPOKL.load(tmp_path / "model"), tmp_path / "model.zip")
    assert isinstance(safe.learning_rate, LinearSchedule) and safe.policy_kwargs["activation_fn"] is nn.ReLU
    assert safe.lr_schedule(0.5) == model.lr_schedule(0.5)  # rebuilt from learning_rate, as SB3 does
    for key, value in model.ref_policy.state_dict().items():
        assert th.equal(safe.ref_policy.state_dict()[key], value), key


def test_an_rl_zoo_schedule_loads_as_sb3_loads_it(tmp_path):
    """lin_<start> in an RL Zoo file (this package's configs use it) is the Zoo's SimpleLinearSchedule."""
    zoo_utils = pytest.importorskip("rl_zoo3.utils")
    model = PPOKL("MlpPolicy", "CartPole-v1", learning_rate=zoo_utils.SimpleLinearSchedule(1e-3), **SMALL)
    model.save(tmp_path / "model")
    safe = PPOKL.load(tmp_path / "model", safe=True)
    _assert_same_model(safe, PPOKL.load(tmp_path / "model"), tmp_path / "model.zip")
    assert isinstance(safe.learning_rate, zoo_utils.SimpleLinearSchedule) and safe.lr_schedule(0.5) == 5e-4


def test_an_sb3_ppo_zip_through_from_pretrained(ppo_zip):
    trusted = PPO.load(ppo_zip, device="cpu")
    model = PPOKL.from_pretrained(ppo_zip, "CartPole-v1", **SMALL)
    same = PPOKL.from_pretrained(trusted.policy, "CartPole-v1", **SMALL)  # the policy SB3's load gives
    assert model.policy_kwargs == same.policy_kwargs and type(model.ref_policy) is type(trusted.policy)
    for policy in (model.policy, model.ref_policy):
        _assert_same(policy.state_dict(), trusted.policy.state_dict(), "policy")
    assert model.observation_space == trusted.observation_space and model.action_space == trusted.action_space


def test_from_pretrained_does_not_decode_the_fields_it_does_not_need(tmp_path):
    PPO("MlpPolicy", "CartPole-v1", learning_rate=lambda progress: 3e-4 * progress, **SMALL).save(tmp_path / "model")
    assert _fields(tmp_path / "model.zip")["learning_rate"][":serialized:"]  # a function, by value
    model = PPOKL.from_pretrained(tmp_path / "model", "CartPole-v1", **SMALL)
    _assert_same(model.policy.state_dict(), PPO.load(tmp_path / "model").policy.state_dict(), "policy")
    objects = safe_custom_objects(tmp_path / "model.zip", fields=["action_space"])
    assert objects["action_space"] == gym.spaces.Discrete(2) and objects["learning_rate"] is None


def test_maskable_and_recurrent_zips_as_references_of_the_variants(tmp_path):
    masked = lambda: InvalidActionEnvDiscrete(dim=5, n_invalid_actions=2)
    sources = {
        "maskable": (MaskablePPO("MlpPolicy", masked(), **SMALL), MaskablePPOKL, masked),
        "recurrent": (
            RecurrentPPO("MlpLstmPolicy", "CartPole-v1", policy_kwargs=dict(lstm_hidden_size=8), **SMALL),
            RecurrentPPOKL,
            lambda: "CartPole-v1",
        ),
    }
    for name, (source, variant, env) in sources.items():
        source.learn(16)
        source.save(tmp_path / name)
        trusted = type(source).load(tmp_path / name, device="cpu").policy
        for model in (
            variant("MlpLstmPolicy" if name == "recurrent" else "MlpPolicy", env(), ref_policy=tmp_path / name, **SMALL),
            variant.from_pretrained(tmp_path / name, env(), **SMALL),
        ):
            assert type(model.ref_policy) is type(trusted), name
            _assert_same(model.ref_policy.state_dict(), trusted.state_dict(), name)
        # and the variants' own zips, through their load(safe=True)
        model.learn(16)
        model.save(tmp_path / f"{name}_kl")
        _assert_same_model(
            variant.load(tmp_path / f"{name}_kl", safe=True),
            variant.load(tmp_path / f"{name}_kl"),
            tmp_path / f"{name}_kl.zip",
        )


def test_a_lambda_learning_rate_is_refused_by_the_safe_path_only(tmp_path):
    PPOKL("MlpPolicy", "CartPole-v1", learning_rate=lambda progress: 1e-3 * progress, **SMALL).save(tmp_path / "model")
    with pytest.raises(SafeLoadError, match=r"the field 'learning_rate' refers to cloudpickle\.") as error:
        PPOKL.load(tmp_path / "model", safe=True)
    assert "safe=False" in str(error.value) and "custom_objects" in str(error.value)
    assert PPOKL.load(tmp_path / "model").learning_rate(0.5) == pytest.approx(5e-4)  # trusted: SB3's load
    given = PPOKL.load(tmp_path / "model", safe=True, custom_objects={"learning_rate": 1e-3})
    assert given.learning_rate == 1e-3 and given.lr_schedule(0.5) == 1e-3


def test_custom_objects_are_not_decoded(ppokl_zip, tmp_path):
    marker = tmp_path / "marker"
    crafted = _rewrite(ppokl_zip, tmp_path / "crafted.zip", policy_kwargs=_Call(builtins.open, str(marker), "w"))
    model = PPOKL.load(crafted, safe=True, custom_objects={"policy_kwargs": {}})
    assert model.policy_kwargs == {} and not marker.exists()


@pytest.mark.parametrize("safe", ["yes", 1, None])
def test_safe_must_be_a_bool(ppokl_zip, safe):
    with pytest.raises(TypeError, match="`safe` must be a bool"):
        PPOKL.load(ppokl_zip, safe=safe)
