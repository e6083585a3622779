"""The results database's format, shared by the store that writes it and the readers: file
names, the format number, JSON encoding of keys and rows, errors, and reading one database file."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

__all__ = ["DATABASE", "ResultsCorruptError", "ResultsMismatchError"]


class ResultsMismatchError(ValueError):
    """The results folder holds a run with other settings, samples or table keys."""


DATABASE = "results.sqlite"
FILES = (DATABASE, DATABASE + "-wal", DATABASE + "-shm", DATABASE + "-journal")  # all the database may create
#: 2 (0.3): models and videos identified by content; 1 (0.2): by name and by path and mtime.
FORMAT = 2
ROW = "row_json"  # the column holding each row's JSON
WAIT_STEP = 5.0  # seconds SQLite waits for a lock before this module says that it is waiting
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def _json(value) -> str:
    """Compact JSON; numpy and torch scalars and arrays become Python numbers and lists."""
    return _ENCODER.encode(value)


def _plain(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} {value!r} cannot be stored: results and settings must be JSON-able")


#: One encoder for every row: ``json.dumps`` with options builds a new one per call, which a store
#: writing a few hundred thousand rows (and key fields) notices.
_ENCODER = json.JSONEncoder(separators=(",", ":"), default=_plain)


def _normal(value):
    """``value`` as it reads back from JSON (tuples as lists, and the like)."""
    return json.loads(_json(value))


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _hashable(value):
    return tuple(_hashable(v) for v in value) if isinstance(value, list) else value


def _differences(saved, now, path: str = "") -> list[str]:
    """'name: stored X, now Y' for each differing setting (nested dicts by dotted name)."""
    if isinstance(saved, dict) and isinstance(now, dict):
        out = []
        for k in sorted(set(saved) | set(now), key=str):
            missing = "<not set>"
            out += _differences(saved.get(k, missing), now.get(k, missing), f"{path}{k}.")
        return out
    return [] if saved == now else [f"{path.rstrip('.')}: stored {saved!r}, now {now!r}"]


def _databases(folder: Path) -> list[Path]:
    """The result databases of ``folder``: its own, and its subfolders' (shards)."""
    return [db for db in [folder / DATABASE, *sorted(folder.glob(f"*/{DATABASE}"))] if db.is_file()]


class ResultsCorruptError(ValueError):
    """A results file cannot be read; the message names it."""


def _corrupt(path: Path, err: Exception) -> ResultsCorruptError:
    return ResultsCorruptError(f"{path} is not a readable results database ({err}); move it away, "
                               "or use another folder")  # fmt: skip


def _read_meta(path: Path) -> dict:
    """The meta table of a results database."""
    conn = sqlite3.connect(path, timeout=600)
    try:
        return {n: json.loads(v) for n, v in conn.execute("SELECT name, value FROM meta")}
    except sqlite3.OperationalError as err:
        if "no such table" in str(err):  # being created by another process
            return {}
        raise _corrupt(path, err) from None
    except (sqlite3.DatabaseError, ValueError) as err:  # ValueError: stored text that is not JSON
        raise _corrupt(path, err) from None
    finally:
        conn.close()


def _where(where: dict | None, key, table: str) -> tuple[str, list]:
    """A SQL filter on ``table``'s key columns ``key`` (each equal to a value) and its parameters;
    other fields are refused."""
    if not where:
        return "", []
    if not set(where) <= set(key):
        raise ValueError(f"rows can be selected by the key fields {tuple(key)} of {table!r} only, not {sorted(where)}")
    return " WHERE " + " AND ".join(f"{_quote(f)} = ?" for f in where), [_json(v) for v in where.values()]


def _read_database(path: Path, table: str, where: dict | None = None) -> tuple[dict, tuple[str, ...] | None, list[dict]]:
    """(meta, key of ``table``, rows, those whose key fields equal ``where``'s values if given);
    ({}, None, []) for a database another process is creating."""
    conn = sqlite3.connect(path, timeout=600)
    try:
        try:
            meta = {n: json.loads(v) for n, v in conn.execute("SELECT name, value FROM meta")}
        except sqlite3.OperationalError as err:
            if "no such table" in str(err):  # a run is starting: no tables yet
                return {}, None, []
            raise
        key = meta.get("table:" + table)
        if key is None:
            return meta, None, []
        clause, values = _where(where, key, table)
        rows = [json.loads(r[0]) for r in conn.execute(f"SELECT {ROW} FROM {_quote(table)}{clause} ORDER BY rowid", values)]
        return meta, tuple(key), rows
    except (sqlite3.DatabaseError, ValueError) as err:  # ValueError: stored text that is not JSON
        raise _corrupt(path, err) from None
    finally:
        conn.close()
