"""Data-parallel runs on CPU: shards of real processes (a gloo group as torchrun would start it,
and job-array shards), merged results equal to one process's, a killed rank resumed, and a
change of the number of shards."""

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from hooked_video import flow, save_video
from hooked_video.runtime.distributed import Shard, process_gpus
from hooked_video.runtime.store import DATABASE, load_results

KEY = list(flow.ROW_KEY)
FLOW_ARGS = ["--target", "cross-frame", "--target", "vql-to-ql", "--window", "1", "--select", "all", "--frames", "4",
             "--batch-size", "3"]  # fmt: skip


def test_shards_split_interleaved_and_parse():
    assert Shard.parse("1/3").take(list(range(8))) == [1, 4, 7]
    assert sum((Shard(i, 3).take(list(range(8))) for i in range(3)), []) != list(range(8))  # interleaved, not blocks
    assert sorted(sum((Shard(i, 3).take(list(range(8))) for i in range(3)), [])) == list(range(8))
    assert Shard(2, 4).folder == "shard-2-of-4" and process_gpus(2, rank=1) == [2, 3]
    for bad in ("3/3", "-1/2", "a/b", "1"):
        with pytest.raises(ValueError, match="shard"):
            Shard.parse(bad)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    entries = []
    for i in range(5):
        save_video(rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8), root / f"v{i}.mp4")
        entries.append({"id": f"clip{i}", "video": f"v{i}.mp4", "question": "which way does the ball move ?",
                        "candidates": ["left", "right"], "answer": i % 2, "task": "direction"})  # fmt: skip
    (root / "data.json").write_text(json.dumps(entries))
    return root / "data.json"


@pytest.fixture(scope="module")
def single(deep_paths, dataset, tmp_path_factory):
    """The rows of one process over all samples (the CLI, as a user runs it)."""
    out = tmp_path_factory.mktemp("single") / "run"
    done = cli(deep_paths, dataset, out)
    assert done.returncode == 0, done.stderr
    return flow.load(out)


def cli(deep_paths, data, out, *extra, env=None):
    args = [sys.executable, "-m", "hooked_video.app.cli", "flow", "--model", str(deep_paths["llava_next_video"]),
            "--data", str(data), "--out", str(out), *FLOW_ARGS, *extra]  # fmt: skip
    return subprocess.Popen(args, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True) if env is not None else subprocess.run(args, capture_output=True, text=True)  # fmt: skip


def same_rows(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert not got.duplicated(KEY).any()
    got, expected = (d.sort_values(KEY).reset_index(drop=True) for d in (got, expected))
    pd.testing.assert_frame_equal(got[expected.columns], expected, check_exact=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_launched_processes_equal_one(deep_paths, dataset, single, tmp_path):
    """As ``torchrun --nproc-per-node 2`` starts them: each rank takes its shard, process 0 waits
    for the other (a gloo barrier) and writes the summary of all samples."""
    out, port = tmp_path / "run", str(free_port())
    ranks = [cli(deep_paths, dataset, out, env={"RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2",
                                                "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port})  # fmt: skip
             for r in range(2)]
    for rank in ranks:
        _, err = rank.communicate(timeout=300)
        assert rank.returncode == 0, err[-2000:]
    assert sorted(p.parent.name for p in out.glob(f"*/{DATABASE}")) == ["shard-0-of-2", "shard-1-of-2"]
    same_rows(flow.load(out), single)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_samples"] == 5 and summary["knocked_out_samples"] == 5


KILLED_RANK = """
import sys
sys.path.insert(0, {tests!r})
from kill_switch import kill_after
from hooked_video import HookedVideoLLM, flow
from hooked_video.data import open_dataset
model = HookedVideoLLM.from_pretrained({model!r})
kill_after(model, {kill_at})
flow.sweep(model, open_dataset({data!r}), targets=["cross-frame", "vql-to-ql"], window=1, select="all", num_frames=4,
           batch_size=3, out={out!r}, shard={shard!r}, progress=False)
"""


def run_rank(deep_paths, data, out, shard, kill_at=0):
    script = KILLED_RANK.format(tests=os.path.dirname(__file__), model=str(deep_paths["llava_next_video"]), data=str(data),
                                out=str(out), shard=shard, kill_at=kill_at)  # fmt: skip
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)


def test_a_killed_shard_resumes_and_the_merge_equals_one_process(deep_paths, dataset, single, tmp_path):
    out = tmp_path / "run"
    assert run_rank(deep_paths, dataset, out, "0/2").returncode == 0
    killed = run_rank(deep_paths, dataset, out, "1/2", kill_at=4)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    partial = load_results(out)
    assert 0 < len(partial) < len(single)
    assert run_rank(deep_paths, dataset, out, "1/2").returncode == 0
    same_rows(flow.load(out), single)


def test_job_array_shards_then_a_merge_run_and_another_shard_count(deep_paths, dataset, single, tmp_path):
    """``--shard i/n`` jobs, then the same command without --shard: it computes nothing new (the
    kill hook would fire on any forward) and writes the summary of all samples; a later run
    with three shards finds every row done."""
    out = tmp_path / "run"
    for i in range(2):
        done = cli(deep_paths, dataset, out, "--shard", f"{i}/2")
        assert done.returncode == 0 and "shard" in done.stdout, done.stderr
        assert not (out / "summary.json").exists()
    assert run_rank(deep_paths, dataset, out, None, kill_at=1).returncode == 0  # no forward: nothing left to do
    merged = cli(deep_paths, dataset, out)
    assert merged.returncode == 0, merged.stderr
    same_rows(flow.load(out), single)
    assert json.loads((out / "summary.json").read_text())["n_samples"] == 5
    assert run_rank(deep_paths, dataset, out, "2/3", kill_at=1).returncode == 0
    stored = 0
    for db in out.glob(f"**/{DATABASE}"):
        with sqlite3.connect(db) as conn:
            if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'rows'").fetchone():
                stored += conn.execute("SELECT count(*) FROM rows").fetchone()[0]
    assert stored == len(single)  # each row in exactly one store


PRUNE_SHARD = """
from hooked_video import HookedVideoLLM, pathways
from hooked_video.data import open_dataset
model = HookedVideoLLM.from_pretrained({model!r})
spec = pathways.PathwaySpec(inter=(0, 1), v2q=(1, 2), q2l=(2, 3), n_layers=4)
pathways.evaluate(model, open_dataset({data!r}), spec, random_fraction="run", num_frames=4, out={out!r},
                  shard={shard!r}, progress=False)
"""


def test_pruning_shards_share_the_runs_random_fraction(deep_paths, dataset, tmp_path):
    """With random_fraction="run" every shard waits for all pathway rows, so the random baseline
    blocks the fraction one process would (over all samples)."""
    from hooked_video import HookedVideoLLM, pathways
    from hooked_video.data import open_dataset

    model = HookedVideoLLM.from_pretrained(deep_paths["llava_next_video"])
    spec = pathways.PathwaySpec(inter=(0, 1), v2q=(1, 2), q2l=(2, 3), n_layers=4)
    expected = pathways.evaluate(model, open_dataset(dataset), spec, random_fraction="run", num_frames=4, progress=False)
    out = tmp_path / "run"
    script = lambda shard: PRUNE_SHARD.format(model=str(deep_paths["llava_next_video"]), data=str(dataset),  # noqa: E731
                                              out=str(out), shard=shard)  # fmt: skip
    ranks = [subprocess.Popen([sys.executable, "-c", script(f"{i}/2")], stderr=subprocess.PIPE, text=True) for i in range(2)]
    for rank in ranks:
        _, err = rank.communicate(timeout=300)
        assert rank.returncode == 0, err[-2000:]
    rows = load_results(out, "random").sort_values("sample_id").reset_index(drop=True)
    assert rows.random_fraction.nunique() == 1
    assert rows.random_fraction[0] == pytest.approx(expected.rows.random_fraction[0], abs=1e-12)
    assert rows.random_pred.tolist() == expected.rows.sort_values("sample_id").random_pred.tolist()
