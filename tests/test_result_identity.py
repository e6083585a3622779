"""A results folder knows its model and its data by content: the same weights or videos under another
name, path or mtime resume; other weights under the same name, or the same videos sampled otherwise
(short windows repeated), are refused, naming what differs."""

import json
import os
import shutil
import sqlite3

import numpy as np
import pytest

from hooked_video import HookedVideoLLM, flow, save_video
from hooked_video.data import MCQADataset
from hooked_video.runtime.store import DATABASE, ResultsMismatchError, load_results, model_identity
from hooked_video.zoo.tiny import build_tiny


def dataset(folder, n=2, frames=16):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    entries = []
    for i in range(n):
        save_video(rng.integers(0, 256, (frames, 32, 32, 3), dtype=np.uint8), folder / f"v{i}.mp4", fps=4)
        entries.append({"id": f"clip{i}", "video": str(folder / f"v{i}.mp4"), "question": "which way does the ball move ?",
                        "candidates": ["left", "right"], "answer": "right", "task": "direction",
                        "start": 0.0, "end": 1.5})  # fmt: skip
    (folder / "data.json").write_text(json.dumps(entries))
    return folder / "data.json"


def sweep(model, data, out, **kwargs):
    return flow.sweep(model, MCQADataset(data, **kwargs), targets=["cross-frame"], window=1, select="all",
                      num_frames=4, out=out, progress=False)  # fmt: skip


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny("llava_next_video", tmp_path_factory.mktemp("m") / "tiny")


def test_the_same_weights_under_another_path_resume(tiny, tmp_path):
    data = dataset(tmp_path / "d")
    first = sweep(HookedVideoLLM.from_pretrained(tiny), data, tmp_path / "out")
    copy = shutil.copytree(tiny, tmp_path / "elsewhere" / "renamed")
    again = sweep(HookedVideoLLM.from_pretrained(copy), data, tmp_path / "out")
    assert len(again) == len(first) == len(load_results(tmp_path / "out"))


def test_other_weights_under_the_same_name_are_refused(tiny, tmp_path):
    data = dataset(tmp_path / "d")
    folder = shutil.copytree(tiny, tmp_path / "model")
    before = HookedVideoLLM.from_pretrained(folder)
    sweep(before, data, tmp_path / "out")
    build_tiny("llava_next_video", folder, seed=7)  # re-downloaded or retrained, same folder
    after = HookedVideoLLM.from_pretrained(folder)
    assert model_identity(after) != model_identity(before)
    with pytest.raises(ResultsMismatchError, match=r"other settings \(model: stored 'weights [0-9a-f]+', now 'weights"):
        sweep(after, data, tmp_path / "out")


def test_a_moved_and_touched_dataset_resumes(tiny, tmp_path):
    data = dataset(tmp_path / "d")
    model = HookedVideoLLM.from_pretrained(tiny)
    first = sweep(model, data, tmp_path / "out")
    moved = tmp_path / "moved"
    shutil.move(tmp_path / "d", moved)
    entries = json.loads((moved / "data.json").read_text())
    for entry in entries:
        entry["video"] = entry["video"].replace(str(tmp_path / "d"), str(moved))
        os.utime(entry["video"], (1, 1))  # touched
    (moved / "data.json").write_text(json.dumps(entries))
    assert len(sweep(model, moved / "data.json", tmp_path / "out")) == len(first)


def test_short_windows_repeated_are_other_samples(tiny, tmp_path):
    """In a window of num_frames frames or fewer "repeat" samples other frames than the default (which
    refuses such windows), so a folder made with one is never resumed by the other."""
    data = dataset(tmp_path / "d")
    model = HookedVideoLLM.from_pretrained(tiny)
    sweep(model, data, tmp_path / "out", short_windows="repeat")
    with pytest.raises(ResultsMismatchError, match="other samples"):
        sweep(model, data, tmp_path / "out")


def test_a_folder_of_0_2_says_why_it_cannot_resume(tiny, tmp_path):
    data = dataset(tmp_path / "d")
    model = HookedVideoLLM.from_pretrained(tiny)
    sweep(model, data, tmp_path / "out")
    with sqlite3.connect(tmp_path / "out" / DATABASE) as conn:
        conn.execute("UPDATE meta SET value = '1' WHERE name = 'format'")
    with pytest.raises(ResultsMismatchError, match="hooked-video 0.2 .* knew models by their name"):
        sweep(model, data, tmp_path / "out")


# ----- starting over (--fresh, resume=False) ----------------------------------------------------
def _open(folder, resume=True, shard=None):
    from hooked_video.runtime.store import open_store

    return open_store(folder, "demo", {"a": 1}, [("s0", {"id": "s0", "video": None})], key=("sample_id",),
                      resume=resume, shard=shard)  # fmt: skip


def test_starting_over_deletes_the_shards_stores_too(tmp_path):
    from hooked_video.runtime.distributed import Shard

    for index in range(2):
        store = _open(tmp_path, shard=Shard(index, 2))
        store.add("rows", [{"sample_id": f"s{index}", "v": index}])
        store.close()
    notes = tmp_path / "shard-0-of-2" / "notes.txt"
    notes.write_text("mine")
    assert len(load_results(tmp_path)) == 2
    store = _open(tmp_path, resume=False)
    assert store.rows("rows") == [] and store.done("rows") == set()
    store.close()
    assert load_results(tmp_path).empty and notes.read_text() == "mine"  # only database files go


def test_starting_over_is_refused_while_another_process_writes(tmp_path):
    from hooked_video.runtime.store import ResultsBusyError

    writer = _open(tmp_path)  # a run still writing (another open of the lock file conflicts as another process would)
    writer.add("rows", [{"sample_id": "s0", "v": 1}])
    with pytest.raises(ResultsBusyError, match=f"{tmp_path} is being written by another process"):
        _open(tmp_path, resume=False)
    reader = _open(tmp_path)  # resuming beside it is fine
    assert reader.done("rows") == {("s0",)}
    reader.close()
    writer.close()
    _open(tmp_path, resume=False).close()  # once it is done, starting over works
    assert load_results(tmp_path).empty


# ----- waiting, and reading while others write -------------------------------------------------
def test_a_held_write_lock_is_announced_and_given_up_on(tmp_path):
    import time

    from hooked_video.runtime.store import ResultsBusyError, ResultStore

    ResultStore(tmp_path, "demo").close()
    holder = sqlite3.connect(tmp_path / DATABASE, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # a writer stopped in the middle of a batch
    start = time.monotonic()
    with pytest.warns(UserWarning, match=f"waiting for the write lock of {tmp_path / DATABASE}.*giving up after 1 s"):
        with pytest.raises(ResultsBusyError, match=r"gave up after [12] s waiting for the write lock"):
            ResultStore(tmp_path, "demo", timeout=1.0)
    assert time.monotonic() - start < 15
    holder.execute("ROLLBACK")
    store = ResultStore(tmp_path, "demo", timeout=1.0)  # free again
    store.close()


def test_a_shard_waiting_for_the_others_says_so_and_gives_up(tmp_path, capsys):
    from hooked_video.runtime.distributed import Shard, wait_for_rows

    store = _open(tmp_path, shard=Shard(0, 2))
    store.add("rows", [{"sample_id": "s0"}])
    with pytest.raises(TimeoutError, match=r"gave up after 0 s waiting for the other shards' rows .*1 of 2 rows"):
        wait_for_rows(store, "rows", ["s0", "s1"], poll=0.01, timeout=0.05)
    out = capsys.readouterr().out
    assert "start the other shards with the same command and their --shard i/n" in out
    store.close()


def test_readers_skip_a_database_being_created_and_warn_of_missing_shards(tmp_path):
    from hooked_video.runtime.distributed import Shard

    store = _open(tmp_path, shard=Shard(0, 3))
    store.add("rows", [{"sample_id": "s0", "v": 1}])
    store.close()
    (tmp_path / "shard-1-of-3").mkdir()
    sqlite3.connect(tmp_path / "shard-1-of-3" / DATABASE).close()  # another shard has just created its file
    with pytest.warns(UserWarning, match=r"shard\(s\) \[1, 2\] of 3 have no results there"):
        rows = load_results(tmp_path)
    assert rows.to_dict("records") == [{"sample_id": "s0", "v": 1}]


def test_shards_of_other_data_are_not_read_as_one_run(tmp_path):
    from hooked_video.runtime.store import open_store
    from hooked_video.runtime.distributed import Shard

    from hooked_video.runtime.store import ResultStore

    store = open_store(tmp_path, "demo", {"a": 1}, [("s0", {"id": "s0", "video": None, "question": "which way ?"})],
                       key=("sample_id",), shard=Shard(0, 2))  # fmt: skip
    store.close()
    other = ResultStore(tmp_path / "shard-1-of-2", "demo", {"a": 1}, key=("sample_id",), keys={"samples": ("sample_id",)})
    other.add("samples", [{"sample_id": "s0", "fingerprint": "of another dataset"}])  # written elsewhere, copied in
    other.close()
    with pytest.raises(ResultsMismatchError, match="hold results of different data under the sample id 's0'"):
        load_results(tmp_path)


def test_a_run_fraction_of_other_samples_is_not_mixed_into_the_random_baseline(tiny, tmp_path):
    from hooked_video import pathways

    model = HookedVideoLLM.from_pretrained(tiny)
    spec = pathways.PathwaySpec(inter=(0, 0), v2q=(0, 1), q2l=(1, 1), n_layers=2)
    data = json.loads(dataset(tmp_path / "d", n=3).read_text())
    for entry, question in zip(data, ["which way does the ball move ?", "what is in this video ?", "how many ?"]):
        entry["question"] = question  # other prompt lengths: other retention per sample
    first = pathways.evaluate(model, data[:2], spec, random_fraction="run", num_frames=4, out=tmp_path / "out", progress=False)
    assert first.rows.random_fraction.nunique() == 1
    with pytest.raises(ResultsMismatchError, match=r"holds random-baseline rows that prune r = 0\.\d+ .* these samples give r ="):
        pathways.evaluate(model, data, spec, random_fraction="run", num_frames=4, out=tmp_path / "out", progress=False)


@pytest.mark.parametrize("environment, message", [
    ({"WORLD_SIZE": "abc"}, "WORLD_SIZE='abc' is not a whole number"),
    ({"WORLD_SIZE": "2", "RANK": "5"}, "RANK=5 is outside WORLD_SIZE=2"),
    ({"WORLD_SIZE": "2", "RANK": "-1"}, "RANK='-1' is not a whole number"),
])  # fmt: skip
def test_launcher_variables_that_make_no_sense_are_named(monkeypatch, environment, message):
    from hooked_video import InvalidInputError
    from hooked_video.runtime.distributed import Shard

    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(InvalidInputError, match=message):
        Shard.from_environment()


def test_rows_are_selected_by_key_fields_across_shards(tmp_path):
    from hooked_video.runtime.distributed import Shard
    from hooked_video.runtime.store import open_store

    def opened(shard):
        return open_store(tmp_path, "demo", {"a": 1}, [("s0", {"id": "s0", "video": None})], key=("sample_id",),
                          keys={"per_sample": ("name", "sample_id")}, shard=shard)  # fmt: skip

    first, second = opened(Shard(0, 2)), opened(Shard(1, 2))
    first.add("per_sample", [{"name": "a", "sample_id": "s0", "value": 1}, {"name": "b", "sample_id": "s0", "value": 2}])
    second.add("per_sample", [{"name": "a", "sample_id": "s1", "value": 3}, {"name": "a b", "sample_id": "s1", "value": 4}])
    assert [r["value"] for r in second.rows("per_sample", {"name": "a"})] == [3, 1]  # its own first, then the peers'
    assert [r["value"] for r in first.rows("per_sample", {"name": "a", "sample_id": "s1"})] == [3]
    assert len(first.rows("per_sample")) == 4
    with pytest.raises(ValueError, match="key fields"):
        first.rows("per_sample", {"value": 1})
    first.close()
    second.close()
