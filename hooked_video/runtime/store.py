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

import json
import os
import sqlite3
import time
import warnings
import functools
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from hooked_video.runtime.identity import fingerprint, model_identity, sample_fingerprint
from hooked_video.runtime.results import export, load_results
from hooked_video.runtime.store_format import (
    _NAME,
    DATABASE,
    FILES,
    FORMAT,
    ROW,
    WAIT_STEP,
    ResultsCorruptError,
    ResultsMismatchError,
    _corrupt,
    _databases,
    _differences,
    _hashable,
    _json,
    _normal,
    _quote,
    _read_database,
    _read_meta,
    _where,
)

__all__ = ["DATABASE", "FolderStore", "ResultStore", "ResultsBusyError", "ResultsCorruptError", "ResultsMismatchError",
           "check_samples", "export", "fingerprint", "load_results", "lock_folder", "model_identity", "open_store",
           "sample_fingerprint"]  # fmt: skip


def _names_its_file(method):
    """``method`` of a ResultStore, with SQLite's "database disk image is malformed" and the like
    (found when a damaged page is read, long after the store was opened) naming the file."""

    @functools.wraps(method)
    def wrapped(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except sqlite3.DatabaseError as err:
            if isinstance(err, sqlite3.OperationalError) and ("locked" in str(err) or "busy" in str(err)):
                raise
            raise _corrupt(self.folder / DATABASE, err) from None

    return wrapped


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
        except (sqlite3.DatabaseError, ValueError, KeyError, TypeError) as err:
            self._conn.close()
            if isinstance(err, ResultsMismatchError):
                raise
            raise _corrupt(self.folder / DATABASE, err) from None
        except BaseException:
            self._conn.close()
            raise

    # -- public API -------------------------------------------------------------------------

    def key(self, table: str) -> tuple[str, ...]:
        """The fields that identify a row of ``table``."""
        return self._keys.get(table, self._default_key)

    @_names_its_file
    def tables(self) -> list[str]:
        """The tables that hold rows."""
        return [r[0][len("table:"):] for r in self._conn.execute("SELECT name FROM meta WHERE name LIKE 'table:%'")]

    @_names_its_file
    def done(self, table: str) -> set[tuple]:
        """The keys stored in ``table``, as tuples in the order of its key fields."""
        if not self._exists(table):
            return set()
        columns = ", ".join(_quote(f) for f in self._table(table))
        rows = self._conn.execute(f"SELECT {columns} FROM {_quote(table)}")
        return {tuple(_hashable(json.loads(v)) for v in r) for r in rows}

    @_names_its_file
    def rows(self, table: str, where: Mapping | None = None) -> list[dict]:
        """The rows of ``table``, in the order they were stored; with ``where`` ({key field:
        value}), only those whose key fields have those values."""
        if not self._exists(table):
            return []
        clause, values = _where(where, self._table(table), table)  # the key checked too
        rows = self._conn.execute(f"SELECT {ROW} FROM {_quote(table)}{clause} ORDER BY rowid", values)
        return [json.loads(r[0]) for r in rows]

    @_names_its_file
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
        self.opened_at = time.time()  # notes of failed peer shards older than this are of an earlier run
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

    def _peer_rows(self, table: str, where: Mapping | None = None) -> list[dict]:
        return [row for peer in self.peers() for row in _read_database(peer, table, where)[2]]

    def rows(self, table: str, where: Mapping | None = None) -> list[dict]:
        """The rows of ``table`` in every store of the folder, each key once (own rows first);
        ``where`` as ``ResultStore.rows``."""
        merged: dict = {}
        key = self.key(table)
        _where(where, key, table)  # refused here too: this shard may not hold the table yet
        for row in self.own.rows(table, where) + self._peer_rows(table, where):
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
