"""Sharded pathway searches: the shards of one search (discover, refine, size_curve) go in step
through their results folder, each sample scored and ranked by one shard only, and return what
one process returns; the run that merges them computes nothing."""

import json
import os
import sqlite3
import subprocess
import sys

import pytest
import torch
from test_discovery import one_per_task, toy  # noqa: F401  (fixtures: one question per temporal task, toy-planted)

from hooked_video import discovery
from hooked_video.analysis.pathways import InvalidInputError
from hooked_video.app.cli import main
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
    for i, shard in enumerate(shards):
        printed = shard.communicate(timeout=600)[0]
        assert shard.returncode == 0, printed
        assert f"shard {i}/2 done" in printed and not (sharded / "summary.json").exists()
    ids = [f"q{i}" for i in range(len(one_per_task))]
    for i in range(2):  # each sample's rows and estimates were computed by its own shard only
        stored = _stored(sharded / f"shard-{i}-of-2" / "results.sqlite")
        assert stored["rows"] == stored["per_sample"] == set(ids[i::2])
    assert main([*ARGS, "--data", data, "--out", str(sharded)]) == 0  # the merge: everything read back
    merged = sharded / "results.sqlite"
    assert not any(_stored(merged).values()), "the merge computed rows the shards had stored"
    ours, theirs = (json.loads((folder / "summary.json").read_text()) for folder in (sharded, alone))
    assert json.dumps(_figures(ours), sort_keys=True) == json.dumps(_figures(theirs), sort_keys=True)


def test_per_sample_searches_are_shared_out_and_bad_shards_refused(toy, one_per_task, tmp_path, capsys):
    with pytest.raises(InvalidInputError, match="give out="):
        discovery.discover(toy, one_per_task, shard="0/2", progress=False)
    with pytest.raises(InvalidInputError, match="give out="):
        discovery.size_curve(toy, one_per_task, shard=Shard(1, 2), progress=False)
    with pytest.raises(InvalidInputError, match="gates"):
        discovery.discover(toy, one_per_task, method="gates", shard="0/2", out=tmp_path / "g", progress=False)
    data = _data(tmp_path, one_per_task)
    assert main([*ARGS[:4], "gates", "--data", data, "--out", str(tmp_path / "c"), "--shard", "0/2"]) == 2
    assert "--method gates" in capsys.readouterr().err
    assert main([*ARGS, "--data", data, "--out", str(tmp_path / "d"), "--shard", "0/2", "--fresh"]) == 2
    assert "--fresh cannot be combined with shards" in capsys.readouterr().err
    # one search per sample: each shard runs its share of them whole, waiting for nobody
    out = tmp_path / "each"
    mine = discovery.discover_each(toy, one_per_task, by="sample", method="atp", full_curve=False, out=out,
                                   shard="1/2", progress=False)  # fmt: skip
    ids = [sample_id for sample_id, _, _ in discovery.search.identify_all(one_per_task)]
    assert list(mine) == ids[1::2]
    alone = discovery.discover_each(toy, one_per_task, by="sample", method="atp", full_curve=False, progress=False)
    for sample_id, found in mine.items():
        assert found.spec == alone[sample_id].spec
        assert found.path.drop(columns="faithful").equals(alone[sample_id].path.drop(columns="faithful"))
