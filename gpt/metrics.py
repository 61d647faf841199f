"""metrics.jsonl, a run's log: one JSON object per evaluation (step, train and val loss, bits
per character, learning rate, gradient norm, clipped steps, elapsed time, tokens/s), appended
as the run goes, so that a crash loses at most the line being written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .fileio import atomic_write


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The evaluations logged in path, in order ([] where there is no file yet). A line cut
    short by a crash is no row at all, and is left out."""
    rows = []
    for line in (path.read_text().splitlines() if path.exists() else []):
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and type(row.get("step")) is int:
            rows.append(row)
    return rows


def append_row(path: Path, row: dict[str, Any]) -> None:
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")


def keep_rows_until(path: Path, step: int) -> list[dict[str, Any]]:
    """Keep the evaluations that a checkpoint of `step` includes, and return them.

    Rows after it come from a run that stopped before saving them (a failed save, a second
    Ctrl-C mid-save): they are dropped, so that the resumed run evaluates those steps again and
    the file stays in step order."""
    rows = [row for row in read_rows(path) if row["step"] <= step]
    atomic_write(path, lambda f: f.write("".join(json.dumps(row) + "\n" for row in rows).encode()))
    return rows
