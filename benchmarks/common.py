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
            rows = read_rows(path)
            with path.open("w", newline="") as f:
                writer = csv.DictWriter(f, fields)
                writer.writeheader()
                writer.writerows(rows)
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fields)
        if new:
            writer.writeheader()
        writer.writerow(row)


def replace_row(path: Path, fields: list[str], key: list[str], row: dict) -> dict[str, str]:
    """
    Replace the one recorded run whose ``key`` columns equal ``row``'s with ``row``; return the old row.
    The file is written to a temporary file first and then moved into place, so it is never half-written.
    """
    rows = read_rows(path)
    wanted = {k: str(row[k]) for k in key}
    matches = [i for i, r in enumerate(rows) if all(r[k] == v for k, v in wanted.items())]
    if len(matches) != 1:
        raise ValueError(f"{path}: {len(matches)} rows match {wanted}, expected 1")
    old = rows[matches[0]]
    rows[matches[0]] = {k: row.get(k, "") for k in fields}
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fields)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)
    return old
