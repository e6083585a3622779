"""Killed and concurrent runs of the three long analyses (flow, lens, prune) end with exactly the
rows of an uninterrupted run: each row once, with the same values, in every table they write.

Each run is a real child process forked from this one (it inherits the loaded model and imports
nothing, so it starts in a millisecond) that kills itself with SIGKILL at a seeded
pseudo-random "tick": a tick is one forward of a linear layer of the language model (or its
projector), or one SQLite progress callback of the results store, so kills land inside
forwards and inside store transactions alike. Before each killed run, the ticks the resumed run
has left are counted on a copy of the folder, and the kill point is drawn from the next tenth of
them: the ten kills spread over the whole analysis and every one lands. Ten killed runs resume
into the same folder, one more completes; then two processes run the same analysis into one new
folder at once.

Torch runs with one thread here: a process forked from one whose OpenMP pool has threads may
hang in its first parallel region, and the reference rows must come from the same arithmetic.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from hooked_video import flow, lens, pathways, save_video
from hooked_video.runtime import store as store_module
from hooked_video.data import Sample
from hooked_video.runtime.store import load_results

N_KILLS = 10
SQLITE_STEP = 5  # SQLite VM instructions per progress callback (one tick)
TIMEOUT = 120  # seconds a child may run

SPEC = pathways.PathwaySpec(inter=(1, 2), v2q=(0, 2), q2l=(2, 3), n_layers=4)


def run_flow(model, samples, out):
    flow.sweep(model, samples, targets=["cross-frame", "vql-to-ql"], window=3, select="all", out=out, batch_size=1,
               num_frames=4, progress=False)  # fmt: skip


def run_lens(model, samples, out):
    lens.run(model, samples, variant="unembed", norm="released", select="all", out=out, num_frames=4, progress=False)


def run_prune(model, samples, out):
    pathways.evaluate(model, samples, SPEC, random_fraction="run", seed=3, num_frames=4, out=out, progress=False)


#: analysis -> (run, {table: key fields}) for every table the analysis writes.
ANALYSES = {
    "flow": (run_flow, {"rows": flow.ROW_KEY, "baseline": ("sample_id",), "samples": ("sample_id",)}),
    "lens": (run_lens, {"baseline": ("sample_id",), "lens": ("sample_id", "layer"),
                        "answer_probability": ("sample_id", "layer", "option"), "samples": ("sample_id",)}),
    "prune": (run_prune, {"rows": ("sample_id",), "random": ("sample_id",), "samples": ("sample_id",)}),
}  # fmt: skip


@pytest.fixture(scope="module")
def model(deep_paths, one_thread):
    from hooked_video import HookedVideoLLM

    return HookedVideoLLM.from_pretrained(deep_paths["llava_next_video"])


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    """Three questions about real mp4 files (decoded in every run)."""
    folder = tmp_path_factory.mktemp("videos")
    rng = np.random.default_rng(7)
    options = [["the ball falls", "the cup moves"], ["left", "right", "up"], ["red", "green"]]
    return [
        Sample(id=f"q{i}", video=str(save_video(rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8), folder / f"{i}.mp4")),
               question="what happens first ?", options=options[i], answer=i % len(options[i]), task=f"t{i % 2}")
        for i in range(3)
    ]  # fmt: skip


# ----- instrumentation: ticks, and a kill at a chosen tick --------------------------------------
class _Sqlite:
    """The sqlite3 module as the results store sees it, with a progress callback on every connection."""

    def __init__(self, tick) -> None:
        self._tick = tick

    def __getattr__(self, name):
        return getattr(sqlite3, name)

    def connect(self, *args, **kwargs):
        conn = sqlite3.connect(*args, **kwargs)
        conn.set_progress_handler(self._tick, SQLITE_STEP)
        return conn


@contextmanager
def ticking(model, kill: tuple[str, int] | None = None):
    """Count ticks of each kind ("forward": linear-layer forwards; "store": store progress
    callbacks); SIGKILL this process at ``kill`` = (kind, tick), saying first on stderr where.
    Yields the counts."""
    count = {"forward": 0, "store": 0}

    def tick(kind: str = "store") -> int:
        count[kind] += 1
        if (kind, count[kind]) == kill:
            os.write(2, f"killed at {kind} tick {count[kind]}\n".encode())
            os.kill(os.getpid(), signal.SIGKILL)
        return 0  # a progress handler returning 0 lets SQLite go on

    def forward_hook(module, args, output) -> None:  # None: the layer's output unchanged
        tick("forward")

    # the HF modules behind the bridge: their hooks also fire in the engine's and the fast path's
    # shallow copies of them, which share their hook dicts
    linears = [m for name, m in model.hf_model.named_modules() if isinstance(m, torch.nn.Linear) and "vision" not in name]
    handles = [m.register_forward_hook(forward_hook) for m in linears]
    real = store_module.sqlite3
    store_module.sqlite3 = _Sqlite(tick)
    try:
        yield count
    finally:
        store_module.sqlite3 = real
        for handle in handles:
            handle.remove()


# ----- child processes ---------------------------------------------------------------------------
def start(analysis: str, model, samples, out: Path, kill: tuple[str, int] | None, log: Path, go: int | None = None) -> int:
    """Fork a child that runs ``analysis`` into ``out`` (killing itself at ``kill``, see
    ``ticking``); with ``go`` it first waits for a byte on that pipe. Returns its pid."""
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:  # the child: never return into pytest
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        if go is not None:
            os.read(go, 1)
        with ticking(model, kill):
            ANALYSES[analysis][0](model, samples, out)
        code = 0
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        os._exit(code)


def wait(pid: int, log: Path) -> int:
    """The child's exit status (negative: the signal that ended it)."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"the child {pid} ran past {TIMEOUT} s; its output:\n{log.read_text()[-3000:]}")
        time.sleep(0.005)


# ----- comparison --------------------------------------------------------------------------------
def stored(out: Path, analysis: str) -> dict[str, dict[tuple, str]]:
    """Per table: key -> the row as canonical JSON (NaN compares equal to NaN), each key once."""
    tables = {}
    for table, key in ANALYSES[analysis][1].items():
        try:
            df = load_results(out, table)
        except FileNotFoundError:
            tables[table] = {}
            continue
        rows = df.to_dict("records")
        keyed = {tuple(_json(r[f]) for f in key): _json(r) for r in rows}
        assert len(keyed) == len(rows), f"{table}: a key is stored more than once"
        tables[table] = keyed
    return tables


def _json(value) -> str:
    return json.dumps(value, sort_keys=True, default=lambda v: v.item() if hasattr(v, "item") else repr(v))


def stored_count(out: Path) -> int:
    """Rows in every table of the folder's own database, read straight from SQLite."""
    db = out / store_module.DATABASE
    if not db.exists():
        return 0
    conn = sqlite3.connect(db)
    try:
        names = [r[0][len("table:"):] for r in conn.execute("SELECT name FROM meta WHERE name LIKE 'table:%'")]
        return sum(conn.execute(f'SELECT COUNT(*) FROM "{n}"').fetchone()[0] for n in names)
    except sqlite3.OperationalError:  # killed before the meta table was committed
        return 0
    finally:
        conn.close()


def assert_same(got: dict, expected: dict) -> None:
    for table, rows in expected.items():
        assert rows, f"the uninterrupted run wrote no {table} rows"
        assert set(got[table]) == set(rows), f"{table}: keys differ"
        differing = [k for k in rows if got[table][k] != rows[k]]
        assert not differing, f"{table}: rows {differing[:3]} differ"


@pytest.fixture(scope="module")
def reference(model, samples, tmp_path_factory):
    """analysis -> its rows per table in an uninterrupted run, computed in-process (no hook, no tick)."""
    result = {}
    for analysis, (run, _) in ANALYSES.items():
        out = tmp_path_factory.mktemp(f"{analysis}-reference")
        run(model, samples, out)
        result[analysis] = stored(out, analysis)
    return result


def ticks_left(analysis: str, model, samples, out: Path, scratch: Path) -> int:
    """The ticks of each kind a run resuming ``out`` takes, counted in-process on a copy of the folder."""
    shutil.rmtree(scratch, ignore_errors=True)
    if out.exists():
        shutil.copytree(out, scratch)
    with ticking(model) as count:
        ANALYSES[analysis][0](model, samples, scratch)
    return count


@pytest.mark.parametrize("analysis", list(ANALYSES))
def test_killed_ten_times_then_resumed_gives_exactly_the_uninterrupted_rows(analysis, model, samples, reference,
                                                                            tmp_path):  # fmt: skip
    expected = reference[analysis]
    rng = random.Random(f"kills-{analysis}")
    out, log = tmp_path / "run", tmp_path / "child.log"
    kills, before = [], 0
    for i in range(N_KILLS):
        left = ticks_left(analysis, model, samples, out, tmp_path / "scratch")
        # alternately in a forward and in the store; a point in the next 1/(kills to go) of the
        # ticks left of that kind, so the kills spread over the whole run
        kind = ("forward", "store")[i % 2] if left["forward"] > 1 else "store"
        span = max(1, (left[kind] - 1) // (N_KILLS - i))
        choices = [k for k in range(1, span + 1) if (kind, k) not in kills] or list(range(1, span + 1))
        kill = (kind, rng.choice(choices))
        kills.append(kill)
        status = wait(start(analysis, model, samples, out, kill, log), log)
        assert status == -signal.SIGKILL, f"run killed at {kill} of {left} ended with {status}:\n{log.read_text()[-3000:]}"
        assert log.read_text().strip().splitlines()[-1] == f"killed at {kill[0]} tick {kill[1]}"
        now = stored_count(out)
        assert now >= before, f"a killed run lost rows stored before it (kills {kills})"
        before = now
    assert len(set(kills)) == N_KILLS and {kind for kind, _ in kills} == {"forward", "store"}, kills
    assert 0 < before < sum(len(rows) for rows in expected.values()), "the kills left nothing to resume"
    status = wait(start(analysis, model, samples, out, None, log), log)
    assert status == 0, log.read_text()[-3000:]
    assert_same(stored(out, analysis), expected)
    # and a rerun of the complete folder adds nothing
    assert wait(start(analysis, model, samples, out, None, log), log) == 0, log.read_text()[-3000:]
    assert stored_count(out) == sum(len(rows) for rows in expected.values())


@pytest.mark.parametrize("analysis", list(ANALYSES))
def test_two_concurrent_writers_store_each_row_once(analysis, model, samples, reference, tmp_path):
    expected = reference[analysis]
    out = tmp_path / "run"
    read, write = os.pipe()
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    try:
        pids = [start(analysis, model, samples, out, None, log, go=read) for log in logs]
        os.write(write, b"go")  # both are waiting: they open the new store and write at the same time
    finally:
        os.close(write)
        os.close(read)
    for pid, log in zip(pids, logs):
        assert wait(pid, log) == 0, log.read_text()[-3000:]
    assert_same(stored(out, analysis), expected)
    assert stored_count(out) == sum(len(rows) for rows in expected.values())
