"""Sharded pathway searches: the shards of one search (discover, refine, size_curve) go in step
through their results folder, each sample scored and ranked by one shard only, and return what
one process returns; a rerun without shards computes nothing. One-sample searches are shared
out instead, and a shard that fails stops the others."""

import json
import os
import sqlite3
import subprocess
import sys

import pandas as pd
import pytest
import torch
from test_discovery import one_per_task, toy  # noqa: F401  (fixtures: one question per temporal task, toy-planted)

from hooked_video import discovery
from hooked_video.analysis.discovery import scoring
from hooked_video.analysis.pathways import InvalidInputError
from hooked_video.app.cli import main
from hooked_video.data.mcqa import identify_all
from hooked_video.runtime.distributed import Shard
from hooked_video.runtime.store_format import ROW

ARGS = ["discover", "--model", "toy-planted", "--method", "atp", "--seeds", "1", "--preset", "toy-planted",
        "--stop-at-faithful", "--refine", "frame-pairs", "--refine-points", "4", "--size-curve"]  # fmt: skip


def _data(tmp_path, samples) -> str:
    path = tmp_path / "data.json"
    path.write_text(json.dumps([{"video": str(s.video), "question": s.question, "options": list(s.options),
                                 "answer": s.answer, "task": s.task, "id": f"q{i}"} for i, s in enumerate(samples)]))  # fmt: skip
    return str(path)


def _stored(database) -> dict[str, set]:
    """table -> the sample ids of its rows, in one results database."""
    with sqlite3.connect(database) as conn:
        tables = [name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {t: {json.loads(r)["sample_id"] for (r,) in conn.execute(f'SELECT {ROW} FROM "{t}"')}
                for t in tables if t in ("rows", "per_sample")}  # fmt: skip


def _figures(summary: dict) -> dict:
    """What a search found, without the run's timings."""
    return {k: summary[k] for k in ("found", "path", "curve", "refine", "size_curve")}


def test_shards_of_one_search_find_what_one_process_finds(tmp_path, one_per_task):
    data = _data(tmp_path, one_per_task)
    alone, sharded = tmp_path / "alone", tmp_path / "sharded"
    assert main([*ARGS, "--data", data, "--out", str(alone)]) == 0
    env = {**os.environ, "HOOKED_VIDEO_THREADS": str(torch.get_num_threads())}  # the same arithmetic as this process
    shards = [subprocess.Popen([sys.executable, "-m", "hooked_video", *ARGS, "--data", data, "--out", str(sharded),
                                "--shard", f"{i}/2"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
              for i in range(2)]  # fmt: skip
    try:
        printed = [shard.communicate(timeout=600)[0] for shard in shards]
    finally:
        for shard in shards:
            shard.kill()
    assert [shard.returncode for shard in shards] == [0, 0], printed
    assert "shard 1/2 done: shard 0 holds the same results" in printed[1]
    ids = [f"q{i}" for i in range(len(one_per_task))]
    for i in range(2):  # each sample's rows and estimates were computed by its own shard only
        stored = _stored(sharded / f"shard-{i}-of-2" / "results.sqlite")
        assert stored["rows"] == stored["per_sample"] == set(ids[i::2])
    ours, theirs = (json.loads((folder / "summary.json").read_text()) for folder in (sharded, alone))  # shard 0's
    assert json.dumps(_figures(ours), sort_keys=True) == json.dumps(_figures(theirs), sort_keys=True)
    assert main([*ARGS, "--data", data, "--out", str(sharded)]) == 0  # without shards: everything read back
    assert not any(_stored(sharded / "results.sqlite").values()), "computed again rows the shards had stored"
    again = json.loads((sharded / "summary.json").read_text())
    assert json.dumps(_figures(again), sort_keys=True) == json.dumps(_figures(theirs), sort_keys=True)


def _no_waiting(*args, **kwargs):
    raise AssertionError("a shard of one-sample searches waited for another")


def test_per_sample_searches_are_shared_out_and_bad_shards_refused(toy, one_per_task, tmp_path, capsys, monkeypatch):
    with pytest.raises(InvalidInputError, match="give out="):
        discovery.discover(toy, one_per_task, shard="0/2", progress=False)
    with pytest.raises(InvalidInputError, match="give out="):
        discovery.size_curve(toy, one_per_task, shard=Shard(1, 2), progress=False)
    for gates in (dict(), dict(by="sample")):
        with pytest.raises(InvalidInputError, match="gates"):
            discovery.discover_each(toy, one_per_task, method="gates", shard="0/2", out=tmp_path / "g", progress=False,
                                    **{"by": "task", **gates})  # fmt: skip
    data = _data(tmp_path, one_per_task)
    for by in ("model", "sample"):
        assert main([*ARGS[:4], "gates", "--by", by, "--data", data, "--out", str(tmp_path / "c"), "--shard", "0/2"]) == 2
        assert "--method gates" in capsys.readouterr().err
    assert main([*ARGS, "--data", data, "--out", str(tmp_path / "d"), "--shard", "0/2", "--fresh"]) == 2
    assert "--fresh cannot be combined with shards" in capsys.readouterr().err
    # one search per sample: each shard runs its share of them whole, waiting for nobody
    monkeypatch.setattr(scoring, "wait_for", _no_waiting)
    out = tmp_path / "each"
    kwargs = dict(by="sample", method="atp", full_curve=False, progress=False)
    shared = [discovery.discover_each(toy, one_per_task, out=out, shard=f"{i}/2", **kwargs) for i in range(2)]
    ids = [sample_id for sample_id, _, _ in identify_all(one_per_task)]
    assert [list(mine) for mine in shared] == [ids[0::2], ids[1::2]]
    alone = discovery.discover_each(toy, one_per_task, **kwargs)
    for sample_id, found in {**shared[0], **shared[1]}.items():
        assert found.spec == alone[sample_id].spec
        pd.testing.assert_frame_equal(found.path, alone[sample_id].path)


def test_a_failed_shard_stops_the_others_waiting(tmp_path):
    from hooked_video.runtime.distributed import shard_failed, wait_for
    from hooked_video.runtime.store import open_store

    def opened(shard):
        return open_store(tmp_path, "demo", {"a": 1}, [("s0", {"id": "s0", "video": None})], key=("sample_id",),
                          shard=shard)  # fmt: skip

    first, second = opened(Shard(0, 2)), opened(Shard(1, 2))
    with pytest.raises(ZeroDivisionError):
        with shard_failed(first.folder, Shard(0, 2)):
            1 / 0
    with pytest.raises(RuntimeError, match="(?s)stopped with an error.*ZeroDivisionError: division by zero"):
        wait_for(second, "rows", {"s0"}, lambda r: r["sample_id"], "why", poll=0.01, timeout=60)
    with shard_failed(first.folder, Shard(0, 2)):  # a new start clears the note
        pass
    with pytest.raises(TimeoutError):
        wait_for(second, "rows", {"s0"}, lambda r: r["sample_id"], "why", poll=0.01, timeout=0.05)
    first.close()
    second.close()
