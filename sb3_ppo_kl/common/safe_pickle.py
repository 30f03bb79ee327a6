"""
A pickle reader that runs nothing it is not allowed to: the decoder of the safe path (:mod:`sb3_ppo_kl.common.safe_load`).

SB3 stores every attribute of a model that JSON cannot hold as a pickle, and ``pickle.loads`` calls whatever function
the pickle names. :class:`SafeUnpickler` is its own opcode-level interpreter instead, as torch's ``weights_only``
reader is: the opcodes are parsed by :func:`pickletools.genops` and executed here, so that every step a pickle can take
is checked before it is taken:

- a global (``GLOBAL``, ``STACK_GLOBAL``) is given only if :func:`admitted` admits it; the check reads the module's
  ``__dict__`` in ``sys.modules`` only, so it never imports a module nor runs a module's lazy ``__getattr__``;
- a call (``REDUCE``) is made only to the few functions and classes of :data:`_CALLS`, each with arguments of the
  types it expects (``numpy.random``'s pickling helpers only with numpy's own bit-generator constructor, never a
  callable taken from the pickle);
- an instance (``NEWOBJ``) is made only of a class admitted as data (spaces, schedules, KL controllers, RNN states),
  with ``cls.__new__``: no ``__init__`` runs;
- a state (``BUILD``) is set only on such an instance, never on a class (which would change it for the whole process),
  and a key of the state must not be a dunder name nor name a method or property of the instance's class;
- numpy's C ``__setstate__`` (arrays, dtypes, random generators) is given only a state numpy writes, checked first:
  it trusts its input (an object array's short list leaves pointers unset, an MT19937 position past its key reads
  outside it); a tensor must lie within its storage (torch would grow the storage to the size the pickle gives);
- items are appended or set only into lists, deques, dicts, ordered dicts and sets;
- ``INST``, ``OBJ``, the extension registry (``EXT*``), persistent ids and out-of-band buffers are refused.

Anything else is refused by name with a :class:`~sb3_ppo_kl.common.safe_load.SafeLoadError` (the field, and what was
refused), before it is used.
"""

import codecs
import collections
import importlib
import inspect
import io
import math
import pickletools
import sys
import types
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import numpy._core.multiarray
import numpy._core.numeric
import numpy.random._pickle
import numpy.random.bit_generator
import torch as th
from sb3_contrib.common.recurrent.type_aliases import RNNStates
from stable_baselines3.common.buffers import BaseBuffer
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor

from sb3_ppo_kl.common.kl import KLCoefController
from sb3_ppo_kl.common.legacy import SCHEDULES_MODULE


class Refused(Exception):
    """
    Something a pickle (or a torch file in it) asked for that the safe decoder does not do.

    :param refused: what, in a few words (``"builtins.open"``, ``"BUILD on the class ..."``)
    :param is_global: whether ``refused`` is a global outside the allowlist (the message then says so)
    """

    def __init__(self, refused: str, is_global: bool = False) -> None:
        super().__init__(refused)
        self.refused = refused
        self.is_global = is_global


class TooManyOps(Refused):
    """A pickle of more opcodes than the reader's limit."""


# Globals admitted by name, module -> names: numpy's array, dtype, scalar and random-generator pickling; SB3's
# schedules; the containers of episode buffers and tensors; torch's tensor rebuilding; the builtins and the codec
# of protocol 2 (sets, and bytes written as latin-1 text).
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
    "builtins": ("set", "frozenset", "bytearray", "object"),  # object: the base copyreg._reconstructor takes
    "_codecs": ("encode",),
    "copyreg": ("_reconstructor",),
    "stable_baselines3.common.utils": ("FloatSchedule", "LinearSchedule", "ConstantSchedule"),
    "rl_zoo3.utils": ("SimpleLinearSchedule",),  # lin_<start> of RL Zoo files (this package's too); if installed
    "sb3_contrib.common.recurrent.type_aliases": ("RNNStates",),
    "torch": ("device", "Size"),
    "torch._utils": ("_rebuild_tensor_v2", "_rebuild_parameter"),
    "torch.storage": ("_load_from_bytes",),
}
# The module names of protocol 2 pickles written by Python 2 or for it (pickle's fix_imports)
_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}
# The modules of _BY_NAME imported by the reader itself (not on the file's behalf): all but the optional RL Zoo's
_IMPORTED_BY_NAME = [module for module in _BY_NAME if module != "rl_zoo3.utils"]
# ... and the RL Zoo's optimizer, admitted by kind, which SB3 does not import itself
for _module in [*_IMPORTED_BY_NAME, "stable_baselines3.common.sb2_compat.rmsprop_tf_like"]:
    importlib.import_module(_module)

# Packages whose classes are admitted by kind (see :func:`admitted`)
_OUR_PACKAGES = ("stable_baselines3", "sb3_contrib", "sb3_ppo_kl")


def _in_package(module: str, packages: Iterable[str]) -> bool:
    return any(module == package or module.startswith(package + ".") for package in packages)


def _by_kind(module: str, obj: type) -> bool:
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
    return _in_package(module, ("sb3_ppo_kl",)) and (issubclass(obj, KLCoefController) or module == SCHEDULES_MODULE)


def _module_dict(module: str) -> dict[str, Any]:
    """The ``__dict__`` of an imported module (empty if it is not imported): no import, no module ``__getattr__``."""
    found = sys.modules.get(module)
    return vars(found) if isinstance(found, types.ModuleType) else {}


def admitted(module: str, name: str) -> Any:
    """
    The global ``module.name`` if the safe decoder admits it, else None. Admitted:

    - by name: numpy's ``dtype``, ``ndarray``, ``_reconstruct``, ``scalar`` and ``_frombuffer`` (``numpy.core.*``,
      NumPy 1's spelling, read as ``numpy._core.*``), and its random ``Generator``, ``RandomState``, bit generators,
      ``SeedSequence`` and their pickling helpers; SB3's ``FloatSchedule``, ``LinearSchedule`` and
      ``ConstantSchedule``, and the RL Zoo's ``SimpleLinearSchedule`` (``lin_<start>``) where it is installed;
      ``collections.deque`` and ``OrderedDict``; ``set``, ``frozenset``, ``bytearray`` and ``_codecs.encode`` (as
      protocol 2 writes sets and bytes), and ``copyreg._reconstructor`` with ``object`` (as protocols 0 and 1 make
      an instance); sb3-contrib's ``RNNStates``; ``torch.device``, ``torch.Size``, torch's
      dtypes (``torch.float32``...) and tensors (rebuilt without backward hooks, their storages read by
      ``torch.load(weights_only=True)``);
    - by kind, classes only: every class of ``gymnasium.spaces``; torch's activation modules
      (``torch.nn.modules.activation``); the optimizers of ``torch.optim`` and SB3 (``RMSpropTFLike``); the
      policies, buffers and features extractors (subclasses of ``BasePolicy``, ``BaseBuffer``,
      ``BaseFeaturesExtractor``) of SB3, sb3-contrib and this package; this package's
      :class:`~sb3_ppo_kl.KLCoefController` and its subclasses, and its schedules (``sb3_ppo_kl.common.schedules``).

    Nothing else: no other function or class (``builtins.open``, ``os``, ``subprocess``, cloudpickle's functions for
    code serialized by value). Only module-level names (no dotted path). A name is looked up in the ``__dict__`` of
    a module already imported: the check imports nothing and never runs a module's ``__getattr__`` (torch's imports
    hundreds of modules for a name such as ``torch._dynamo``). The one exception is ``rl_zoo3.utils``, imported if
    installed when a file names its ``SimpleLinearSchedule``.
    """
    if "." in name:
        return None
    module = _PY2_MODULES.get(module, module)
    if module.startswith("numpy.core."):
        module = "numpy._core." + module[len("numpy.core.") :]
    if module == "torch":
        dtype = _module_dict("torch").get(name)
        if isinstance(dtype, th.dtype):
            return dtype
    if module in _BY_NAME:
        if name not in _BY_NAME[module]:
            return None
        if module not in sys.modules and module == "rl_zoo3.utils":
            try:
                importlib.import_module(module)  # a fixed module of the allowlist, not one the file chooses
            except ImportError:  # the RL Zoo is optional
                return None
        return _module_dict(module).get(name)
    obj = _module_dict(module).get(name)
    if isinstance(obj, type) and obj.__module__ == module and _by_kind(module, obj):
        return obj
    return None


# --- what a pickle may call, and with what -------------------------------------------------------------------------


def _check(condition: bool, what: str) -> None:
    if not condition:
        raise Refused(what)


def _is_int_tuple(value: Any) -> bool:
    return isinstance(value, tuple) and all(isinstance(item, int) for item in value)


def _positional(name: str, args: tuple, kwargs: dict, defaults: dict[str, Any]) -> list[Any]:
    """The arguments of a call by the names of ``defaults`` (in order), positional or keyword, or a Refused."""
    names = list(defaults)
    _check(len(args) <= len(names) and set(kwargs) <= set(names[len(args) :]), f"a call of {name} with these arguments")
    values = list(args) + [kwargs.get(key, defaults[key]) for key in names[len(args) :]]
    return values


def _call_reconstruct(args: tuple, kwargs: dict) -> Any:
    subtype, shape, typecode = _positional("numpy's _reconstruct", args, kwargs, dict(a=None, b=None, c=None))
    _check(subtype is np.ndarray, "numpy's _reconstruct of a class other than numpy.ndarray")
    # an empty array, which BUILD then fills: numpy pickles (0,), and another shape would be allocated here
    _check(shape == (0,) and isinstance(typecode, (bytes, str)), "numpy's _reconstruct of a shape other than (0,)")
    return np._core.multiarray._reconstruct(subtype, shape, typecode)


def _call_scalar(args: tuple, kwargs: dict) -> Any:
    dtype, *rest = _positional("numpy's scalar", args, kwargs, dict(a=None, b=b""))
    _check(isinstance(dtype, np.dtype) and not dtype.hasobject, "numpy's scalar of an object dtype")
    _check(isinstance(rest[0], bytes), "numpy's scalar of anything but bytes")
    return np._core.multiarray.scalar(dtype, rest[0])


def _call_frombuffer(args: tuple, kwargs: dict) -> Any:
    buffer, dtype, shape, order = _positional("numpy's _frombuffer", args, kwargs, dict(a=None, b=None, c=None, d="C"))
    _check(isinstance(buffer, (bytes, bytearray)), "numpy's _frombuffer of anything but bytes")
    _check(isinstance(dtype, np.dtype) and not dtype.hasobject, "numpy's _frombuffer of an object dtype")
    _check(_is_int_tuple(shape) and order in ("C", "F"), "numpy's _frombuffer with these arguments")
    return _resolve("numpy._core.numeric", "_frombuffer")(buffer, dtype, shape, order)


def _call_dtype(args: tuple, kwargs: dict) -> Any:
    _check(not kwargs and 1 <= len(args) <= 3, "numpy.dtype with these arguments")
    _check(isinstance(args[0], str) and all(isinstance(flag, bool) for flag in args[1:]), "numpy.dtype of a non-str")
    align = len(args) > 1 and args[1]
    return np.dtype(args[0], align, True)  # a copy, as pickles ask: never numpy's shared dtype, which BUILD would change


_BIT_GENERATORS: dict[str, Any] = dict(numpy.random._pickle.BitGenerators)


def _bit_generator_class(name: Any) -> type:
    if isinstance(name, type) and name in _BIT_GENERATORS.values():
        return name
    _check(isinstance(name, str) and name in _BIT_GENERATORS, "numpy's bit generator constructor of an unknown name")
    return _BIT_GENERATORS[name]


def _call_bit_generator(args: tuple, kwargs: dict) -> Any:
    (name,) = _positional("numpy's __bit_generator_ctor", args, kwargs, dict(bit_generator="MT19937"))
    return _bit_generator_class(name)()


def _random_ctor(target: type, what: str) -> Callable[[tuple, dict], Any]:
    """numpy's ``__generator_ctor`` or ``__randomstate_ctor``: only with numpy's own bit-generator constructor."""
    real_ctor = vars(numpy.random._pickle)["__bit_generator_ctor"]

    def call(args: tuple, kwargs: dict) -> Any:
        bit_generator, ctor = _positional(what, args, kwargs, dict(bit_generator_name="MT19937", bit_generator_ctor=real_ctor))
        _check(ctor is real_ctor, f"{what} with a bit-generator constructor other than numpy's own")
        if not isinstance(bit_generator, numpy.random.bit_generator.BitGenerator):
            bit_generator = _bit_generator_class(bit_generator)()
        return target(bit_generator)

    return call


def _check_bit_generator_state(kind: str, state: Any) -> None:
    """
    A bit generator's state, as numpy's ``state`` property gives it. numpy's setter does not bound its positions: an
    MT19937 at position 10**7, or a Philox whose buffer position is past its buffer, reads memory outside its state
    on its next draw (the process crashes).
    """
    _check(isinstance(state, dict) and state.get("bit_generator") == kind, f"a state of another generator than {kind}")
    inner = state.get("state")
    _check(isinstance(inner, dict), f"a {kind} state that is not numpy's")
    if kind == "MT19937":
        key, position = inner.get("key"), inner.get("pos")
        _check(isinstance(key, np.ndarray) and key.shape == (624,), "an MT19937 key that is not 624 numbers")
        _check(isinstance(position, int) and 0 <= position <= 624, "an MT19937 state whose position is outside its key")
    if kind == "Philox":
        buffer, position = state.get("buffer"), state.get("buffer_pos")
        _check(isinstance(buffer, np.ndarray) and buffer.shape == (4,), "a Philox buffer that is not 4 numbers")
        _check(isinstance(position, int) and 0 <= position <= 4, "a Philox state whose position is outside its buffer")


def _check_random_state(instance: Any, state: Any) -> None:
    """The state of a bit generator (``(state, seed_sequence)``), a ``RandomState`` or a ``Generator``, as numpy's."""
    if isinstance(instance, np.random.BitGenerator):
        if isinstance(state, tuple):
            _check(len(state) == 2, "a bit generator state that is not numpy's")
            state = state[0]
        _check_bit_generator_state(type(instance).__name__, state)
    elif isinstance(instance, np.random.RandomState):
        _check(isinstance(state, dict), "a RandomState state other than numpy's (a dict)")
        _check_bit_generator_state(state.get("bit_generator", ""), state)
    else:
        _check(state is None or isinstance(state, dict), "a Generator state other than numpy's")
        if state is not None:
            _check_bit_generator_state(state.get("bit_generator", ""), state)


def _check_seed_sequence_state(state: Any) -> None:
    """``(entropy, n_children_spawned, pool, pool_size, spawn_key)``: a pool of ``pool_size`` 32-bit words."""
    _check(isinstance(state, tuple) and len(state) == 5, "a SeedSequence state that is not numpy's")
    _, spawned, pool, pool_size, spawn_key = state
    _check(isinstance(spawned, int) and spawned >= 0, "a SeedSequence state that is not numpy's")
    _check(isinstance(pool, np.ndarray) and pool.dtype == np.uint32 and pool.ndim == 1, "a SeedSequence pool")
    _check(isinstance(pool_size, int) and pool_size == len(pool) >= 1, "a SeedSequence pool of another size")
    _check(isinstance(spawn_key, tuple) and all(isinstance(n, int) for n in spawn_key), "a SeedSequence spawn key")


def _call_seed_sequence(args: tuple, kwargs: dict) -> Any:
    cls, checksum, state = _positional("numpy's SeedSequence unpickling", args, kwargs, dict(a=None, b=None, c=None))
    seed_sequence = numpy.random.bit_generator.SeedSequence
    _check(cls is seed_sequence, "numpy's SeedSequence unpickling of another class")
    _check(isinstance(checksum, int), "a SeedSequence checksum that is not an integer")
    if state is not None:
        _check_seed_sequence_state(state)
    return vars(numpy.random.bit_generator)["__pyx_unpickle_SeedSequence"](cls, checksum, state)


def _call_deque(args: tuple, kwargs: dict) -> Any:
    items, maxlen = _positional("collections.deque", args, kwargs, dict(iterable=(), maxlen=None))
    _check(isinstance(items, (list, tuple)), "collections.deque of anything but a list or tuple")
    _check(maxlen is None or (isinstance(maxlen, int) and maxlen >= 0), "collections.deque with this maxlen")
    return collections.deque(items, maxlen)


def _call_ordered_dict(args: tuple, kwargs: dict) -> Any:
    _check(not kwargs and len(args) <= 1, "collections.OrderedDict with these arguments")
    items = args[0] if args else []
    _check(isinstance(items, (list, tuple)), "collections.OrderedDict of anything but a list of pairs")
    _check(all(isinstance(item, (list, tuple)) and len(item) == 2 for item in items), "OrderedDict of non-pairs")
    return collections.OrderedDict([tuple(item) for item in items])


def _call_set(kind: type) -> Callable[[tuple, dict], Any]:
    def call(args: tuple, kwargs: dict) -> Any:
        _check(not kwargs and len(args) <= 1, f"{kind.__name__} with these arguments")
        _check(not args or isinstance(args[0], (list, tuple)), f"{kind.__name__} of anything but a list or tuple")
        return kind(*args)

    return call


def _call_bytearray(args: tuple, kwargs: dict) -> Any:
    _check(not kwargs and len(args) <= 1, "bytearray with these arguments")
    _check(not args or isinstance(args[0], bytes), "bytearray of anything but bytes")
    return bytearray(*args)


def _call_encode(args: tuple, kwargs: dict) -> Any:
    """``_codecs.encode(text, "latin1")``: how protocol 2 writes bytes (NumPy arrays' data)."""
    text, encoding = _positional("_codecs.encode", args, kwargs, dict(obj=None, encoding="utf-8"))
    _check(isinstance(text, str) and encoding in ("latin1", "latin-1"), "_codecs.encode other than text to latin-1")
    return codecs.encode(text, "latin-1")


def _call_reconstructor(args: tuple, kwargs: dict) -> Any:
    """``copyreg._reconstructor(cls, object, None)``: how protocols 0 and 1 make an instance (``object.__new__``)."""
    _check(not kwargs and len(args) == 3, "copyreg._reconstructor with these arguments")
    cls, base, state = args
    _check(_instantiable(cls), f"an instance of {_describe(cls)}")
    _check(base is object and state is None, "copyreg._reconstructor of a base other than object")
    return object.__new__(cls)


def _call_device(args: tuple, kwargs: dict) -> Any:
    _check(not kwargs and 1 <= len(args) <= 2, "torch.device with these arguments")
    _check(all(isinstance(arg, (str, int)) for arg in args), "torch.device of anything but a str or int")
    return th.device(*args)


def _call_size(args: tuple, kwargs: dict) -> Any:
    _check(not kwargs and len(args) <= 1 and (not args or _is_int_tuple(args[0])), "torch.Size of non-integers")
    return th.Size(*args)


def _call_rebuild_tensor(args: tuple, kwargs: dict) -> Any:
    """torch's ``_rebuild_tensor_v2`` for a tensor without backward hooks (torch checks the sizes against the storage)."""
    _check(not kwargs and len(args) in (6, 7), "torch's _rebuild_tensor_v2 with these arguments")
    storage, offset, size, stride, requires_grad, hooks, *metadata = args
    _check(isinstance(storage, th.storage.TypedStorage), "a tensor on anything but a torch storage")
    _check(isinstance(offset, int) and _is_int_tuple(tuple(size)) and _is_int_tuple(tuple(stride)), "a tensor's shape")
    _check(not hooks and isinstance(requires_grad, bool), "a tensor with backward hooks")
    _check(not metadata or metadata[0] is None or isinstance(metadata[0], dict), "a tensor's metadata")
    size, stride = tuple(size), tuple(stride)
    _check(len(size) == len(stride) and min((offset, *size, *stride)) >= 0, "a tensor of a negative shape or stride")
    # within its storage: torch would grow a storage read from bytes (resizable) to the size the pickle gives
    extent = offset + sum((n - 1) * step for n, step in zip(size, stride, strict=True)) + 1 if all(size) else 0
    _check(extent <= storage._size(), "a tensor larger than its storage")  # _size(): size() warns of deprecation
    return th._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, collections.OrderedDict(), *metadata)


def _call_rebuild_parameter(args: tuple, kwargs: dict) -> Any:
    _check(not kwargs and len(args) == 3, "torch's _rebuild_parameter with these arguments")
    data, requires_grad, hooks = args
    _check(isinstance(data, th.Tensor) and isinstance(requires_grad, bool) and not hooks, "a parameter's arguments")
    return th._utils._rebuild_parameter(data, requires_grad, collections.OrderedDict())


def _resolve(module: str, name: str) -> Any:
    return vars(importlib.import_module(module))[name]


#: The functions and classes a pickle may call (REDUCE), each with the function that checks its arguments and calls
#: it. ``torch.storage._load_from_bytes`` is called by the reader, with its limits (:meth:`SafeUnpickler._call`).
_CALLS: dict[Any, Callable[[tuple, dict], Any]] = {
    np._core.multiarray._reconstruct: _call_reconstruct,
    np._core.multiarray.scalar: _call_scalar,
    _resolve("numpy._core.numeric", "_frombuffer"): _call_frombuffer,
    np.dtype: _call_dtype,
    _resolve("numpy.random._pickle", "__bit_generator_ctor"): _call_bit_generator,
    _resolve("numpy.random._pickle", "__generator_ctor"): _random_ctor(np.random.Generator, "__generator_ctor"),
    _resolve("numpy.random._pickle", "__randomstate_ctor"): _random_ctor(np.random.RandomState, "__randomstate_ctor"),
    _resolve("numpy.random.bit_generator", "__pyx_unpickle_SeedSequence"): _call_seed_sequence,
    collections.deque: _call_deque,
    collections.OrderedDict: _call_ordered_dict,
    set: _call_set(set),
    frozenset: _call_set(frozenset),
    bytearray: _call_bytearray,
    codecs.encode: _call_encode,
    _resolve("copyreg", "_reconstructor"): _call_reconstructor,
    th.device: _call_device,
    th.Size: _call_size,
    th._utils._rebuild_tensor_v2: _call_rebuild_tensor,
    th._utils._rebuild_parameter: _call_rebuild_parameter,
}
_CALLS_BY_ID = {id(func): rule for func, rule in _CALLS.items()}  # by identity: no __eq__ of the file's objects
#: numpy's classes whose instances the calls above make and whose state (BUILD) numpy's own ``__setstate__`` sets
_NUMPY_STATEFUL = (np.ndarray, np.dtype, np.random.Generator, np.random.RandomState, np.random.BitGenerator)


def _instantiable(cls: Any) -> bool:
    """
    Whether a pickle may make an instance of ``cls`` (``NEWOBJ``: ``cls.__new__(cls)``, no ``__init__``) and set its
    state: the data classes among the admitted ones (spaces, schedules, KL controllers, RNN states), never a policy,
    buffer, extractor, module or optimizer (those are admitted as classes only, as ``policy_kwargs`` holds them).
    """
    if not isinstance(cls, type):
        return False
    module = cls.__module__
    if _in_package(module, ("gymnasium.spaces",)):
        return True
    if cls is RNNStates or (
        module == "stable_baselines3.common.utils" and cls.__name__ in _BY_NAME["stable_baselines3.common.utils"]
    ):
        return True
    if module == "rl_zoo3.utils" and cls.__name__ == "SimpleLinearSchedule":
        return True
    return issubclass(cls, KLCoefController) or module == SCHEDULES_MODULE


def names_method(cls: type, key: str) -> bool:
    """Whether ``key``, set on an instance of ``cls``, would be a dunder name or shadow a method or a property."""
    if key.startswith("__") and key.endswith("__"):
        return True
    attribute = inspect.getattr_static(cls, key, None)
    if attribute is None or inspect.ismemberdescriptor(attribute):
        return False  # not defined on the class, or a __slots__ entry
    return callable(attribute) or hasattr(type(attribute), "__get__")  # methods, properties, class/static methods


def _check_state_keys(cls: type, state: Any) -> None:
    """The keys of an instance's state (a dict, or ``(dict, slots)``): strings that name no method of ``cls``."""
    parts = state if isinstance(state, tuple) and len(state) == 2 else (state,)
    for part in parts:
        if not isinstance(part, dict):
            continue
        for key in part:
            _check(isinstance(key, str), f"a non-string attribute name in the state of {_name(cls)}")
            _check(not names_method(cls, key), f"the attribute '{shown(key)}' of {_name(cls)}, which names a method")


def _check_array_state(state: Any) -> None:
    """
    An array's state as numpy pickles it, ``([version,] shape, dtype, is_fortran, data)``, with data of exactly the
    shape's size. numpy's own ``__setstate__`` trusts an object array's list (a list shorter than the shape leaves
    pointers unset: the process crashes on reading them): object dtypes are refused.
    """
    _check(isinstance(state, tuple) and len(state) in (4, 5), "an array state that is not numpy's")
    shape, dtype, fortran, data = state[-4:]
    _check(len(state) == 4 or isinstance(state[0], int), "an array state that is not numpy's")
    _check(_is_int_tuple(shape) and all(n >= 0 for n in shape), "an array of a negative or non-integer shape")
    _check(isinstance(dtype, np.dtype), "an array without a numpy dtype")
    _check(not dtype.hasobject, "an array of Python objects (object dtype), which numpy's __setstate__ does not check")
    _check(isinstance(fortran, (bool, int)), "an array state that is not numpy's")
    size = math.prod(shape) * dtype.itemsize
    _check(isinstance(data, (bytes, bytearray)) and len(data) == size, "an array whose data does not match its shape")


def _check_dtype_state(dtype: np.dtype, state: Any) -> None:
    """
    A dtype's state: its own (as ``dtype.__reduce__`` gives it), but for the byte order. numpy's ``__setstate__`` trusts
    its fields (a crafted one crashes the process), so a structured or altered dtype is refused.
    """
    own = dtype.__reduce__()[2]
    _check(isinstance(state, tuple) and isinstance(own, tuple) and len(state) == len(own), "a dtype state not numpy's")
    _check(state[1] in ("<", ">", "|", "="), "a dtype of an unknown byte order")
    same = all(type(ours) is type(theirs) and ours == theirs for ours, theirs in zip(own[2:], state[2:], strict=True))
    _check(same and state[0] == own[0], f"a dtype state other than that of {dtype} (a structured or altered dtype)")


def shown(text: str, limit: int = 100) -> str:
    """A string from a file as an error message shows it: control characters escaped, and cut after ``limit``."""
    text = text if text.isprintable() else ascii(text)[1:-1]
    return text if len(text) <= limit else text[:limit] + "..."


def _name(obj: Any) -> str:
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


_REFUSED_OPCODES = {
    "INST": "the opcode INST (an instance of a class by name, protocol 0)",
    "OBJ": "the opcode OBJ (an instance of a class, protocol 1)",
    "EXT1": "the opcode EXT1 (copyreg's extension registry)",
    "EXT2": "the opcode EXT2 (copyreg's extension registry)",
    "EXT4": "the opcode EXT4 (copyreg's extension registry)",
    "PERSID": "the opcode PERSID (a persistent id)",
    "BINPERSID": "the opcode BINPERSID (a persistent id)",
    "NEXT_BUFFER": "the opcode NEXT_BUFFER (an out-of-band buffer)",
    "READONLY_BUFFER": "the opcode READONLY_BUFFER (an out-of-band buffer)",
}
_PUSH_ARG = {
    "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "FLOAT", "BINFLOAT",
    "STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8",
    "BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8",
}  # fmt: skip
_CONSTANTS = {"NONE": None, "NEWTRUE": True, "NEWFALSE": False}


class SafeUnpickler:
    """
    Decodes one pickle, taking only the steps described in this module's docstring.

    :param data: the pickle
    :param load_storage: reads the bytes of a torch storage (``torch.storage._load_from_bytes``'s argument: a torch
        file), with the reader's limits; None: a pickle holding a tensor is refused
    :param max_ops: the most opcodes decoded (a TooManyOps after them); None: no limit
    """

    def __init__(self, data: bytes, load_storage: Callable[[bytes], Any] | None = None, max_ops: int | None = None) -> None:
        self.data = data
        self.load_storage = load_storage
        self.max_ops = max_ops

    def find_class(self, module: str, name: str) -> Any:
        """The admitted global ``module.name``, or a Refused naming it."""
        if not (isinstance(module, str) and isinstance(name, str)):
            raise Refused("a global whose name is not a string")
        obj = admitted(module, name)
        if obj is None:
            raise Refused(f"{shown(module)}.{shown(name)}", is_global=True)
        return obj

    def _call(self, func: Any, args: Any, kwargs: Any) -> Any:
        _check(isinstance(args, tuple) and isinstance(kwargs, dict), "a call whose arguments are not a tuple")
        if func is vars(th.storage)["_load_from_bytes"]:
            _check(self.load_storage is not None and len(args) == 1 and not kwargs, "a torch storage here")
            _check(isinstance(args[0], bytes), "a torch storage that is not bytes")
            return self.load_storage(args[0])  # type: ignore[misc]
        rule = _CALLS_BY_ID.get(id(func))
        if rule is not None:
            return rule(args, kwargs)
        if _instantiable(func):
            raise Refused(f"a call of {_name(func)} (its instances are made with NEWOBJ, without __init__)")
        raise Refused(f"a call of {_describe(func)}")

    def _new(self, cls: Any, args: Any, kwargs: Any) -> Any:
        _check(_instantiable(cls), f"an instance of {_describe(cls)}")
        _check(isinstance(args, tuple) and isinstance(kwargs, dict), "NEWOBJ arguments that are not a tuple")
        _check(issubclass(cls, tuple) or not (args or kwargs), f"arguments to {_name(cls)}.__new__")
        return cls.__new__(cls, *args, **kwargs)

    def _build(self, instance: Any, state: Any) -> None:
        if isinstance(instance, type):
            raise Refused(f"BUILD on the class {_name(instance)} itself (it would change the class for the process)")
        cls = type(instance)
        if isinstance(instance, np.ndarray):
            _check_array_state(state)
        elif isinstance(instance, np.dtype):
            _check_dtype_state(instance, state)
        elif isinstance(instance, (np.random.BitGenerator, np.random.RandomState, np.random.Generator)):
            _check_random_state(instance, state)
        elif cls is numpy.random.bit_generator.SeedSequence:
            _check_seed_sequence_state(state)
        if isinstance(instance, _NUMPY_STATEFUL) or cls is numpy.random.bit_generator.SeedSequence:
            instance.__setstate__(state)  # numpy's own, from C, once the arrays' and dtypes' states are checked
            return
        _check(_instantiable(cls), f"BUILD on an instance of {_describe(cls)}")
        _check_state_keys(cls, state)
        setstate = inspect.getattr_static(cls, "__setstate__", None)
        if setstate is not None:
            instance.__setstate__(state)
            return
        slots = None
        if isinstance(state, tuple) and len(state) == 2:
            state, slots = state
        if state:
            _check(isinstance(state, dict), f"a state of {_name(cls)} that is not a dict")
            instance.__dict__.update(state)
        if slots:
            _check(isinstance(slots, dict), f"a slot state of {_name(cls)} that is not a dict")
            for key, value in slots.items():
                setattr(instance, key, value)

    def load(self) -> Any:
        """The decoded object; a Refused for a step outside this module's rules."""
        stack: list[Any] = []
        marks: list[list[Any]] = []
        memo: dict[int, Any] = {}

        def pop_mark() -> list[Any]:
            nonlocal stack
            _check(bool(marks), "a pickle without its MARK")
            items, stack = stack, marks.pop()
            return items

        for count, (opcode, arg, _) in enumerate(pickletools.genops(io.BytesIO(self.data))):
            if self.max_ops is not None and count >= self.max_ops:
                raise TooManyOps(f"more than {self.max_ops} opcodes")
            name = opcode.name
            if name in _REFUSED_OPCODES:
                raise Refused(_REFUSED_OPCODES[name])
            if name in _PUSH_ARG:
                stack.append(arg)
            elif name in _CONSTANTS:
                stack.append(_CONSTANTS[name])
            elif name in ("PROTO", "FRAME"):
                pass
            elif name == "STOP":
                _check(len(stack) == 1 and not marks, "a pickle that leaves more than its object")
                return stack.pop()
            elif name == "MARK":
                marks.append(stack)
                stack = []
            elif name == "POP":
                if stack:
                    stack.pop()
                else:
                    pop_mark()
            elif name == "POP_MARK":
                pop_mark()
            elif name == "DUP":
                stack.append(stack[-1])
            elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                _check(isinstance(arg, int), "a memo index that is not an integer")
                memo[int(arg)] = stack[-1]  # type: ignore[arg-type]
            elif name == "MEMOIZE":
                memo[len(memo)] = stack[-1]
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                _check(isinstance(arg, int) and arg in memo, "a memo entry that was never stored")
                stack.append(memo[int(arg)])  # type: ignore[arg-type]
            elif name == "EMPTY_TUPLE":
                stack.append(())
            elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
                count = int(name[-1])
                _check(len(stack) >= count, "a tuple of missing items")
                items = stack[-count:]
                del stack[-count:]
                stack.append(tuple(items))
            elif name == "TUPLE":
                items = pop_mark()  # before naming `stack`, which pop_mark replaces
                stack.append(tuple(items))
            elif name == "EMPTY_LIST":
                stack.append([])
            elif name == "LIST":
                items = pop_mark()
                stack.append(items)
            elif name == "EMPTY_DICT":
                stack.append({})
            elif name == "DICT":
                items = pop_mark()
                _check(len(items) % 2 == 0, "a dict of an odd number of items")
                stack.append(dict(zip(items[::2], items[1::2], strict=True)))
            elif name == "EMPTY_SET":
                stack.append(set())
            elif name == "FROZENSET":
                items = pop_mark()
                stack.append(frozenset(items))
            elif name in ("APPEND", "APPENDS"):
                items = [stack.pop()] if name == "APPEND" else pop_mark()
                target = stack[-1]
                _check(type(target) in (list, collections.deque), f"{name} to a {_describe(target)}")
                target.extend(items)
            elif name in ("SETITEM", "SETITEMS"):
                items = stack[-2:] if name == "SETITEM" else pop_mark()
                if name == "SETITEM":
                    del stack[-2:]
                target = stack[-1]
                _check(type(target) in (dict, collections.OrderedDict), f"{name} to a {_describe(target)}")
                _check(len(items) % 2 == 0, "a dict of an odd number of items")
                for key, value in zip(items[::2], items[1::2], strict=True):
                    target[key] = value
            elif name == "ADDITEMS":
                items = pop_mark()
                target = stack[-1]
                _check(type(target) is set, f"ADDITEMS to a {_describe(target)}")
                target.update(items)
            elif name == "GLOBAL":
                module, _, global_name = str(arg).partition(" ")
                stack.append(self.find_class(module, global_name))
            elif name == "STACK_GLOBAL":
                global_name, module = stack.pop(), stack.pop()
                stack.append(self.find_class(module, global_name))
            elif name == "REDUCE":
                args = stack.pop()
                stack[-1] = self._call(stack[-1], args, {})
            elif name == "NEWOBJ":
                args = stack.pop()
                stack[-1] = self._new(stack[-1], args, {})
            elif name == "NEWOBJ_EX":
                kwargs, args = stack.pop(), stack.pop()
                stack[-1] = self._new(stack[-1], args, kwargs)
            elif name == "BUILD":
                state = stack.pop()
                self._build(stack[-1], state)
            else:
                raise Refused(f"the opcode {name}")
        raise Refused("a pickle without STOP")


def _describe(obj: Any) -> str:
    if isinstance(obj, type):
        return _name(obj)
    if callable(obj):
        return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__name__)}"
    return type(obj).__name__
