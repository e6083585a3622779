"""Append-only JSONL result files that survive a killed process.

Each row is one JSON line written and flushed as soon as it is computed. Reading back drops a
torn last line (a process killed mid-write), so a resumed run continues from the last complete
row and never duplicates one. A ``config.json`` beside the rows records the settings of the run;
resuming with different settings is refused rather than mixing results.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Sequence


class ResultsMismatchError(ValueError):
    """The results folder holds a run with different settings."""


class JsonlRows:
    """Rows of one JSONL file: read what is there (repairing a torn tail), append new rows."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.rows: list[dict] = self._read_and_repair()

    def _read_and_repair(self) -> list[dict]:
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]
        if len(complete) != len(data):  # a torn last line from an interrupted write
            with open(self.path, "r+b") as f:
                f.truncate(len(complete))
        return [json.loads(line) for line in complete.decode().splitlines() if line.strip()]

    def keys(self, fields: Sequence[str]) -> set[tuple]:
        return {tuple(row[f] for f in fields) for row in self.rows}

    def append(self, rows: Iterable[dict]) -> None:
        rows = list(rows)
        if not rows:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write("".join(json.dumps(row) + "\n" for row in rows))
            f.flush()
            os.fsync(f.fileno())
        self.rows.extend(rows)


def check_config(folder: str | Path, config: dict, resume: bool = True) -> None:
    """Write ``config.json`` in a new folder, or check that an existing run used ``config``."""
    folder = Path(folder)
    path = folder / "config.json"
    config = json.loads(json.dumps(config))  # normalise tuples and the like
    if path.exists() and resume:
        saved = json.loads(path.read_text())
        if saved != config:
            diff = {k: (saved.get(k), config.get(k)) for k in set(saved) | set(config) if saved.get(k) != config.get(k)}
            raise ResultsMismatchError(
                f"{folder} holds results of a run with other settings (saved vs now: {diff}); "
                "use another output folder, or resume=False to start over."
            )
        return
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.jsonl"):
        stale.unlink()
    path.write_text(json.dumps(config, indent=2, sort_keys=True))
