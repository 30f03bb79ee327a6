"""
Crash-safe writes: a file is replaced whole, or not at all.

SB3's ``save()`` opens the target with ``open(path, "wb")``, which truncates the old model before the new one is
written. A process killed in between (SIGKILL, an out-of-memory kill, a pre-empted node) or a write that fails (a
full disk) leaves a truncated zip where a good model was. :func:`atomic_write` writes to a temporary file in the
target's directory, flushes it to disk and renames it over the target with ``os.replace``, which POSIX and Windows
perform atomically within one file system: at any moment the path holds either the old file or the new one, whole.
"""

import contextlib
import os
import pathlib
import secrets
import stat
import warnings
from collections.abc import Iterator
from typing import BinaryIO


def save_target(path: str | os.PathLike[str]) -> pathlib.Path:
    """
    The file SB3's ``save(path)`` writes to (``stable_baselines3.common.save_util.open_path`` with ``suffix="zip"``).

    - ``".zip"`` is appended when the path has no suffix (``"model"`` -> ``"model.zip"``);
    - a path that is an existing directory becomes ``<path>_2`` (with SB3's warning), repeatedly;
    - a symbolic link stands for the file it points to: SB3 writes through the link, so the file is replaced
      and the link kept.

    :param path: the path given to ``save()``
    :return: the path of the file to write
    """
    target = pathlib.Path(path)
    if target.suffix == "":
        target = pathlib.Path(f"{target}.zip")
    if target.is_symlink():
        target = pathlib.Path(os.path.realpath(target))
    while target.is_dir():
        warnings.warn(f"Path '{target}' is a folder. Will save instead to {target}_2", stacklevel=3)
        target = pathlib.Path(f"{target}_2")
    return target


def _fsync_directory(directory: pathlib.Path) -> None:
    """Make a rename in ``directory`` durable (POSIX; Windows cannot open a directory, and needs no such step)."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(target: pathlib.Path) -> Iterator[BinaryIO]:
    """
    A binary file object whose content replaces ``target`` whole when the ``with`` block ends without error.

    The content goes to a hidden temporary file in ``target``'s directory (``.<name>.<random>.tmp``), created as
    ``open(target, "wb")`` would create ``target`` (the process umask applies; an existing target's permission bits
    are kept). When the block ends, the file is flushed and fsynced, renamed over ``target`` with ``os.replace``,
    and the directory is fsynced so that the rename survives a power cut. If the block or any of these steps
    raises, the temporary file is removed, ``target`` is left as it was, and the error propagates. Only a process
    killed during the block leaves its temporary file behind (never the target broken).

    A missing parent directory is created, with SB3's warning, as SB3's ``save()`` does.

    :param target: the file to replace (see :func:`save_target`)
    :return: a context manager giving the open temporary file
    """
    directory = target.parent
    if not directory.exists():
        warnings.warn(f"Path '{directory}' does not exist. Will create it.", stacklevel=3)
        directory.mkdir(parents=True, exist_ok=True)
    while True:
        temporary = directory / f".{target.name}.{secrets.token_hex(4)}.tmp"
        try:
            # O_EXCL: never another writer's temporary file; mode 0o666 less the umask, as open(target, "wb")
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
            break
        except FileExistsError:
            continue
    try:
        with open(fd, "wb") as file:
            if target.is_file():
                os.chmod(temporary, stat.S_IMODE(target.stat().st_mode))
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    _fsync_directory(directory)
