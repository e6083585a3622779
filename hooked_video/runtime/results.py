"""Reading results back: the rows of one results folder or several (a run's shards merged, each
key once) as a DataFrame, checked to be one run on one dataset, and exported to Parquet or CSV."""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

from hooked_video.runtime.store_format import (
    DATABASE,
    ResultsCorruptError,
    ResultsMismatchError,
    _databases,
    _differences,
    _json,
    _read_database,
    _read_meta,
)

__all__ = ["export", "load_results"]


def _read_jsonl(path: Path) -> list[dict]:
    """The complete lines of a legacy JSONL file (a torn last line is skipped, the file untouched)."""
    data = path.read_bytes()
    rows = []
    for number, line in enumerate(data[: data.rfind(b"\n") + 1].splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line.decode("utf-8")))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ResultsCorruptError(f"{path}, line {number}: not a JSON result row ({err})") from None
    return rows


def load_results(folders: str | os.PathLike | Sequence[str | os.PathLike], table: str = "rows"):
    """The rows of ``table`` as a pandas DataFrame, from one results folder or several.

    Reads ``results.sqlite`` of each folder and of its subfolders (shards of a multi-node run),
    merged with each key once; the stores must hold the same kind of run with the same settings
    and data. Folders without a database are read as legacy JSONL folders (``{table}.jsonl``,
    as hooked_video 0.1 wrote them). ``df.attrs`` holds the kind and settings.
    """
    import pandas as pd

    folders = [Path(folders)] if isinstance(folders, (str, os.PathLike)) else [Path(f) for f in folders]
    legacy = [f / f"{table}.jsonl" for f in folders if not _databases(f) and (f / f"{table}.jsonl").is_file()]
    databases = [db for f in folders for db in _databases(f)]
    if not databases and not legacy:
        raise FileNotFoundError(f"no results in {[str(f) for f in folders]} (no {DATABASE}, nor {table}.jsonl)")
    attrs, merged, first, samples = {}, {}, None, {}
    for db in databases:
        meta, key, rows = _read_database(db, table)
        if not meta:
            continue  # being created by a run that has just started
        if attrs:
            _check_same_run(first, attrs, db, meta)
        first = first or db
        attrs = attrs or {"kind": meta["kind"], "settings": meta["settings"], "fingerprint": meta["fingerprint"]}
        _check_same_samples(samples, db, _read_database(db, "samples")[2])
        for row in rows:
            merged.setdefault(tuple(_json(row.get(f)) for f in key), row)
    _warn_missing_shards(folders)
    rows = list(merged.values())
    for path in legacy:
        rows += _read_jsonl(path)
        if not attrs and (path.parent / "config.json").is_file():
            attrs = {"kind": "legacy", "settings": json.loads((path.parent / "config.json").read_text())}
    df = pd.DataFrame(rows)
    df.attrs.update({k: v for k, v in attrs.items() if k != "fingerprint"})
    return df


def _check_same_samples(seen: dict, db: Path, rows: list[dict]) -> None:
    """Stores read together must agree on every sample id they share (``seen``: id -> (fingerprint, db))."""
    for row in rows:
        fingerprint, where = seen.setdefault(row["sample_id"], (row["fingerprint"], db))
        if fingerprint != row["fingerprint"]:
            raise ResultsMismatchError(f"{where} and {db} hold results of different data under the sample id "
                                       f"{row['sample_id']!r} (other video, question, options or answer); read them "
                                       "separately")  # fmt: skip


_SHARD = re.compile(r"shard-(\d+)-of-(\d+)\Z")


def _warn_missing_shards(folders: Sequence[Path]) -> None:
    """A loud warning for every data-parallel run of which only some shards have results."""
    for folder in folders:
        found: dict[int, set[int]] = {}
        for db in folder.glob(f"*/{DATABASE}"):
            match = _SHARD.match(db.parent.name)
            if match and _read_meta(db):  # a shard's database without tables is a shard just starting
                found.setdefault(int(match[2]), set()).add(int(match[1]))
        for count, indices in sorted(found.items()):
            missing = sorted(set(range(count)) - indices)
            if missing and not (folder / DATABASE).is_file():
                warnings.warn(f"{folder}: shard(s) {missing} of {count} have no results there, so these results may "
                              f"miss samples; run the missing shard(s) (--shard i/{count}) before reading the whole "
                              "run", stacklevel=3)  # fmt: skip


def _check_same_run(first_db: Path, first: dict, db: Path, meta: dict) -> None:
    """Stores read together must hold one run: same kind, settings and (if recorded) data."""
    differences = _differences({"kind": first["kind"], "settings": first["settings"]},
                               {"kind": meta["kind"], "settings": meta["settings"]})  # fmt: skip
    if None not in (first["fingerprint"], meta["fingerprint"]) and first["fingerprint"] != meta["fingerprint"]:
        differences.append("the samples differ (data fingerprint)")
    if differences:
        raise ResultsMismatchError(f"{first_db} and {db} hold different runs ({'; '.join(differences)}); "
                                   "read them separately.")  # fmt: skip


def export(folders: str | os.PathLike | Sequence[str | os.PathLike], path: str | os.PathLike,
           table: str = "rows") -> Path:  # fmt: skip
    """Write ``load_results(folders, table)`` to ``path``: Parquet (.parquet, .pq) or CSV (.csv)."""
    path = Path(path)
    df = load_results(folders, table)
    df.attrs = {}  # pandas would store attrs as Parquet metadata; the settings stay in the store
    if path.suffix in (".parquet", ".pq"):
        df.to_parquet(path, index=False)
    elif path.suffix == ".csv":
        df.to_csv(path, index=False)
    else:
        raise ValueError(f"export writes .parquet, .pq or .csv files, got {path.name!r}")
    return path
