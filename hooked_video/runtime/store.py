"""A transactional, keyed results store: one SQLite database per results folder.

    with ResultStore("runs/a", "sweep", settings=config, fingerprint=fingerprint(samples),
                     key=("sample_id", "target", "condition", "layer"),
                     keys={"baseline": ("sample_id",)}) as store:
        done = store.done("rows")                 # {(sample_id, target, condition, layer), ...}
        store.add("rows", new_rows)               # one transaction; keys already stored are skipped
    df = load_results("runs/a")                   # a DataFrame (old JSONL folders too)

``folder/results.sqlite`` holds one table per named table ("rows", "baseline", ...): each row
as JSON text plus its key columns under a UNIQUE constraint, so a key is stored at most once
however often a row is recomputed (after a crash, or by two ranks). A batch is written in one
transaction: a killed process leaves whole batches only. The WAL journal and a busy timeout let
several processes of one machine write to the same folder at once. Keep the folder on a local
disk: SQLite's WAL mode does not work on network file systems; runs on several machines should
each write their own folder, read back together with ``load_results([folder, ...])``.

A ``meta`` table holds the run's kind, settings and data fingerprint: opening the store with
other ones raises ``ResultsMismatchError``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Mapping, Sequence


__all__ = ["FolderStore", "ResultStore", "ResultsCorruptError", "ResultsMismatchError", "check_samples", "fingerprint", "load_results", "export", "open_store",
           "sample_fingerprint", "DATABASE", "model_identity", "ResultsBusyError", "lock_folder"]

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
    return json.dumps(value, separators=(",", ":"), default=_plain)


def _plain(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} {value!r} cannot be stored: results and settings must be JSON-able")


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


class ResultStore:
    """Keyed, append-only tables of result rows in ``folder/results.sqlite``.

    Args:
        folder: the results folder (created if needed; files it holds are left alone).
        kind: what produced the results (e.g. "sweep"); a store of another kind is refused.
        settings: the run's settings (JSON-able); a store written with others is refused.
        fingerprint: the data's ``fingerprint(samples)`` (of the whole dataset, the same on every
            rank); a store of other data is refused. None: not checked (nor recorded).
        key: the fields that identify a row, for every table not named in ``keys``.
        keys: per-table keys, e.g. ``{"baseline": ("sample_id",)}``.
        resume: False deletes the database files (only those) and starts over. With several
            processes, let one open with resume=False before the others open the store.
        timeout: seconds to wait for another process's write lock before failing.
    """

    def __init__(self, folder: str | os.PathLike, kind: str = "results", settings: Mapping | None = None,
                 fingerprint: str | None = None, key: Sequence[str] = ("sample_id",),
                 keys: Mapping[str, Sequence[str]] | None = None, resume: bool = True,
                 timeout: float = 600.0) -> None:  # fmt: skip
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise NotADirectoryError(f"the results folder {self.folder} is a file; give a folder (new or one of this run)")
        self.kind, self.fingerprint = kind, fingerprint
        self.settings = _normal(dict(settings or {}))
        self._keys = {t: self._check_key(k) for t, k in (keys or {}).items()}
        self._default_key = self._check_key(key)
        self._tables: dict[str, tuple[str, ...]] = {}
        self.folder.mkdir(parents=True, exist_ok=True)
        if not resume:
            for name in FILES:
                (self.folder / name).unlink(missing_ok=True)
        self.timeout = timeout
        self._conn = sqlite3.connect(self.folder / DATABASE, timeout=min(timeout, WAIT_STEP), isolation_level=None)
        try:
            self._conn.execute(f"PRAGMA busy_timeout = {int(min(timeout, WAIT_STEP) * 1000)}")
            self._retry_locked(lambda: self._conn.execute("PRAGMA journal_mode = WAL"), timeout)
            self._conn.execute("PRAGMA synchronous = FULL")  # a committed batch survives a power cut too
            with self._transaction():
                self._check_meta()
        except sqlite3.DatabaseError as err:
            self._conn.close()
            raise _corrupt(self.folder / DATABASE, err) from None
        except BaseException:
            self._conn.close()
            raise

    # -- public API -------------------------------------------------------------------------

    def key(self, table: str) -> tuple[str, ...]:
        """The fields that identify a row of ``table``."""
        return self._keys.get(table, self._default_key)

    def tables(self) -> list[str]:
        """The tables that hold rows."""
        return [r[0][len("table:"):] for r in self._conn.execute("SELECT name FROM meta WHERE name LIKE 'table:%'")]

    def done(self, table: str) -> set[tuple]:
        """The keys stored in ``table``, as tuples in the order of its key fields."""
        if not self._exists(table):
            return set()
        columns = ", ".join(_quote(f) for f in self._table(table))
        rows = self._conn.execute(f"SELECT {columns} FROM {_quote(table)}")
        return {tuple(_hashable(json.loads(v)) for v in r) for r in rows}

    def rows(self, table: str) -> list[dict]:
        """The rows of ``table``, in the order they were stored."""
        if not self._exists(table):
            return []
        self._table(table)  # checks the key
        return [json.loads(r[0]) for r in self._conn.execute(f"SELECT {ROW} FROM {_quote(table)} ORDER BY rowid")]

    def add(self, table: str, rows: Iterable[Mapping]) -> int:
        """Store ``rows`` in one transaction; rows whose key is already stored are skipped.
        Returns the number of rows stored."""
        fields = self.key(table)
        records = []
        for row in rows:
            missing = [f for f in fields if f not in row]
            if missing:
                raise ValueError(f"a row for table {table!r} lacks its key field(s) {missing}: {dict(row)}")
            records.append([_json(row[f]) for f in fields] + [_json(dict(row))])
        if not records:
            return 0
        with self._transaction():
            fields = self._table(table, create=True)
            before = self._conn.total_changes
            columns = ", ".join([_quote(f) for f in fields] + [ROW])
            marks = ", ".join("?" * (len(fields) + 1))
            self._conn.executemany(f"INSERT OR IGNORE INTO {_quote(table)} ({columns}) VALUES ({marks})", records)
            return self._conn.total_changes - before

    def close(self) -> None:
        """Close the database connection."""
        self._conn.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ResultStore({str(self.folder)!r}, kind={self.kind!r})"

    # -- internals --------------------------------------------------------------------------

    @staticmethod
    def _check_key(key: Sequence[str]) -> tuple[str, ...]:
        key = (key,) if isinstance(key, str) else tuple(key)
        if not key or any(not isinstance(f, str) or f == ROW for f in key) or len(set(key)) != len(key):
            raise ValueError(f"a key is one or more distinct field names (not {ROW!r}), got {key!r}")
        return key

    @staticmethod
    def _retry_locked(statement, timeout: float) -> None:
        """Run ``statement``, retrying while the database is locked: switching a new database to
        WAL while another process does the same fails at once instead of waiting."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return statement()
            except sqlite3.OperationalError as err:
                if "locked" not in str(err) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    @contextmanager
    def _transaction(self):
        """BEGIN IMMEDIATE (take the write lock at once) ... COMMIT, or ROLLBACK on an error. While
        another process holds the lock: one warning that says so, then ResultsBusyError after
        ``timeout`` seconds."""
        start, warned = time.monotonic(), False
        while True:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                break
            except sqlite3.OperationalError as err:
                if "locked" not in str(err) and "busy" not in str(err):
                    raise
                if not warned:
                    warnings.warn(f"waiting for the write lock of {self.folder / DATABASE}, which another process holds; "
                                  f"giving up after {self.timeout:.0f} s", stacklevel=3)  # fmt: skip
                    warned = True
                waited = time.monotonic() - start
                if waited >= self.timeout:
                    raise ResultsBusyError(
                        f"gave up after {waited:.0f} s waiting for the write lock of {self.folder / DATABASE}: another "
                        "process holds it (a writer stopped with Ctrl-Z, or a stuck file system?); stop it, or run "
                        "again when it is done"
                    ) from None  # fmt: skip
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def _check_meta(self) -> None:
        self._conn.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
        meta = {n: json.loads(v) for n, v in self._conn.execute("SELECT name, value FROM meta")}
        if not meta:
            mine = {"format": FORMAT, "kind": self.kind, "settings": self.settings, "fingerprint": self.fingerprint}
            self._conn.executemany("INSERT INTO meta VALUES (?, ?)", [(n, _json(v)) for n, v in mine.items()])
            return
        where = f"{self.folder} holds results of"
        advice = "use another folder, or resume=False to delete them and start over."
        if meta.get("format") == 1:
            raise ResultsMismatchError(f"{where} hooked-video 0.2 (store format 1), which knew models by their name and "
                                       f"videos by their path, so this version cannot tell whether they are the ones "
                                       f"given now; {advice}")  # fmt: skip
        if meta.get("format") != FORMAT:
            raise ResultsMismatchError(f"{where} store format {meta.get('format')}, not {FORMAT}; {advice}")
        if meta["kind"] != self.kind:
            raise ResultsMismatchError(f"{where} a {meta['kind']!r} run, not {self.kind!r}; {advice}")
        differences = _differences(meta["settings"], self.settings)
        if differences:
            raise ResultsMismatchError(f"{where} a run with other settings ({'; '.join(differences)}); {advice}")
        if self.fingerprint is not None:
            if meta["fingerprint"] is None:
                self._conn.execute("UPDATE meta SET value = ? WHERE name = 'fingerprint'", (_json(self.fingerprint),))
            elif meta["fingerprint"] != self.fingerprint:
                raise ResultsMismatchError(
                    f"{where} other samples (data fingerprint stored {meta['fingerprint'][:12]}, now "
                    f"{self.fingerprint[:12]}: the samples' ids, videos, questions, options or answers "
                    f"differ); {advice}"
                )

    def _exists(self, table: str) -> bool:
        return table in self._tables or self._conn.execute(
            "SELECT 1 FROM meta WHERE name = ?", ("table:" + table,)).fetchone() is not None  # fmt: skip

    def _table(self, table: str, create: bool = False) -> tuple[str, ...]:
        """The key fields of ``table``, checked against the stored ones; created if asked."""
        if table in self._tables:
            return self._tables[table]
        if not _NAME.match(table) or table == "meta":
            raise ValueError(f"table names are identifiers other than 'meta', got {table!r}")
        fields = self.key(table)
        stored = self._conn.execute("SELECT value FROM meta WHERE name = ?", ("table:" + table,)).fetchone()
        if stored is None:
            if create:  # not cached: the transaction creating it may yet roll back
                columns = ", ".join(f"{_quote(f)} TEXT NOT NULL" for f in fields)
                unique = ", ".join(_quote(f) for f in fields)
                self._conn.execute(f"CREATE TABLE {_quote(table)} ({columns}, {ROW} TEXT NOT NULL, UNIQUE ({unique}))")
                self._conn.execute("INSERT INTO meta VALUES (?, ?)", ("table:" + table, _json(list(fields))))
            return fields
        if tuple(json.loads(stored[0])) != fields:
            raise ResultsMismatchError(
                f"table {table!r} of {self.folder} is keyed by {json.loads(stored[0])}, not {list(fields)}; "
                "open the store with the same key, use another folder, or resume=False to start over."
            )
        self._tables[table] = fields
        return fields


# -- data fingerprint -------------------------------------------------------------------------


def _sample_record(item, index: int) -> list:
    get = item.get if isinstance(item, Mapping) else (lambda name, default=None: getattr(item, name, default))
    options = get("options", get("candidates"))
    options = list(options) if options is not None else None
    answer = get("answer")
    if isinstance(answer, str) and options and answer in options:
        answer = options.index(answer)
    video = get("video", get("frames"))
    record = [str(get("id", index)), get("task", ""), _video_identity(video), get("start"), get("end"),
              get("question"), options, answer]  # fmt: skip
    short = get("short", "error")
    return record if short == "error" else [*record, {"short_windows": short}]  # other frames for short windows


def sample_fingerprint(item, index: int = 0) -> str:
    """A stable hash of one sample: its id (default: ``index``), task, video (by content: a file's
    size and a hash of its first and last MiB, wherever it lies; a hash of the pixels of in-memory
    frames), start/end, short-window handling, question, options and answer (an option's text
    counts as its index). Accepts ``Sample``s, objects with those attributes (a VideoPrompt's
    ``frames`` stand for its video) and dicts."""
    return hashlib.sha256(_json(_sample_record(item, index)).encode()).hexdigest()


def fingerprint(items: Iterable) -> str:
    """A stable hash of all the samples (see ``sample_fingerprint``), in order."""
    digest = hashlib.sha256()
    for index, item in enumerate(items):
        digest.update(_json(_sample_record(item, index)).encode() + b"\n")
    return digest.hexdigest()


def check_samples(store, samples: Iterable[tuple[str, object]]) -> None:
    """Record each (sample id, sample)'s fingerprint in the store's ``samples`` table, and refuse
    samples whose id the store already holds with other data (another dataset, or an edited
    one): results are keyed by sample id and must never mix. New ids simply join the run."""
    fingerprints = {str(sample_id): sample_fingerprint(item) for sample_id, item in samples}
    stored = {row["sample_id"]: row["fingerprint"] for row in store.rows("samples")}
    changed = [sample_id for sample_id, value in fingerprints.items() if stored.get(sample_id, value) != value]
    if changed:
        more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
        raise ResultsMismatchError(
            f"{store.folder} holds results of other samples under the ids {changed[:3]}{more} (their video, question, "
            "options or answer differ from the data given now); use another folder, or resume=False to start over."
        )
    store.add("samples", [{"sample_id": i, "fingerprint": f} for i, f in fingerprints.items() if i not in stored])


class FolderStore:
    """The store an analysis writes (its own ``ResultStore``: the folder's, or a shard's
    subfolder's) seen together with the folder's other stores, read-only: rows any of them
    holds count as done, so shards of a data-parallel run, and a rerun with another number of
    shards or none, never compute or store a row twice. Other stores are looked up on every
    read (shards start at different times)."""

    def __init__(self, own: ResultStore, root: Path) -> None:
        self.own, self.root = own, Path(root)
        self._checked: set[Path] = set()
        self.peers()

    @property
    def folder(self) -> Path:
        return self.own.folder

    def peers(self) -> list[Path]:
        """The folder's other result databases, each checked to hold the same kind of run."""
        found = []
        for peer in _databases(self.root):
            if peer.parent.resolve() == self.own.folder.resolve():
                continue
            if peer not in self._checked:
                meta = _read_meta(peer)
                if not meta:  # another process is creating it right now
                    continue
                mine = {"kind": self.own.kind, "settings": self.own.settings}
                differences = _differences({"kind": meta.get("kind"), "settings": meta.get("settings")}, mine)
                if differences:
                    raise ResultsMismatchError(f"{peer} holds a run with other settings ({'; '.join(differences)}); "
                                               "use another folder for this run")  # fmt: skip
                self._checked.add(peer)
            found.append(peer)
        return found

    def key(self, table: str) -> tuple[str, ...]:
        """The key columns of ``table``."""
        return self.own.key(table)

    def _peer_rows(self, table: str) -> list[dict]:
        return [row for peer in self.peers() for row in _read_database(peer, table)[2]]

    def rows(self, table: str) -> list[dict]:
        """The rows of ``table`` in every store of the folder, each key once (own rows first)."""
        merged: dict = {}
        key = self.key(table)
        for row in self.own.rows(table) + self._peer_rows(table):
            merged.setdefault(tuple(_json(row.get(f)) for f in key), row)
        return list(merged.values())

    def done(self, table: str) -> set[tuple]:
        """Keys of ``table`` already stored by this shard or any peer shard."""
        key = self.key(table)
        peer_keys = {tuple(_hashable(_normal(row.get(f))) for f in key) for row in self._peer_rows(table)}
        return self.own.done(table) | peer_keys

    def add(self, table: str, rows: Iterable[Mapping]) -> int:
        """Store rows in this shard's database; returns how many were new."""
        return self.own.add(table, rows)

    def close(self) -> None:
        """Close this shard's database (and let go of the folder's lock)."""
        self.own.close()
        lock = getattr(self, "lock", None)
        if lock is not None:
            lock.close()


class ResultsBusyError(RuntimeError):
    """Another process is writing the results folder that was to be started over."""


LOCK = ".hooked-video.lock"


def lock_folder(folder: Path, exclusive: bool = False):
    """An open lock file on the results folder (``folder/.hooked-video.lock``): every process that
    writes the folder (its own store or a shard's) holds it shared for as long as its store is
    open; starting over (``resume=False``) needs it alone, without waiting, else
    ``ResultsBusyError``. The system drops the lock when its process ends, even killed. None where
    file locks do not exist (Windows)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - no flock on Windows
        return None
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"the results folder {folder} is a file; give a folder (new or one of this run)")
    folder.mkdir(parents=True, exist_ok=True)
    handle = open(folder / LOCK, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB if exclusive else fcntl.LOCK_SH)
    except BlockingIOError:
        handle.close()
        raise ResultsBusyError(f"{folder} is being written by another process (it holds {folder / LOCK}); starting "
                               "over (--fresh, resume=False) would delete its results under it: let it finish or "
                               "stop it, then run again") from None  # fmt: skip
    return handle


def _delete_results(folder: Path) -> None:
    """The database files of ``folder`` and of its shards' subfolders (nothing else)."""
    for database in [folder / DATABASE, *folder.glob(f"*/{DATABASE}")]:
        for name in FILES:
            (database.parent / name).unlink(missing_ok=True)


def open_store(folder, kind: str, settings: Mapping, samples: Iterable[tuple[str, object]], key: Sequence[str],
               keys: Mapping[str, Sequence[str]] | None = None, resume: bool = True, shard=None) -> FolderStore:  # fmt: skip
    """The results store of an analysis over ``samples`` ((id, sample) pairs) in ``folder``: its
    own database (``folder/results.sqlite``, or ``folder/<shard.folder>/`` for a shard of a
    data-parallel run) seen with the folder's other ones, the samples checked (``check_samples``)."""
    folder = Path(folder)
    if shard is not None and not resume:
        raise ValueError("resume=False (--fresh) cannot be combined with shards: delete the folder's results (or use a "
                         "new folder) before launching the shards")  # fmt: skip
    own_folder = folder / shard.folder if shard is not None else folder
    lock = lock_folder(folder, exclusive=not resume)
    try:
        if not resume:  # alone in the folder now: its shards' stores go too, or their rows would come back
            _delete_results(folder)
            if lock is not None:
                import fcntl

                fcntl.flock(lock, fcntl.LOCK_SH)  # a writer like the others from here on
        own = ResultStore(own_folder, kind, settings=settings, key=key, keys={"samples": ("sample_id",), **(keys or {})})
    except BaseException:
        if lock is not None:
            lock.close()
        raise
    try:
        store = FolderStore(own, folder)
        store.lock = lock
        check_samples(store, samples)
    except BaseException:
        own.close()
        if lock is not None:
            lock.close()
        raise
    return store


def _video_identity(video):
    if video is None:
        return None
    if isinstance(video, (str, os.PathLike)):
        return _file_identity(Path(video))
    if hasattr(video, "detach"):  # a torch tensor
        video = video.detach().cpu().numpy()
    if hasattr(video, "tobytes") and hasattr(video, "dtype"):  # a numpy array
        import numpy as np

        video = np.ascontiguousarray(video)
        return {"array": hashlib.sha256(video.tobytes()).hexdigest(), "shape": list(video.shape),
                "dtype": str(video.dtype)}  # fmt: skip
    if hasattr(video, "tobytes") and hasattr(video, "mode"):  # a PIL image
        return {"image": hashlib.sha256(video.tobytes()).hexdigest(), "size": list(video.size), "mode": video.mode}
    if isinstance(video, (list, tuple)):
        return [_video_identity(v) for v in video]
    raise TypeError(f"cannot fingerprint a video given as {type(video).__name__}")


_ENDS = 1 << 20  # bytes hashed at each end of a file


def _file_identity(path: Path) -> dict:
    """A file by content: its size and a hash of its first and last MiB (a moved, copied or touched
    file is the same file; a re-encoded or edited one is not). A missing file: its name."""
    try:
        size = path.stat().st_size
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            digest.update(f.read(_ENDS))
            if size > 2 * _ENDS:
                f.seek(size - _ENDS)
            digest.update(f.read(_ENDS))
    except OSError:
        return {"missing": path.name}
    return {"size": size, "ends": digest.hexdigest()}


def model_identity(model) -> str:
    """What a model computes with, by content (its name and folder do not count): a hash of its
    config and of every parameter's name, shape, dtype and a strided sample of its values (the
    first, last and about a thousand values in between). Weights rebuilt or fine-tuned under the
    same name differ; the same weights under another name or path are the same model."""
    import torch

    hf = getattr(model, "hf_model", model)
    config = {k: v for k, v in hf.config.to_dict().items()
              if k not in ("_name_or_path", "name_or_path", "transformers_version", "_commit_hash")}  # fmt: skip
    digest = hashlib.sha256(_json(config).encode())
    for name, param in hf.named_parameters():
        flat = param.detach().reshape(-1)
        sample = torch.cat([flat[:64], flat[:: max(1, flat.numel() // 1024)], flat[-64:]]).float().cpu()
        digest.update(f"{name}{tuple(param.shape)}{param.dtype}".encode() + sample.numpy().tobytes())
    return "weights " + digest.hexdigest()[:24]


# -- reading back -----------------------------------------------------------------------------


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
    except sqlite3.DatabaseError as err:
        raise _corrupt(path, err) from None
    finally:
        conn.close()


def _read_database(path: Path, table: str) -> tuple[dict, tuple[str, ...] | None, list[dict]]:
    """(meta, key of ``table``, rows); ({}, None, []) for a database another process is creating."""
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
        rows = [json.loads(r[0]) for r in conn.execute(f"SELECT {ROW} FROM {_quote(table)} ORDER BY rowid")]
        return meta, tuple(key), rows
    except sqlite3.DatabaseError as err:
        raise _corrupt(path, err) from None
    finally:
        conn.close()


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
