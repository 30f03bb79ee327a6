"""Resumable result files shared by the benchmark scripts: one CSV row per finished run."""

import csv
from pathlib import Path


def read_rows(path: Path) -> list[dict[str, str]]:
    """All finished runs recorded in ``path`` (none if it does not exist yet)."""
    if not path.exists():
        return []
    with path.open() as f:
        return list(csv.DictReader(f))


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


def _write_rows(path: Path, fields: list[str], rows: list[dict]) -> None:
    """Rewrite ``path`` with ``rows`` under the header ``fields``: written to a temporary file first and then moved
    into place, so the file is never half-written."""
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fields)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)
