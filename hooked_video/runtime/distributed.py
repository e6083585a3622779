"""Data-parallel runs: which samples a process takes, and which GPUs it uses.

One process per GPU (or per group of GPUs holding one split model) runs an analysis over its
shard of the samples: sample ``j`` belongs to shard ``j % count`` (interleaved, so every shard
gets every task). Launch with ``torchrun --nproc-per-node N ...`` or ``accelerate launch
--num_processes N ...`` (their RANK / WORLD_SIZE / LOCAL_RANK variables set the shard and the
GPU), or run ``--shard i/n`` as one job of a cluster job array. Each shard writes its own
results store under the output folder (``shard-{i}-of-{n}/``); reading the folder merges them,
and a shard that is rerun resumes, also with another number of shards.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence, TypeVar

from hooked_video.core.checks import InvalidInputError

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (0-based)."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 1:
            raise InvalidInputError(f"a shard count must be an integer >= 1, got {self.count!r}")
        if isinstance(self.index, bool) or not isinstance(self.index, int) or not 0 <= self.index < self.count:
            raise InvalidInputError(f"shard index must be in 0..{self.count - 1}, got {self.index!r}")

    @classmethod
    def parse(cls, text: str) -> "Shard":
        """From ``"i/n"`` (0-based i), e.g. ``"3/8"``."""
        try:
            index, count = (int(part) for part in str(text).split("/"))
        except ValueError:
            raise InvalidInputError(f"a shard is written i/n (e.g. 0/4, 0-based), got {text!r}") from None
        return cls(index, count)

    @classmethod
    def from_environment(cls) -> "Shard | None":
        """The shard of this process under torchrun / accelerate (RANK, WORLD_SIZE), or None."""
        world = environment_number("WORLD_SIZE", 1)
        if world <= 1:
            return None
        rank = environment_number("RANK", 0)
        if not 0 <= rank < world:
            raise InvalidInputError(f"RANK={rank} is outside WORLD_SIZE={world} (ranks 0..{world - 1}); a variable left "
                                    "from another launch? unset RANK and WORLD_SIZE, or launch with torchrun")  # fmt: skip
        return cls(rank, world)

    @property
    def folder(self) -> str:
        """The shard's results subfolder."""
        return f"shard-{self.index}-of-{self.count}"

    def take(self, items: Sequence[T]) -> list[T]:
        """This shard's items: every ``count``-th from ``index``."""
        return list(items[self.index :: self.count])

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def environment_number(name: str, default: int) -> int:
    """A whole number from the environment variable ``name`` (``default`` when unset)."""
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    if not value.isdigit():
        raise InvalidInputError(f"the environment variable {name}={value!r} is not a whole number; launchers set it "
                                f"(torchrun, accelerate launch): unset it, or set it to a number")  # fmt: skip
    return int(value)


def resolve_shard(shard: "Shard | str | None") -> "Shard | None":
    """A Shard from a Shard, "i/n", "auto" (the launcher's, or None alone) or None."""
    if shard is None or isinstance(shard, Shard):
        return shard
    if shard == "auto":
        return Shard.from_environment()
    return Shard.parse(shard)


def local_rank() -> int:
    """This process's rank on its host (LOCAL_RANK of torchrun / accelerate; 0 alone)."""
    return environment_number("LOCAL_RANK", 0)


def process_gpus(gpus_per_process: int = 1, rank: int | None = None) -> list[int]:
    """The GPU indices of this process: ``gpus_per_process`` consecutive ones from
    ``local_rank * gpus_per_process``."""
    rank = local_rank() if rank is None else rank
    first = rank * gpus_per_process
    return list(range(first, first + gpus_per_process))


def set_threads(requested: int | None = None) -> int:
    """torch's CPU threads: ``requested``, else $HOOKED_VIDEO_THREADS, else the cores this process
    may use divided among the processes of a launcher on this host (torch's own default counts
    every core of the machine, and threads that outnumber free cores slow each other down)."""
    import torch

    count = requested or environment_number("HOOKED_VIDEO_THREADS", 0) or default_threads()
    torch.set_num_threads(count)
    return count


def usable_cores() -> int:
    """Cores this process may run on (its affinity), not every core of the machine."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_threads() -> int:
    """The usable cores divided among the processes of a launcher on this host."""
    return max(1, usable_cores() // max(1, environment_number("LOCAL_WORLD_SIZE", 1)))


def max_memory_for(gpus: Sequence[int], per_gpu: str | None = None) -> dict:
    """An accelerate ``max_memory`` that lets a split model use only ``gpus`` (and no CPU)."""
    import torch

    budget = {}
    for index in range(torch.cuda.device_count()):
        if index in gpus:
            budget[index] = per_gpu or f"{torch.cuda.get_device_properties(index).total_memory // 2**20 - 2048}MiB"
        else:
            budget[index] = 0
    budget["cpu"] = 0
    return budget


def barrier() -> bool:
    """Wait for every process of a torchrun / accelerate launch (a gloo group on CPU, NCCL's on
    GPU is not needed: this only synchronises the end of a run). Returns False when there is no
    launcher (a lone process or a job array shard)."""
    import torch.distributed as dist

    if environment_number("WORLD_SIZE", 1) <= 1 or "MASTER_ADDR" not in os.environ:
        return False
    if not dist.is_initialized():
        dist.init_process_group("gloo")
    dist.barrier()
    return True


#: How long a shard waits for the other shards' rows before giving up (seconds; shards of a job
#: array may start hours apart).
WAIT_FOR_SHARDS = 6 * 3600


def wait_for(store, table: str, wanted: set, key_of, why: str, where: dict | list[dict] | None = None,
             poll: float = 5.0, timeout: float = WAIT_FOR_SHARDS) -> list[dict]:  # fmt: skip
    """The rows of ``table`` whose ``key_of(row)`` is in ``wanted``, once the folder's shards hold
    them all (polling the store, first every 0.05 s, then less often, up to every ``poll`` s:
    shards that wait for each other at every step of a search should not sleep long). ``why``
    says, in the one message printed while waiting, why this shard needs them and how not to;
    ``where`` narrows the rows read (``store.rows``; a list: the union of several). A shard whose
    run failed (``shard_failed``) stops the wait at once (RuntimeError).
    Gives up after ``timeout`` seconds (TimeoutError)."""
    import time

    deadline, announced, pause = time.monotonic() + timeout, False, min(0.05, poll)
    selections = where if isinstance(where, list) else [where]
    while True:
        rows = [r for selection in selections for r in store.rows(table, selection) if key_of(r) in wanted]
        if len({key_of(r) for r in rows}) == len(wanted):
            return rows
        waiting = f"the other shards' {table} rows in {store.folder.parent} ({len(rows)} of {len(wanted)} rows stored)"
        failed = failed_shards(store.root, since=getattr(store, "opened_at", 0.0))
        if failed:
            raise RuntimeError(f"{failed[0]}: the shard stopped with an error, so this one cannot go on: fix it and "
                               f"start the shards again (their stored rows are kept). It said:\n{failed[0].read_text()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up after {timeout:.0f} s waiting for {waiting}: start the missing shards (the same "
                               "command with their --shard i/n), or run without shards")  # fmt: skip
        if not announced and pause >= poll:  # quiet while the shards keep in step
            print(f"waiting for {waiting}: {why}; giving up after {timeout:.0f} s", flush=True)
            announced = True
        time.sleep(pause)
        pause = min(poll, pause * 2)


def wait_for_rows(store, table: str, sample_ids: Sequence[str], poll: float = 5.0,
                  timeout: float = WAIT_FOR_SHARDS) -> list[dict]:  # fmt: skip
    """The rows of ``table`` for all ``sample_ids`` across the folder's shards (``wait_for``), for
    prune's random fraction over the whole run."""
    return wait_for(store, table, set(sample_ids), lambda row: row["sample_id"],
                    "this shard needs every sample's rows before it can go on (prune's random fraction over the whole "
                    "run); start the other shards with the same command and their --shard i/n, or use "
                    "--random-fraction sample or a number", poll=poll, timeout=timeout)  # fmt: skip


#: The file a shard of a search that waits for the others leaves in its folder when it fails.
FAILED = "FAILED.txt"


def failed_shards(root, since: float = 0.0) -> list:
    """The failure notes of the shards of the results folder ``root`` (``shard_failed``) written
    after ``since`` (a time.time(); older ones are of an earlier run)."""
    from pathlib import Path

    return sorted(note for note in Path(root).glob(f"shard-*-of-*/{FAILED}") if note.stat().st_mtime >= since)


class shard_failed:
    """Context of a shard's part of a search whose shards wait for each other: an error inside
    leaves a note in the shard's folder, which stops the others' waits (``wait_for``) instead of
    letting them poll for hours; a clean start removes an old note."""

    def __init__(self, folder, shard: Shard | None) -> None:
        from pathlib import Path

        self.note = Path(folder) / FAILED if shard is not None else None
        if self.note is not None:
            self.note.unlink(missing_ok=True)

    def __enter__(self) -> "shard_failed":
        return self

    def __exit__(self, kind, error, trace) -> None:
        if self.note is not None and error is not None:  # an interruption too: the others would wait for hours
            self.note.write_text(f"{kind.__name__}: {error}")
