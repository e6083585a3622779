"""The SQLite results store: concurrent writers, a killed writer, mismatches, foreign files,
legacy JSONL folders and export, with real processes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hooked_video.data.mcqa import Sample
from hooked_video.runtime.store import ResultStore, ResultsMismatchError, export, fingerprint, load_results

ROOT = Path(__file__).resolve().parents[1]
# child processes import the store alone (not the package's models): they start in a blink
PRELUDE = f"""
import os, signal, sys, time, types
package = types.ModuleType("hooked_video")
package.__path__ = [{str(ROOT / "hooked_video")!r}]
sys.modules["hooked_video"] = package
from hooked_video.runtime.store import ResultStore
"""
KEY = ("sample_id", "target", "layer")
SETTINGS = {"window": 9, "layers": [0, 1, 2], "spec": {"rule": "vocab-argmax", "frames": 8}}


def row(i: int) -> dict:
    return {"sample_id": str(i // 8), "target": ["a", "b"][i % 2], "layer": i % 8 // 2, "value": i * 0.5}


def child(script: str, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", PRELUDE + script, *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


WRITER = """
folder, first, last, go = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
while not os.path.exists(go):
    time.sleep(0.001)
key = ("sample_id", "target", "layer")
with ResultStore(folder, "test", {"n": 1}, fingerprint="data", key=key) as store:
    added = 0
    for start in range(first, last, 7):
        added += store.add("rows", [{"sample_id": str(i // 8), "target": ["a", "b"][i % 2], "layer": i % 8 // 2,
                                     "value": i * 0.5} for i in range(start, min(start + 7, last))])
print(added)
"""


def test_concurrent_writers_store_each_key_once(tmp_path):
    go = tmp_path / "go"
    writers = [child(WRITER, tmp_path / "out", 0, 1200, go), child(WRITER, tmp_path / "out", 600, 1800, go)]
    time.sleep(0.3)  # both started and waiting: they open the new store and write at the same time
    go.touch()
    added = []
    for writer in writers:
        out, err = writer.communicate(timeout=60)
        assert writer.returncode == 0, err
        added.append(int(out))
    with ResultStore(tmp_path / "out", "test", {"n": 1}, fingerprint="data", key=KEY) as store:
        rows = store.rows("rows")
        assert len(rows) == sum(added) == 1800
        assert sorted(r["value"] for r in rows) == [i * 0.5 for i in range(1800)]
        assert store.done("rows") == {tuple(row(i)[k] for k in KEY) for i in range(1800)}


KILLED = """
folder, kill_in = sys.argv[1], int(sys.argv[2])
with ResultStore(folder, "test", {"n": 1}, key=("sample_id", "target", "layer"), keys={"baseline": ("sample_id",)}) as store:
    added = 0
    for batch in range(12):
        if batch == kill_in:  # die inside this batch's transaction, after some of its inserts ran
            steps = []
            store._conn.set_progress_handler(lambda: steps.append(1) or (len(steps) == 3 and os.kill(os.getpid(), signal.SIGKILL)), 5)
        rows = [{"sample_id": str(i // 8), "target": ["a", "b"][i % 2], "layer": i % 8 // 2, "value": i * 0.5}
                for i in range(batch * 16, batch * 16 + 16)]
        added += store.add("rows", rows)
        added += store.add("baseline", [{"sample_id": str(batch), "correct": batch % 3 == 0}])
print(added)
"""


def test_killed_writer_resumes_to_the_uninterrupted_result(tmp_path):
    killed = child(KILLED, tmp_path / "killed", 5)
    killed.communicate(timeout=60)
    assert killed.returncode == -signal.SIGKILL
    with ResultStore(tmp_path / "killed", "test", {"n": 1}, key=KEY, keys={"baseline": ("sample_id",)}) as store:
        assert len(store.rows("rows")) == 5 * 16 and len(store.rows("baseline")) == 5  # whole batches only
    for folder in ("killed", "whole"):  # resume the killed run; run another one uninterrupted
        run = child(KILLED, tmp_path / folder, -1)
        out, err = run.communicate(timeout=60)
        assert run.returncode == 0, err
        assert int(out) == (12 - 5) * 17 if folder == "killed" else 12 * 17
    stores = [ResultStore(tmp_path / f, "test", {"n": 1}, key=KEY, keys={"baseline": ("sample_id",)})
              for f in ("killed", "whole")]  # fmt: skip
    for table in ("rows", "baseline"):
        assert stores[0].rows(table) == stores[1].rows(table)
        assert stores[0].done(table) == stores[1].done(table)
    assert len(stores[0].rows("rows")) == 12 * 16
    for store in stores:
        store.close()


def test_add_is_atomic_and_idempotent(tmp_path):
    with ResultStore(tmp_path, "test", SETTINGS, key=KEY) as store:
        assert store.add("rows", [row(i) for i in range(10)]) == 10
        assert store.add("rows", [row(i) for i in range(5, 15)]) == 5
        with pytest.raises(ValueError, match="lacks its key field"):
            store.add("rows", [row(20), {"sample_id": "x"}])
        with pytest.raises(TypeError, match="JSON-able"):
            store.add("rows", [row(21), {**row(22), "value": object()}])
        assert len(store.rows("rows")) == 15  # neither failed batch stored a row
        store.add("rows", [{**row(30), "value": np.float32(1.5), "layer": np.int64(3), "probs": np.arange(2)}])
        assert store.rows("rows")[-1] == {**row(30), "value": 1.5, "layer": 3, "probs": [0, 1]}
        assert ("3", "a", 3) in store.done("rows")
        assert store.done("missing") == set() and store.rows("missing") == []


def test_settings_fingerprint_kind_and_key_mismatches_are_named(tmp_path):
    ResultStore(tmp_path, "sweep", SETTINGS, fingerprint="f1", key=KEY).close()
    with pytest.raises(ResultsMismatchError, match=r"window: stored 9, now 5.*resume=False"):
        ResultStore(tmp_path, "sweep", {**SETTINGS, "window": 5}, fingerprint="f1", key=KEY)
    with pytest.raises(ResultsMismatchError, match=r"spec\.frames: stored 8, now 16") as err:
        ResultStore(tmp_path, "sweep", {**SETTINGS, "spec": {"rule": "vocab-argmax", "frames": 16}}, "f1", KEY)
    assert "window" not in str(err.value) and "another folder" in str(err.value)
    with pytest.raises(ResultsMismatchError, match=r"extra: stored '<not set>', now 1"):
        ResultStore(tmp_path, "sweep", {**SETTINGS, "extra": 1}, fingerprint="f1", key=KEY)
    with pytest.raises(ResultsMismatchError, match="other samples.*fingerprint"):
        ResultStore(tmp_path, "sweep", SETTINGS, fingerprint="f2", key=KEY)
    with pytest.raises(ResultsMismatchError, match="'sweep' run, not 'lens'"):
        ResultStore(tmp_path, "lens", SETTINGS, fingerprint="f1", key=KEY)
    with ResultStore(tmp_path, "sweep", {**SETTINGS, "layers": (0, 1, 2)}, fingerprint=None, key=KEY) as store:
        store.add("rows", [row(0)])  # tuples equal lists; no fingerprint given: not checked
    with ResultStore(tmp_path, "sweep", SETTINGS, fingerprint="f1", key=("sample_id",)) as store:
        with pytest.raises(ResultsMismatchError, match="keyed by"):
            store.rows("rows")
    with ResultStore(tmp_path, "sweep", {**SETTINGS, "window": 5}, fingerprint="f2", key=KEY, resume=False) as store:
        assert store.rows("rows") == []


def test_fingerprint(tmp_path):
    video = tmp_path / "v.mp4"
    video.write_bytes(b"0" * 100)
    entry = {"id": "q1", "task": "t", "video": str(video), "question": "Why?", "options": ["x", "y"], "answer": 1}
    sample = Sample(id="q1", task="t", video=str(video), question="Why?", options=["x", "y"], answer=1)
    base = fingerprint([entry])
    assert base == fingerprint([sample]) == fingerprint([{**entry, "answer": "y"}])
    for change in ({"answer": 0}, {"question": "How?"}, {"options": ["x", "z"]}, {"id": "q2"}, {"task": "u"}):
        assert fingerprint([{**entry, **change}]) != base, change
    assert fingerprint([entry, entry]) != base
    os.utime(video, ns=(0, 12345))  # the same file touched: the same video (identity by content)
    assert fingerprint([entry]) == base
    video.write_bytes(b"0" * 99 + b"1")  # the same size, other bytes: another video
    assert fingerprint([entry]) != base
    video.write_bytes(b"0" * 100)
    assert fingerprint([{**entry, "short": "repeat"}]) != base  # short windows repeated sample other frames
    frames = np.zeros((4, 8, 8, 3), np.uint8)
    in_memory = fingerprint([{**entry, "video": frames}])
    assert in_memory == fingerprint([{**entry, "video": frames.copy()}])
    frames[0, 0, 0, 0] = 1
    assert fingerprint([{**entry, "video": frames}]) != in_memory


def test_resume_false_deletes_only_its_own_files(tmp_path):
    foreign = {"notes.jsonl": "my notes\n", "rows.jsonl": '{"old": 1}\n', "config.json": "{}", "sub/keep.txt": "x",
               "results.sqlite.bak": "mine"}  # fmt: skip
    for name, text in foreign.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    with ResultStore(tmp_path, "test", SETTINGS, key=KEY) as store:
        store.add("rows", [row(0)])
    with ResultStore(tmp_path, "test", {"other": True}, key=KEY, resume=False) as store:
        assert store.rows("rows") == []
    for name, text in foreign.items():
        assert (tmp_path / name).read_text() == text


def test_legacy_jsonl_folder_is_readable(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(SETTINGS))  # a folder as version 0.1 wrote it
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(row(i)) + "\n" for i in range(6)))
    (tmp_path / "baseline.jsonl").write_text(json.dumps({"sample_id": "0", "correct": True}) + "\n")
    with open(tmp_path / "rows.jsonl", "a") as f:
        f.write('{"sample_id": "torn')  # a killed writer's last line
    before = (tmp_path / "rows.jsonl").read_bytes()
    df = load_results(tmp_path)
    assert df.to_dict("records") == [row(i) for i in range(6)]
    assert df.attrs["settings"] == SETTINGS
    assert load_results(tmp_path, "baseline").to_dict("records") == [{"sample_id": "0", "correct": True}]
    assert (tmp_path / "rows.jsonl").read_bytes() == before  # reading leaves the files alone
    with pytest.raises(FileNotFoundError, match="no results"):
        load_results(tmp_path / "empty")


def test_shards_merge_with_each_key_once(tmp_path):
    for rank, span in enumerate([range(0, 40), range(30, 64)]):
        with ResultStore(tmp_path / "run" / f"node-{rank}", "test", SETTINGS, fingerprint="f", key=KEY) as store:
            store.add("rows", [row(i) for i in span])
    for source in (tmp_path / "run", [tmp_path / "run" / "node-0", tmp_path / "run" / "node-1"]):
        df = load_results(source)
        assert len(df) == 64 and not df.duplicated(list(KEY)).any()
        assert sorted(df.value) == [i * 0.5 for i in range(64)] and df.attrs["kind"] == "test"
    with ResultStore(tmp_path / "run" / "node-2", "test", {**SETTINGS, "window": 3}, fingerprint="f", key=KEY):
        pass
    with pytest.raises(ResultsMismatchError, match="window: stored 9, now 3"):
        load_results(tmp_path / "run")


def test_export_round_trips(tmp_path):
    rows = [{**row(i), "correct": i % 3 == 0, "new_answer": None if i % 4 else "B"} for i in range(20)]
    with ResultStore(tmp_path / "run", "test", SETTINGS, key=KEY, keys={"baseline": ("sample_id",)}) as store:
        store.add("rows", rows)
        store.add("baseline", [{"sample_id": "0", "probs": [0.25, 0.75]}])
    expected = pd.DataFrame(rows)
    export(tmp_path / "run", tmp_path / "rows.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "rows.parquet"), expected)
    export(tmp_path / "run", tmp_path / "rows.csv")
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "rows.csv", dtype={"sample_id": str}), expected)
    export(tmp_path / "run", tmp_path / "baseline.parquet", table="baseline")
    assert pd.read_parquet(tmp_path / "baseline.parquet").probs[0].tolist() == [0.25, 0.75]
    with pytest.raises(ValueError, match="parquet"):
        export(tmp_path / "run", tmp_path / "rows.xlsx")


def test_a_damaged_page_found_after_opening_names_the_file(tmp_path):
    """SQLite finds a damaged page only when it reads it, long after the store was opened: the
    error still names the database file."""
    from hooked_video.runtime.store import DATABASE, ResultsCorruptError

    with ResultStore(tmp_path, "sweep", key=("i",)) as store:
        store.add("rows", [{"i": i, "text": "x" * 200} for i in range(400)])
    database = tmp_path / DATABASE
    data = bytearray(database.read_bytes())
    page = 4096
    assert len(data) > 20 * page
    data[-10 * page : -2 * page] = b"\xff" * (8 * page)  # pages of the rows table, not the schema or meta
    database.write_bytes(bytes(data))
    with pytest.raises(ResultsCorruptError, match=f"{database} is not a readable results database"):
        with ResultStore(tmp_path, "sweep", key=("i",)) as store:
            store.rows("rows")
    with pytest.raises(ResultsCorruptError, match=f"{database} is not a readable results database"):
        load_results(tmp_path)
