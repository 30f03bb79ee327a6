"""
Result files on disk: the results folder (:class:`ResultsDir`), its CSV rows and its curves.

A row is one finished run, appended as it finishes, so that every grid resumes. Every benchmark takes its folder as a :class:`ResultsDir` value (``--results-dir DIR``, by default
``benchmarks/results``) and names its own files in it; nothing rebinds a module's paths at run time.
"""

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# the committed results
DEFAULT_ROOT = Path(__file__).parent / "results"


@dataclass(frozen=True)
class ResultsDir:
    """The folder of a benchmark's result files: ``results / name`` is the path of one of them."""

    root: Path = DEFAULT_ROOT

    @classmethod
    def option(cls, path: Path | None) -> "ResultsDir":
        """The folder named by ``--results-dir`` (``benchmarks/results`` without it)."""
        return cls() if path is None else cls(Path(path))

    def __truediv__(self, name: str) -> Path:
        return self.root / name


def read_rows(path: Path) -> list[dict[str, str]]:
    """All finished runs recorded in ``path`` (none if it does not exist yet)."""
    if not path.exists():
        return []
    with path.open() as f:
        return list(csv.DictReader(f))


def read_columns(path: Path, names: list[str]) -> dict[str, np.ndarray] | None:
    """
    The columns ``names`` of a curve file as float arrays (None if the file does not exist). A cell left blank,
    or a column the file does not have (curves written before it existed), reads as NaN.
    """
    if not path.exists():
        return None
    rows = read_rows(path)
    return {name: np.array([float(r[name]) if r.get(name) not in ("", None) else np.nan for r in rows]) for name in names}


def append_row(path: Path, fields: list[str], row: dict) -> None:
    """
    Append one finished run, writing the header first if the file is new.

    A file written before ``fields`` gained columns is rewritten once with the new header, its old rows
    left blank in the new columns.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    if not new:
        with path.open() as f:
            header = next(csv.reader(f), [])
        if header != fields:
            if not set(header) <= set(fields):
                raise ValueError(f"{path} has columns {sorted(set(header) - set(fields))} that {fields} lacks")
            _write_rows(path, fields, read_rows(path))
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fields)
        if new:
            writer.writeheader()
        writer.writerow(row)


def append_new_row(path: Path, fields: list[str], key: list[str], row: dict) -> bool:
    """
    :func:`append_row`, unless a recorded run already has ``row``'s ``key`` columns: then nothing is written. Returns
    whether the row was appended, so that no run is ever recorded twice (a duplicate job, a second driver).
    """
    wanted = [str(row[k]) for k in key]
    if any([r.get(k, "") for k in key] == wanted for r in read_rows(path)):
        return False
    append_row(path, fields, row)
    return True


def replace_row(path: Path, fields: list[str], key: list[str], row: dict) -> dict[str, str]:
    """
    Replace the one recorded run whose ``key`` columns equal ``row``'s with ``row``; return the old row.
    """
    rows = read_rows(path)
    wanted = {k: str(row[k]) for k in key}
    matches = [i for i, r in enumerate(rows) if all(r[k] == v for k, v in wanted.items())]
    if len(matches) != 1:
        raise ValueError(f"{path}: {len(matches)} rows match {wanted}, expected 1")
    old = rows[matches[0]]
    rows[matches[0]] = {k: row.get(k, "") for k in fields}
    _write_rows(path, fields, rows)
    return old


def write_rows(path: Path, fields: list[str], rows: list[dict]) -> None:
    """Write a whole file of rows (a run's curve) atomically, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_rows(path, fields, rows)


def write_bytes(path: Path, data: bytes) -> None:
    """Write a file atomically (a temporary file moved into place), creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def _write_rows(path: Path, fields: list[str], rows: list[dict]) -> None:
    """Rewrite ``path`` with ``rows`` under the header ``fields``: written to a temporary file first and then moved
    into place, so the file is never half-written."""
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fields)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)
