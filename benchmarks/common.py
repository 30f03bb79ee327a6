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
    """Append one finished run, writing the header first if the file is new."""
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fields)
        if new:
            writer.writeheader()
        writer.writerow(row)
