"""
Reading the ``data`` file of an SB3 model zip without running code from the file.

SB3 stores a model's attributes as JSON in the zip's ``data`` file; every attribute that JSON cannot hold
(``observation_space``, ``policy_class``, ``policy_kwargs``, schedules, this package's ``kl_controller``...) is a
base64 ``":serialized:"`` field, which SB3 decodes with ``cloudpickle.loads``: a pickle can call any function it
names, so a crafted file runs code on ``load()`` (SB3 issues #1852 and #2281). The weights (``*.pth``) are already
read with ``torch.load(..., weights_only=True)``.

:class:`SafeUnpickler` decodes a field with an allowlist instead, as ``torch.load(weights_only=True)`` does for
torch's files: its ``find_class`` gives the pickle a global (a class or function it may call or store) only if it is
one of :func:`admitted`'s, and refuses anything else (``builtins.open``, ``os.system``, a lambda serialized by value,
which needs cloudpickle's ``_make_function``) before it can be called, with a :class:`SafeLoadError` naming the field
and the refused global. No module is imported on the file's behalf: the classes admitted by kind are looked up in
modules already imported.

:func:`safe_custom_objects` decodes every serialized field of a zip this way and returns them as SB3's
``custom_objects``, which SB3's own ``load_from_zip_file`` then uses instead of unpickling the fields: SB3 still
reads the zip, the JSON and the weights. ``PPOKL.load(path, safe=True)`` (and the variants'), ``from_pretrained``
and ``ref_policy=<path>`` use it.

It guards against code in the ``data`` file, not against everything a file can do: a zip can still be large, or
give a policy of an admitted class huge layers, and ``VecNormalize.load`` and replay buffers stay pickles.
"""

import base64
import binascii
import importlib
import io
import json
import os
import pathlib
import pickle
import re
import sys
import zipfile
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

import stable_baselines3.common.sb2_compat.rmsprop_tf_like  # noqa: F401 (RL Zoo's optimizer: admitted, so imported)
import torch as th
from stable_baselines3.common.buffers import BaseBuffer
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.save_util import open_path
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor

from sb3_ppo_kl.common.kl import KLCoefController


class SafeLoadError(ValueError, pickle.UnpicklingError):
    """
    A field of a model zip's ``data`` file that the safe path does not decode: it names a global outside the
    allowlist (``refused``, as ``"module.name"``; it was not called), or it could not be decoded (``refused`` None).

    A ValueError (a bad input file), and a ``pickle.UnpicklingError`` as torch's ``weights_only`` refusals are.
    """

    def __init__(self, message: str, field: str, refused: str | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.refused = refused


class _Refused(pickle.UnpicklingError):
    """Raised inside the unpickler for a refused global; :func:`safe_loads` turns it into a SafeLoadError."""

    def __init__(self, refused: str) -> None:
        super().__init__(refused)
        self.refused = refused


def _load_storage(data: bytes) -> Any:
    """
    A torch storage inside a pickled field (a tensor's ``torch.storage._load_from_bytes``), read with
    ``torch.load(weights_only=True)``: torch's own function reads it with ``weights_only=False``, a full pickle.
    """
    if not isinstance(data, bytes):
        raise pickle.UnpicklingError(f"a torch storage must be bytes, got {type(data).__name__}")
    try:
        return th.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # torch's message advises add_safe_globals, which is not for a file's reader: name the global as ours do
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        if refused is None:
            raise
        raise _Refused(f"{refused.group(1)} (in a torch storage, read by torch.load(weights_only=True))") from None


def _check_no_hooks(backward_hooks: Any) -> None:
    if backward_hooks:  # callables, which a tensor in a saved model never has
        raise pickle.UnpicklingError("a tensor with backward hooks")


def _rebuild_tensor(
    storage: Any, offset: int, size: Any, stride: Any, requires_grad: bool, backward_hooks: Any, metadata: Any = None
) -> th.Tensor:
    """torch's ``_rebuild_tensor_v2``, for a tensor without backward hooks."""
    _check_no_hooks(backward_hooks)
    return th._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, OrderedDict(), metadata)


def _rebuild_parameter(data: th.Tensor, requires_grad: bool, backward_hooks: Any) -> th.nn.Parameter:
    """torch's ``_rebuild_parameter``, for a parameter without backward hooks."""
    _check_no_hooks(backward_hooks)
    return th._utils._rebuild_parameter(data, requires_grad, OrderedDict())


# Globals admitted by name, module -> names: the numpy functions and classes that spaces' arrays, dtypes and random
# generators pickle to; SB3's schedules; the containers of episode buffers and tensors; torch's tensor rebuilding.
_BY_NAME: dict[str, tuple[str, ...]] = {
    "numpy": ("dtype", "ndarray"),
    "numpy._core.multiarray": ("_reconstruct", "scalar"),
    "numpy._core.numeric": ("_frombuffer",),
    "numpy.random._pickle": ("__generator_ctor", "__bit_generator_ctor", "__randomstate_ctor"),
    "numpy.random.bit_generator": ("SeedSequence", "__pyx_unpickle_SeedSequence"),
    "numpy.random._generator": ("Generator",),
    "numpy.random.mtrand": ("RandomState",),
    "numpy.random._mt19937": ("MT19937",),
    "numpy.random._pcg64": ("PCG64", "PCG64DXSM"),
    "numpy.random._philox": ("Philox",),
    "numpy.random._sfc64": ("SFC64",),
    "collections": ("deque", "OrderedDict"),
    "stable_baselines3.common.utils": ("FloatSchedule", "LinearSchedule", "ConstantSchedule"),
    "rl_zoo3.utils": ("SimpleLinearSchedule",),  # lin_<start> of RL Zoo files (this package's too); if installed
    "sb3_contrib.common.recurrent.type_aliases": ("RNNStates",),
    "torch": ("device", "Size"),
    "torch._utils": ("_rebuild_tensor_v2", "_rebuild_parameter"),
    "torch.storage": ("_load_from_bytes",),
}
# Those the pickle gets in place of the original: torch's read a storage with weights_only=False and keep hooks
_REPLACED: dict[str, Any] = {
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch.storage._load_from_bytes": _load_storage,
}

# Packages whose classes are admitted by kind (see :func:`admitted`)
_OUR_PACKAGES = ("stable_baselines3", "sb3_contrib", "sb3_ppo_kl")


def _in_package(module: str, packages: Iterable[str]) -> bool:
    return any(module == package or module.startswith(package + ".") for package in packages)


def _by_kind(module: str, obj: Any) -> bool:
    """Whether ``obj``, a class defined in ``module``, is admitted for what it is (see :func:`admitted`)."""
    if _in_package(module, ("gymnasium.spaces",)):
        return True  # the spaces, and GraphInstance (a NamedTuple), never the functions of gymnasium.spaces.utils
    if module == "torch.nn.modules.activation":
        return issubclass(obj, th.nn.Module)
    if issubclass(obj, th.optim.Optimizer):
        return _in_package(module, ("torch.optim", "stable_baselines3"))
    if not _in_package(module, _OUR_PACKAGES):
        return False
    if issubclass(obj, (BasePolicy, BaseBuffer, BaseFeaturesExtractor)):
        return True
    return _in_package(module, ("sb3_ppo_kl",)) and (
        issubclass(obj, KLCoefController) or module == "sb3_ppo_kl.common.schedules"
    )


def admitted(module: str, name: str) -> Any:
    """
    The global ``module.name`` if the safe decoder admits it, else None. Admitted:

    - by name: numpy's ``dtype``, ``ndarray``, ``_reconstruct``, ``scalar`` and ``_frombuffer`` (``numpy.core.*``,
      NumPy 1's spelling, read as ``numpy._core.*``), and its random ``Generator``, ``RandomState``, bit generators,
      ``SeedSequence`` and their pickling helpers; SB3's ``FloatSchedule``, ``LinearSchedule`` and
      ``ConstantSchedule``, and the RL Zoo's ``SimpleLinearSchedule`` (``lin_<start>``) where it is installed; ``collections.deque`` and ``OrderedDict``; sb3-contrib's ``RNNStates``;
      ``torch.device``, ``torch.Size``, torch's dtypes (``torch.float32``...) and tensors (rebuilt without backward
      hooks, their storages read by ``torch.load(weights_only=True)``);
    - by kind, classes only: every class of ``gymnasium.spaces``; torch's activation modules
      (``torch.nn.modules.activation``); the optimizers of ``torch.optim`` and SB3 (``RMSpropTFLike``); the
      policies, buffers and features extractors (subclasses of ``BasePolicy``, ``BaseBuffer``,
      ``BaseFeaturesExtractor``) of SB3, sb3-contrib and this package; this package's
      :class:`~sb3_ppo_kl.KLCoefController` and its subclasses, and its schedules (``sb3_ppo_kl.common.schedules``).

    Nothing else: no other function or class (``builtins``, ``os``, ``subprocess``, cloudpickle's functions for
    code serialized by value). Only module-level names (no dotted path); the modules of the classes admitted by kind
    are looked up among those already imported, never imported for the file (those admitted by name are).
    """
    if "." in name:
        return None
    if module.startswith("numpy.core."):
        module = "numpy._core." + module[len("numpy.core.") :]
    if module == "torch" and isinstance(getattr(th, name, None), th.dtype):
        return getattr(th, name)
    if module in _BY_NAME:
        if name not in _BY_NAME[module]:
            return None
        if f"{module}.{name}" in _REPLACED:
            return _REPLACED[f"{module}.{name}"]
        try:
            return getattr(importlib.import_module(module), name)
        except ImportError:  # the RL Zoo is optional
            return None
    obj = getattr(sys.modules.get(module), "__dict__", {}).get(name)
    if isinstance(obj, type) and obj.__module__ == module and _by_kind(module, obj):
        return obj
    return None


class SafeUnpickler(pickle.Unpickler):
    """A ``pickle.Unpickler`` that admits only the globals of :func:`admitted`; any other raises before it is used."""

    def find_class(self, module: str, name: str) -> Any:
        obj = admitted(module, name)
        if obj is None:
            raise _Refused(f"{module}.{name}")
        return obj

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not admitted")


def safe_loads(data: bytes, field: str, context: str = "", remedy: str = "") -> Any:
    """
    One pickled field, decoded by :class:`SafeUnpickler`.

    :param data: the pickle
    :param field: the field's name, for the error
    :param context: what is loading, the start of the error message (e.g. ``"PPOKL.load('model.zip', safe=True)"``)
    :param remedy: the end of the error message: how to load the file if it is trusted
    :raises SafeLoadError: naming the field and, for a global outside the allowlist, the global
    """
    try:
        return SafeUnpickler(io.BytesIO(data)).load()
    except _Refused as refusal:
        problem = (
            f"refers to {refusal.refused}, which the safe decoder does not admit (it admits gymnasium spaces, numpy "
            "arrays, SB3's schedules, policies, buffers, activations and optimizers, and this package's controllers "
            "and schedules: see sb3_ppo_kl.common.safe_load.admitted); nothing from the file was run"
        )
        raise SafeLoadError(_message(context, field, problem, remedy), field, refusal.refused) from None
    except Exception as error:  # a damaged pickle, or an admitted class refusing its arguments
        problem = f"could not be decoded safely ({type(error).__name__}: {error})"
        raise SafeLoadError(_message(context, field, problem, remedy), field) from error


def _message(context: str, field: str, problem: str, remedy: str) -> str:
    """``"<context>: the field '<field>' <problem>. <remedy>"``, without the parts that are empty."""
    return f"{context}: " * bool(context) + f"the field {field!r} {problem}. {remedy}".strip()


def _serialized_fields(path: str | pathlib.Path | io.BufferedIOBase) -> dict[str, Any]:
    """The ``":serialized:"`` fields of a zip's ``data`` file, as SB3 writes them (none without a ``data`` file)."""
    file = open_path(path, "r", suffix="zip")
    start = file.tell()
    try:
        with zipfile.ZipFile(file) as archive:
            if "data" not in archive.namelist():
                return {}
            json_dict = json.loads(archive.read("data").decode())
    except zipfile.BadZipFile as error:
        raise ValueError(f"Error: the file {path} wasn't a zip-file") from error
    finally:
        if isinstance(path, (str, os.PathLike)):
            file.close()
        else:
            file.seek(start)  # SB3 reads the file object next
    if not isinstance(json_dict, dict):
        raise ValueError(f"the data file of {path} is not an SB3 model's (a JSON object)")  # noqa: TRY004
    return {key: item for key, item in json_dict.items() if isinstance(item, dict) and ":serialized:" in item}


def safe_custom_objects(
    path: str | pathlib.Path | io.BufferedIOBase,
    custom_objects: dict[str, Any] | None = None,
    fields: Iterable[str] | None = None,
    context: str = "",
    remedy: str = "",
) -> dict[str, Any]:
    """
    SB3 ``custom_objects`` for a model zip: every ``":serialized:"`` field of its ``data`` file, decoded by
    :class:`SafeUnpickler`. Passed to SB3's ``load_from_zip_file`` (or ``load``), they replace the fields, so that
    none is unpickled by SB3.

    :param path: the zip, as SB3's ``load`` takes it (a path, with or without ``.zip``, or a file object, left at
        the position it was given at)
    :param custom_objects: the user's: these fields are taken as given and not decoded at all
    :param fields: the fields wanted; the other serialized fields are not decoded but given as None (for a caller
        that reads a few fields, such as the policy's). None (default): all of them
    :param context: the start of an error's message (what is loading)
    :param remedy: the end of an error's message (how to load a trusted file)
    :return: ``custom_objects`` with every other serialized field of the file
    :raises SafeLoadError: for a field that names a global outside the allowlist, or that cannot be decoded
    :raises ValueError: if the file is not a zip
    """
    objects = dict(custom_objects or {})
    wanted = None if fields is None else set(fields)
    for key, item in _serialized_fields(path).items():
        if key in objects:
            continue
        if wanted is not None and key not in wanted:
            objects[key] = None
            continue
        try:
            data = base64.b64decode(item[":serialized:"].encode(), validate=True)
        except (AttributeError, binascii.Error) as error:
            raise SafeLoadError(_message(context, key, f"is not base64 ({error})", remedy), key) from None
        objects[key] = safe_loads(data, key, context, remedy)
    return objects
