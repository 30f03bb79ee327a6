"""
Loading a model zip from someone else: one read, a bounded size, and nothing from the file that runs code, imports a
module, chooses a path, an environment or a method.

SB3's ``load`` trusts its file: it decodes the zip's ``":serialized:"`` fields with ``cloudpickle.loads`` (SB3 issues
#1852 and #2281), makes the environment a file names, and copies every key of the file's ``data`` into the model.
The safe paths, ``PPOKL.load(path, safe=True)`` (and the variants'), ``from_pretrained(path)`` and
``ref_policy=<path>``, read the file through this module instead:

1. **One read** (:class:`ModelZip`): the file's bytes are read once, at most ``max_bytes`` of them; the members SB3
   reads (``data``, the ``*.pth`` weights, ``system_info.txt``) are decompressed from memory after their declared
   sizes are checked against the same limit. SB3's own ``load`` is then given those bytes, never the path.
2. **No code**: the serialized fields are decoded by :class:`~sb3_ppo_kl.common.safe_pickle.SafeUnpickler`, an
   opcode-level reader with an allowlist (no import, no call outside it, no state set on a class); the weights by
   ``torch.load(weights_only=True)``, after their inner archive's sizes are checked.
3. **Nothing chosen by the file**: only the attributes a model of the loading class has are restored (its
   constructor's parameters and its saved state); a key that names a method or property, or that the class does not
   have, is refused by name. ``env`` in a file is ignored (the model gets the caller's ``env=``, or none), and
   ``tensorboard_log`` is the caller's (``None`` unless given), never the file's.
4. **Bounded memory** (:class:`SafeLoadLimits`): the spaces' sizes, the rollout buffer's and the policies' parameter
   counts are computed from the decoded fields before any of them is allocated (the policies are built on torch's
   ``meta`` device, which allocates nothing).

Every refusal is a :class:`SafeLoadError` naming the zip member or field and what was refused. What stays trusted
input: ``VecNormalize.load``, replay buffers and RL Zoo run folders (pickles), and the code of the admitted classes
themselves (a file can choose among them and give them data).
"""

import base64
import binascii
import contextlib
import dataclasses
import functools
import inspect
import io
import json
import math
import os
import pathlib
import pickle
import pickletools
import re
import warnings
import zipfile
from collections.abc import Container, Iterable, Iterator
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.save_util import open_path
from torch.overrides import TorchFunctionMode

from sb3_ppo_kl.common.legacy import REMOVED_STATE
from sb3_ppo_kl.common.safe_pickle import Refused, SafeUnpickler, TooManyOps, admitted, names_method, shown

__all__ = [
    "ModelZip",
    "SafeLoadError",
    "SafeLoadLimits",
    "SafeUnpickler",
    "admitted",
    "check_policy_size",
    "policy_kwargs_of",
    "prepare_load",
    "safe_custom_objects",
    "safe_loads",
]

_GIB = 1 << 30


class SafeLoadError(ValueError, pickle.UnpicklingError):
    """
    A model zip, or a part of it, that the safe path does not load. ``field`` names the zip member or ``data`` field;
    ``refused`` is a global outside the allowlist (``"module.name"``; it was not called) or another step that was
    refused, or None (a damaged file); ``limit`` the :class:`SafeLoadLimits` field the file exceeds, or None.

    A ValueError (a bad input file), and a ``pickle.UnpicklingError`` as torch's ``weights_only`` refusals are.
    """

    def __init__(self, message: str, field: str, refused: str | None = None, limit: str | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.refused = refused
        self.limit = limit


@dataclasses.dataclass(frozen=True)
class SafeLoadLimits:
    """
    The sizes the safe path accepts from a file, each checked before the memory is allocated. The defaults hold every
    model SB3, sb3-contrib and the RL Zoo train; give larger ones for a larger file you expect:
    ``PPOKL.load(path, safe=SafeLoadLimits(max_parameters=300_000_000))``.

    :param max_bytes: the file's size, and the total uncompressed size of the members read from it (and of the
        archives inside its ``*.pth`` weights): 1 GiB
    :param max_parameters: the parameters (and buffers) of each policy the load builds, the model's and its
        reference's, counted before any is allocated: 100 million
    :param max_space_size: the values in one observation or action (a ``Discrete(n)`` counts ``n``, one-hot): 10
        million
    :param max_rollout_size: the values of the rollout buffer ``_setup_model`` allocates: ``n_steps * n_envs`` times
        an observation's and an action's sizes: 1 billion
    :param max_pickle_ops: the opcodes of one pickled field (about a microsecond each to decode; a model's largest
        fields take a few thousand): 2 million
    :param max_data_bytes: the uncompressed size of the ``data`` member (JSON, with the pickled fields in base64), which
        takes many times its size once decoded (an empty JSON list is 2 bytes, and 56 in memory): 64 MiB (a model's is
        a few kB, and a few MB with image observations)
    """

    max_bytes: int = _GIB
    max_parameters: int = 100_000_000
    max_space_size: int = 10_000_000
    max_rollout_size: int = 1_000_000_000
    max_pickle_ops: int = 2_000_000
    max_data_bytes: int = 64 << 20

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"SafeLoadLimits: `{field.name}` must be an integer >= 1, got {value!r}")


@dataclasses.dataclass
class _Context:
    """How errors are worded: what is loading, how to load a trusted file, how to raise a limit."""

    context: str = ""
    remedy: str = ""
    raise_limit: str = "SafeLoadLimits({limit}=...)"

    def error(self, kind: str, name: str, problem: str, refused: str | None = None, advise: bool = True) -> SafeLoadError:
        """A refusal; ``advise=False`` for a damaged file, which trusting it would not load either."""
        where = f"the {kind} '{shown(name)}'" if kind else name
        remedy = self.remedy if advise else ""
        message = f"{self.context}: " * bool(self.context) + f"{where} {problem}. {remedy}".strip()
        return SafeLoadError(message, name, refused)

    def over(
        self, kind: str, name: str, what: str, value: int, limits: "SafeLoadLimits", limit: str, unit: str = ""
    ) -> SafeLoadError:
        maximum = getattr(limits, limit)
        where = f"the {kind} '{shown(name)}'" if kind else name
        message = (
            f"{self.context}: " * bool(self.context)
            + f"{where} {what} {value:,}{unit}, over the safe path's limit {limit}={maximum:,}; nothing was allocated. "
            + f"If you expect a model this large, raise the limit: {self.raise_limit.format(limit=limit)}"
        )
        return SafeLoadError(message, name, limit=limit)


# --- pickled fields ------------------------------------------------------------------------------------------------


def safe_loads(
    data: bytes,
    field: str,
    context: str = "",
    remedy: str = "",
    limits: SafeLoadLimits | None = None,
) -> Any:
    """
    One pickled field, decoded by :class:`~sb3_ppo_kl.common.safe_pickle.SafeUnpickler`.

    :param data: the pickle
    :param field: the field's name, for the error
    :param context: what is loading, the start of the error message (e.g. ``"PPOKL.load('model.zip', safe=True)"``)
    :param remedy: the end of the error message: how to load the file if it is trusted
    :param limits: the sizes accepted for a torch storage inside the pickle (default: :class:`SafeLoadLimits`'s)
    :raises SafeLoadError: naming the field and what was refused
    """
    return _decode(data, field, _Context(context, remedy), limits or SafeLoadLimits())


def _decode(data: bytes, field: str, how: _Context, limits: SafeLoadLimits) -> Any:
    def load_storage(raw: bytes) -> Any:
        return _torch_load(raw, field, how, limits, "field", " (in a torch storage)")

    try:
        return SafeUnpickler(data, load_storage, limits.max_pickle_ops).load()
    except TooManyOps:
        raise how.over(
            "field", field, "has more pickle opcodes than", limits.max_pickle_ops, limits, "max_pickle_ops"
        ) from None
    except Refused as refusal:
        if refusal.is_global:
            problem = (
                f"refers to {refusal.refused}, which the safe decoder does not admit (it admits gymnasium spaces, "
                "numpy arrays, SB3's schedules, policies, buffers, activations and optimizers, and this package's "
                "controllers and schedules: see sb3_ppo_kl.common.safe_pickle.admitted); nothing from the file was run"
            )
        else:
            problem = f"holds {refusal.refused}, which the safe decoder refuses; nothing from the file was run"
        raise how.error("field", field, problem, refusal.refused) from None
    except SafeLoadError:
        raise
    except Exception as error:  # noqa: BLE001 (a damaged pickle, or an admitted class refusing its state)
        problem = f"could not be decoded safely ({type(error).__name__}: {_first_line(error)})"
        raise how.error("field", field, problem) from None


def _first_line(error: BaseException) -> str:
    text = _plain(error).strip()
    return text.splitlines()[0] if text else ""


def _plain(error: BaseException) -> str:
    """The error's message without terminal colours."""
    return re.sub(r"\x1b\[[0-9;]*m", "", str(error))


# --- the zip ------------------------------------------------------------------------------------------------------

#: The members SB3's load_from_zip_file reads (besides the ``*.pth`` weights)
_READ_MEMBERS = ("data", "system_info.txt", "_stable_baselines3_version")


_CHUNK = 1 << 20


def _read_chunks(stream: Any, size: int) -> list[bytes]:
    """Up to ``size`` bytes of ``stream``, in chunks: one read of ``size`` would allocate them all at once."""
    chunks = []
    while size > 0:
        chunk = stream.read(min(_CHUNK, size))
        if not chunk:
            break
        chunks.append(chunk)
        size -= len(chunk)
    return chunks


def _read_once(path: str | os.PathLike | io.BufferedIOBase, limits: SafeLoadLimits, how: _Context) -> bytes:
    """The file's bytes, read once (SB3's rules for a path: ``.zip`` appended if the path does not exist)."""
    file = open_path(path, "r", suffix="zip")  # type: ignore[arg-type]
    try:
        with contextlib.suppress(OSError, AttributeError, io.UnsupportedOperation):
            size = os.fstat(file.fileno()).st_size
            if size > limits.max_bytes:
                raise how.over("", "the file", "has", size, limits, "max_bytes", " bytes")
        chunks = _read_chunks(file, limits.max_bytes + 1)  # one byte over the limit tells a file over it
    finally:
        if isinstance(path, (str, os.PathLike)):
            file.close()
    total = sum(map(len, chunks))
    if total > limits.max_bytes:
        raise how.over("", "the file", "has more than", limits.max_bytes, limits, "max_bytes", " bytes")
    raw = b"".join(chunks)
    return raw


def _check_archive(
    archive: zipfile.ZipFile, names: Container[str] | None, owner: str, limits: SafeLoadLimits, how: _Context
) -> None:
    """The declared uncompressed sizes of these members (None: all), each and in total, within ``max_bytes``."""
    total = 0
    for info in archive.infolist():
        if names is not None and info.filename not in names:
            continue
        if info.file_size > limits.max_bytes:
            raise how.over(
                "member",
                f"{owner}{info.filename}",
                "declares an uncompressed size of",
                info.file_size,
                limits,
                "max_bytes",
                " bytes",
            )
        total += info.file_size
        if total > limits.max_bytes:
            raise how.over(
                "member", f"{owner}{info.filename}", "brings the uncompressed size to", total, limits, "max_bytes", " bytes"
            )


def _read_member(archive: zipfile.ZipFile, name: str) -> bytes:
    """
    A member, decompressed in chunks up to its declared size: ``archive.read`` asks the decompressor for up to 2 GiB at
    once, whatever the member declares, so that a member whose header lies would be inflated in full first.
    """
    info = archive.getinfo(name)
    with archive.open(info) as member:
        chunks = _read_chunks(member, info.file_size)
        member.read(1)  # at the end: zipfile checks the CRC (a member longer than it declares fails it)
    return b"".join(chunks)


def _torch_load(
    data: bytes, member: str, how: _Context, limits: SafeLoadLimits, kind: str = "member", inside: str = ""
) -> Any:
    """
    A torch file (a ``*.pth`` member, or a tensor's storage in a pickle) read by ``torch.load(weights_only=True)``,
    after the sizes of its inner archive are checked; torch's refusals become SafeLoadErrors naming the member.
    """
    buffer = io.BytesIO(data)
    if zipfile.is_zipfile(buffer):
        try:
            with zipfile.ZipFile(buffer) as inner:
                _check_archive(inner, None, f"{member}/", limits, how)
        except zipfile.BadZipFile as error:
            raise how.error("member", member, f"is a damaged torch file ({error})", advise=False) from None
    else:
        _check_legacy_sizes(data, member, how, kind, inside)
    buffer.seek(0)
    try:
        return th.load(buffer, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 (torch's refusal (an UnpicklingError) or a damaged file)
        text = _plain(error)
        found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if found is not None:
            refused = shown(found.group(1))
            problem = f"refers to {refused}{inside}, which torch.load(weights_only=True) does not admit; nothing was run"
            raise how.error(kind, member, problem, refused) from None
        found = re.search(r"WeightsUnpickler error: ([^\n]*)", text)
        detail = found.group(1) if found else _first_line(error)
        detail = re.split(r"\.\s+(?:Please|Check|You can|To )", detail)[0]  # not torch's advice on disabling it
        raise how.error(kind, member, f"was refused{inside} by torch.load(weights_only=True): {detail}", detail) from None


def _check_legacy_sizes(data: bytes, member: str, how: _Context, kind: str = "member", inside: str = "") -> None:
    """
    torch's legacy format (which pickles a tensor's storage: ``torch.storage._load_from_bytes``) allocates each storage
    at the size its persistent id declares before reading it: the declared sizes must fit in the bytes given. The
    format is four pickles (magic number, protocol, system info, the object with its storages' persistent ids) and
    the storages' keys, then their data; a persistent id is ``('storage', type, key, location, numel, view)``.
    """
    stream = io.BytesIO(data)
    declared = 0
    try:
        for _ in range(5):
            numbers: list[int] = []
            element = 16
            for opcode, arg, _ in pickletools.genops(stream):
                if opcode.name in ("BINPERSID", "PERSID"):
                    declared += sum(numbers) * element
                    numbers, element = [], 16
                elif isinstance(arg, str) and arg == "storage":
                    numbers, element = [], 16
                elif opcode.name == "GLOBAL" and isinstance(arg, str):
                    element = _ELEMENT_SIZES.get(arg.rpartition(" ")[2], 16)
                elif opcode.name in _INT_OPCODES and isinstance(arg, int):
                    numbers.append(abs(arg))
    except ValueError as error:
        raise how.error(kind, member, f"is a damaged torch file{inside} ({_first_line(error)})", advise=False) from None
    if declared > len(data):
        problem = f"declares storages of {declared:,} bytes in {len(data):,}{inside}"
        raise how.error(kind, member, problem, "storage sizes")


_INT_OPCODES = ("INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4")


# The bytes of one element of torch's legacy typed storages (an unknown type counts as the largest)
_ELEMENT_SIZES = {
    "UntypedStorage": 1, "ByteStorage": 1, "CharStorage": 1, "BoolStorage": 1, "QUInt8Storage": 1, "QInt8Storage": 1,
    "ShortStorage": 2, "HalfStorage": 2, "BFloat16Storage": 2, "IntStorage": 4, "FloatStorage": 4, "QInt32Storage": 4,
    "LongStorage": 8, "DoubleStorage": 8, "ComplexFloatStorage": 8, "ComplexDoubleStorage": 16,
}  # fmt: skip


@dataclasses.dataclass
class ModelZip:
    """
    An SB3 model zip, read once: the members SB3 reads, as bytes, and its ``data`` as a JSON object.

    Use :meth:`read`; :meth:`fields` decodes the serialized fields, :meth:`weights` reads a ``*.pth`` member and
    :meth:`as_file` gives SB3's ``load`` the same bytes.
    """

    members: dict[str, bytes]
    data: dict[str, Any] | None
    limits: SafeLoadLimits
    how: _Context

    @classmethod
    def read(
        cls,
        path: str | os.PathLike | io.BufferedIOBase,
        limits: SafeLoadLimits | None = None,
        context: str = "",
        remedy: str = "",
        raise_limit: str = "SafeLoadLimits({limit}=...)",
    ) -> "ModelZip":
        """
        Read a model zip once (a path, with or without ``.zip``, or a binary file object, read from its position).

        :raises SafeLoadError: for a file that is not a zip, a file or member over ``limits``, a member that cannot
            be decompressed, or a ``data`` member that is not a JSON object
        """
        limits = limits or SafeLoadLimits()
        how = _Context(context, remedy, raise_limit)
        raw = _read_once(path, limits, how)
        try:
            archive = zipfile.ZipFile(io.BytesIO(raw))
        except zipfile.BadZipFile:
            raise how.error("", "the file", "is not a zip file (an SB3 model is one)", advise=False) from None
        with archive:
            names = {name for name in archive.namelist() if name in _READ_MEMBERS or os.path.splitext(name)[1] == ".pth"}
            _check_archive(archive, names, "", limits, how)
            if "data" in names and archive.getinfo("data").file_size > limits.max_data_bytes:
                size = archive.getinfo("data").file_size
                raise how.over("member", "data", "declares an uncompressed size of", size, limits, "max_data_bytes", " bytes")
            members = {}
            for name in sorted(names):
                try:
                    members[name] = _read_member(archive, name)
                except Exception as error:  # noqa: BLE001 (a bad CRC, an unknown compression, an encrypted member...)
                    raise how.error(
                        "member", name, f"could not be read from the zip ({_first_line(error)})", advise=False
                    ) from None
        data = None
        if "data" in members:
            try:
                data = json.loads(members["data"].decode())
            except (ValueError, RecursionError) as error:
                raise how.error(
                    "member", "data", f"is not SB3's JSON ({type(error).__name__}: {_first_line(error)})"
                ) from None
            if not isinstance(data, dict):
                raise how.error("member", "data", "is not a JSON object, as SB3 writes it")
        return cls(members, data, limits, how)

    def serialized(self) -> dict[str, Any]:
        """The ``":serialized:"`` fields of ``data``, undecoded."""
        return {key: item for key, item in (self.data or {}).items() if isinstance(item, dict) and ":serialized:" in item}

    def fields(self, custom_objects: dict[str, Any] | None = None, fields: Iterable[str] | None = None) -> dict[str, Any]:
        """
        SB3 ``custom_objects`` for this zip: every ``":serialized:"`` field of ``data`` decoded safely, except those
        given in ``custom_objects`` (taken as given) and, when ``fields`` is given, those not in it (None).
        """
        objects = dict(custom_objects or {})
        wanted = None if fields is None else set(fields)
        for key, item in self.serialized().items():
            if key in objects:
                continue
            if wanted is not None and key not in wanted:
                objects[key] = None
                continue
            try:
                pickled = base64.b64decode(str(item[":serialized:"]).encode(), validate=True)
            except (binascii.Error, ValueError) as error:
                raise self.how.error("field", key, f"is not base64 ({error})") from None
            objects[key] = _decode(pickled, key, self.how, self.limits)
        return objects

    def weights(self, name: str) -> Any:
        """The ``*.pth`` member ``name`` read by ``torch.load(weights_only=True)`` (None if absent)."""
        if name not in self.members:
            return None
        return _torch_load(self.members[name], name, self.how, self.limits)  # not kept: SB3's load reads them again

    def check_weights(self) -> None:
        """Read every ``*.pth`` member as :meth:`weights` does: a refusal names the member."""
        for name in self.members:
            if name.endswith(".pth"):
                self.weights(name)

    def as_file(self, data: dict[str, Any] | None = None) -> io.BytesIO:
        """
        These bytes as a zip for SB3's ``load`` (uncompressed, in memory): the members read, with ``data`` replaced by
        the given JSON object (the keys to restore) when given.
        """
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
            for name, content in self.members.items():
                if name == "data" and data is not None:
                    content = json.dumps(data).encode()
                elif name == "system_info.txt":  # printed by print_system_info: no terminal control sequences
                    text = content.decode("utf-8", "replace")
                    content = "".join(c for c in text if c.isprintable() or c in "\n\t").encode()
                archive.writestr(name, content)
        buffer.seek(0)
        return buffer


def safe_custom_objects(
    path: str | pathlib.Path | io.BufferedIOBase,
    custom_objects: dict[str, Any] | None = None,
    fields: Iterable[str] | None = None,
    context: str = "",
    remedy: str = "",
    limits: SafeLoadLimits | None = None,
) -> dict[str, Any]:
    """
    SB3 ``custom_objects`` for a model zip: every ``":serialized:"`` field of its ``data`` file, decoded safely (see
    :meth:`ModelZip.fields`). The file is read once; for a file object, from its position, which it is left at the end
    of. ``PPOKL.load(safe=True)`` does more (:func:`prepare_load`): use it to load a model.

    :raises SafeLoadError: for a field that is refused or cannot be decoded, a file over ``limits``, or not a zip
    """
    return ModelZip.read(path, limits, context, remedy).fields(custom_objects, fields)


# --- what a file may set --------------------------------------------------------------------------------------------

#: Fields of the file that are paths: the caller's value is used (None unless given), never the file's
_PATH_FIELDS = ("tensorboard_log",)
#: Attributes saved by this package's versions before 0.2.0 for options since removed: not restored, not refused
_RETIRED = frozenset(
    {"cutoff_coef", "cutoff_factor", "kl_penalty", "per_state", "variance_weight", "horizon", "rule"}
)  # fmt: skip
#: Set only when a model has an environment, so not by the constructor _known_keys calls without one
_ENV_STATE = ("observation_space", "action_space", "n_envs", "lr_schedule")


def _bare(cls: type[BaseAlgorithm]) -> BaseAlgorithm:
    """A model of ``cls`` as SB3's load first builds it: no environment, no policy (``_init_setup_model=False``)."""
    return cls(policy=next(iter(cls.policy_aliases.values())), env=None, device="cpu", _init_setup_model=False)  # type: ignore[call-arg]


@functools.cache
def _known_weights(cls: type[BaseAlgorithm]) -> tuple[frozenset[str], frozenset[str]]:
    """
    The ``*.pth`` members a model of ``cls`` may have (its state dicts, the reference policy's of this package's
    algorithms, SB3's ``pytorch_variables``), and the names its ``pytorch_variables`` may hold: SB3's load reaches the
    attribute each one names (``recursive_getattr``), so none may come from the file alone.
    """
    state_dicts, variables = _bare(cls)._get_torch_save_params()
    state_dicts = [*state_dicts, *(["ref_policy"] if hasattr(cls, "_setup_ref_policy") else [])]
    members = {f"{name}.pth" for name in [*state_dicts, "pytorch_variables", "tensors"]}
    return frozenset(members), frozenset(variables)


def _check_weight_names(cls: type[BaseAlgorithm], model_zip: "ModelZip") -> None:
    """Only the ``*.pth`` members and ``pytorch_variables`` a model of ``cls`` saves (see :func:`_known_weights`)."""
    members, variables = _known_weights(cls)
    for name in model_zip.members:
        if name.endswith(".pth") and name not in members:
            problem = f"is not a state dict of {cls.__name__} (it saves {', '.join(sorted(members))})"
            raise model_zip.how.error("member", name, problem, name)
    for name in ("pytorch_variables.pth", "tensors.pth"):
        found = model_zip.weights(name)
        if found is None:
            continue
        if not isinstance(found, dict):
            raise model_zip.how.error("member", name, "is not a dict of tensors, as SB3 saves it")
        for key in found:
            if key not in variables:
                problem = f"names the variable {key!r}, which {cls.__name__} does not have"
                raise model_zip.how.error("member", name, problem, str(key))


@functools.cache
def _known_keys(cls: type[BaseAlgorithm]) -> tuple[frozenset[str], frozenset[str]]:
    """
    The attributes a model of ``cls`` saves (its constructor's parameters and the state a model without environment
    has, as SB3's load builds it), and those it never saves (``_excluded_save_params``).
    """
    parameters: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" in vars(klass):
            parameters |= {
                name
                for name, parameter in inspect.signature(vars(klass)["__init__"]).parameters.items()
                if parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
            }
    bare = _bare(cls)
    excluded = frozenset(bare._excluded_save_params())
    known = (parameters | set(vars(bare)) | set(_ENV_STATE)) - excluded - {"self", "_init_setup_model"}
    return frozenset(known), excluded


def _check_keys(cls: type[BaseAlgorithm], data: dict[str, Any], given: dict[str, Any], how: _Context) -> dict[str, Any]:
    """The keys of ``data`` to restore: refused by name if unknown to ``cls`` or naming a method; ``env`` dropped."""
    known, excluded = _known_keys(cls)
    kept = {}
    for key, value in data.items():
        if key == "env":
            continue  # never made from the file: the caller's env=, or none
        if key in given:
            kept[key] = value
        elif names_method(cls, key):
            raise how.error("field", key, f"names a method or property of {cls.__name__}, which a file may not replace", key)
        elif key in known:
            kept[key] = value
        elif key in REMOVED_STATE:
            kept[key] = value  # 0.2.0's removed options: the model's _setup_model drops them, warning (common.legacy)
        elif key in _RETIRED:
            continue
        elif key in excluded:
            raise how.error("field", key, f"is an attribute {cls.__name__} never saves, which a file may not set", key)
        else:
            raise how.error("field", key, f"is not an attribute of {cls.__name__}, which the safe path restores", key)
    return kept


# --- sizes ----------------------------------------------------------------------------------------------------------


def _space_size(space: Any) -> tuple[int, int]:
    """
    An observation's or action's number of values, and its size one-hot encoded (a ``Discrete(n)``: 1 and ``n``),
    from the space's fields alone. Python integers: no overflow.
    """
    if isinstance(space, spaces.Box):
        flat = math.prod(int(n) for n in space.shape)
        return flat, flat
    if isinstance(space, spaces.Discrete):
        return 1, max(int(space.n), 1)
    if isinstance(space, spaces.MultiDiscrete):
        nvec = np.asarray(space.nvec)
        return int(nvec.size), int(sum(int(n) for n in nvec.flat)) if nvec.size <= 10**7 else 10**18
    if isinstance(space, spaces.MultiBinary):
        flat = math.prod(int(n) for n in np.atleast_1d(space.n))
        return flat, flat
    if isinstance(space, (spaces.Dict, spaces.Tuple)):
        parts = [_space_size(sub) for sub in (space.spaces.values() if isinstance(space, spaces.Dict) else space.spaces)]
        return sum(part[0] for part in parts), sum(part[1] for part in parts)
    return 0, 0  # a space SB3 does not learn with: its policies refuse it


def _check_spaces(objects: dict[str, Any], limits: SafeLoadLimits, how: _Context) -> int:
    """
    The spaces' sizes within ``max_space_size``; returns the values a rollout buffer holds per step for them: the
    observation, the action and its mask (an action's one-hot size).
    """
    total = 0
    for key in ("observation_space", "action_space"):
        space = objects.get(key)
        if not isinstance(space, spaces.Space):
            continue
        try:
            flat, one_hot = _space_size(space)
        except (TypeError, ValueError, AttributeError) as error:
            raise how.error("field", key, f"is a damaged space ({_first_line(error)})") from None
        if max(flat, one_hot) > limits.max_space_size:
            raise how.over("field", key, "has a size of", max(flat, one_hot), limits, "max_space_size", " values")
        total += flat if key == "observation_space" else flat + one_hot  # an action, and its mask (MaskablePPO)
    return total


class _CountOnMeta(TorchFunctionMode):
    """
    Keeps a policy being built on torch's ``meta`` device (``.to(device)`` is a no-op) and stops it after too many
    torch calls (a file's ``net_arch`` of a million layers), so that building it costs neither memory nor much time.
    """

    def __init__(self, max_calls: int) -> None:
        super().__init__()
        self.calls = 0
        self.max_calls = max_calls

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.calls += 1
        if self.calls > self.max_calls:
            raise _TooManyCalls
        if func in (th.Tensor.to, th.Tensor.cpu, th.Tensor.cuda):
            return args[0]
        if func is th._is_all_true:  # a distribution's argument check (gSDE's noise): no values on meta
            return True
        return func(*args, **(kwargs or {}))


class _TooManyCalls(Exception):
    pass


_MAX_BUILD_CALLS = 20_000  # a policy of SB3 or sb3-contrib takes a few hundred


def check_policy_size(
    policy_class: Any,
    kwargs: dict[str, Any],
    what: str,
    limits: SafeLoadLimits,
    how: _Context | None = None,
) -> BasePolicy:
    """
    Build ``policy_class(**kwargs)`` on torch's ``meta`` device (no memory) and count its parameters and buffers,
    once its spaces (``kwargs``' ``observation_space`` and ``action_space``) are within ``max_space_size``.

    :return: the policy, on the meta device (no values: for its sizes only)
    :raises SafeLoadError: naming ``what`` (the fields it comes from), if the count is over ``max_parameters``, or if
        the fields do not build a policy
    """
    how = how or _Context()
    _check_spaces(kwargs, limits, how)
    if not (isinstance(policy_class, type) and issubclass(policy_class, BasePolicy)):
        raise how.error("", what, f"does not give an SB3 policy class: {policy_class!r}")
    counter = _CountOnMeta(_MAX_BUILD_CALLS)
    try:
        with th.device("meta"), counter, _quiet():
            policy = policy_class(**kwargs)
    except _TooManyCalls:
        raise how.over(
            "", what, "build a policy of more torch operations than", _MAX_BUILD_CALLS, limits, "max_parameters"
        ) from None
    except Exception as error:  # noqa: BLE001 (the class refusing the file's arguments: the same error the load would raise)
        raise how.error(
            "", what, f"does not build a {policy_class.__name__} ({type(error).__name__}: {_first_line(error)})"
        ) from None
    count = sum(tensor.numel() for tensor in [*policy.parameters(), *policy.buffers()])
    if count > limits.max_parameters:
        raise how.over(
            "", what, f"build a policy ({policy_class.__name__}) of", count, limits, "max_parameters", " parameters"
        )
    return policy


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No warnings printed twice: the policy is built again by the load itself."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def accepts(cls: type, name: str) -> bool:
    """Whether ``cls``'s constructor has a parameter of this name."""
    return name in inspect.signature(cls.__init__).parameters  # type: ignore[misc]


def constant_schedule(progress_remaining: float) -> float:
    """The learning rate a policy is built with here, never used: a policy built to be sized, or a frozen reference."""
    del progress_remaining
    return 0.0


def with_lr_schedule(policy_class: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``kwargs`` with :func:`constant_schedule` as ``lr_schedule`` where ``policy_class`` takes one."""
    if isinstance(policy_class, type) and accepts(policy_class, "lr_schedule"):
        return {**kwargs, "lr_schedule": constant_schedule}
    return dict(kwargs)


def policy_kwargs_of(policy_class: Any, objects: dict[str, Any], use_sde: Any) -> dict[str, Any]:
    """The constructor arguments an algorithm (or :func:`~sb3_ppo_kl.common.reference.load_policy`) builds a policy
    of the file with: its spaces, a learning rate, ``use_sde`` where taken, and its ``policy_kwargs``."""
    policy_kwargs = dict(objects.get("policy_kwargs") or {})
    policy_kwargs.pop("device", None)
    net_arch = policy_kwargs.get("net_arch")
    if isinstance(net_arch, list) and net_arch and isinstance(net_arch[0], dict):
        policy_kwargs["net_arch"] = net_arch[0]  # the format of SB3 < 1.8, as BaseAlgorithm.load converts it
    spaces = dict(observation_space=objects.get("observation_space"), action_space=objects.get("action_space"))
    kwargs = with_lr_schedule(policy_class, spaces)
    if isinstance(policy_class, type) and accepts(policy_class, "use_sde") and "use_sde" not in policy_kwargs:
        kwargs["use_sde"] = bool(use_sde)
    return {**kwargs, **policy_kwargs}


def _check_sizes(objects: dict[str, Any], kwargs: dict[str, Any], env: Any, limits: SafeLoadLimits, how: _Context) -> None:
    """The spaces, the rollout buffer and the policies (the model's and its reference's) within ``limits``."""
    step_size = _check_spaces(objects, limits, how)
    policy_class = objects.get("policy_class")
    if policy_class is not None:
        policy = check_policy_size(
            policy_class,
            policy_kwargs_of(policy_class, objects, objects.get("use_sde", False)),
            "the fields 'policy_class' and 'policy_kwargs'",
            limits,
            how,
        )
        lstm = getattr(policy, "lstm_actor", None)
        if isinstance(lstm, th.nn.LSTM):  # a recurrent rollout buffer keeps 4 LSTM states (h, c; pi, vf) per step
            step_size += 4 * lstm.num_layers * lstm.hidden_size
    n_steps = kwargs.get("n_steps", objects.get("n_steps"))
    n_envs = getattr(env, "num_envs", 1) if env is not None else objects.get("n_envs", 1)
    if isinstance(n_steps, int) and isinstance(n_envs, int):
        rollout = max(n_steps, 0) * max(n_envs, 0) * step_size
        if rollout > limits.max_rollout_size:
            fields = "the fields 'n_steps' and 'n_envs'"
            raise how.over("", fields, "give a rollout buffer of", rollout, limits, "max_rollout_size", " values")
    spec = objects.get("_ref_policy_spec")
    if spec is not None:
        if not (isinstance(spec, dict) and isinstance(spec.get("kwargs"), dict)):
            raise how.error("field", "_ref_policy_spec", "is not a reference policy's spec (a dict with its kwargs)")
        spec_kwargs = with_lr_schedule(spec.get("policy_class"), spec["kwargs"])
        check_policy_size(spec.get("policy_class"), spec_kwargs, "the field '_ref_policy_spec' would", limits, how)


# --- the algorithms' load -------------------------------------------------------------------------------------------


def prepare_load(
    cls: type[BaseAlgorithm],
    path: str | pathlib.Path | io.BufferedIOBase,
    env: Any,
    custom_objects: dict[str, Any] | None,
    kwargs: dict[str, Any],
    limits: SafeLoadLimits | None = None,
    context: str = "",
    remedy: str = "",
) -> tuple[io.BytesIO, dict[str, Any]]:
    """
    What ``cls.load(path, safe=True)`` gives SB3's ``load``: the file read once and checked, as an in-memory zip, and
    the ``custom_objects`` that replace every serialized field (decoded safely) and ``tensorboard_log``.

    The checks, in order: the file's and members' sizes; the weights (``torch.load(weights_only=True)``, refusals
    naming the member); the keys of ``data`` (only the attributes of ``cls``; ``env`` dropped); the serialized fields;
    the spaces', rollout buffer's and policies' sizes (:class:`SafeLoadLimits`), before any is allocated.

    :param cls: the algorithm loading
    :param path: as SB3's ``load`` takes it
    :param env: the caller's ``env=`` (its ``num_envs`` sizes the rollout buffer)
    :param custom_objects: the caller's: fields taken as given, not decoded
    :param kwargs: the caller's extra arguments to ``load`` (``n_steps``...), applied by SB3 after the file's
    :param limits: the sizes accepted (default: :class:`SafeLoadLimits`'s)
    :param context: what is loading, for errors
    :param remedy: how to load a trusted file, for errors
    :raises SafeLoadError: for anything the safe path refuses, naming the member or field
    """
    limits = limits or SafeLoadLimits()
    raise_limit = f"{cls.__name__}.load(path, safe=SafeLoadLimits({{limit}}=...))"
    model_zip = ModelZip.read(path, limits, context, remedy, raise_limit)  # type: ignore[arg-type]
    model_zip.check_weights()
    _check_weight_names(cls, model_zip)
    given = dict(custom_objects or {})
    data = None
    if model_zip.data is not None:
        data = _check_keys(cls, model_zip.data, given, model_zip.how)
        model_zip.data = data
    objects = model_zip.fields(given)
    for key in _PATH_FIELDS:
        if key not in given:
            objects[key] = None  # the caller's, given to load() as a keyword, replaces it after
    _check_sizes({**(data or {}), **objects}, kwargs, env, limits, model_zip.how)
    return model_zip.as_file(data), objects
