"""Videos decoded ahead, on background threads, while the current sample is analysed.

An analysis prepares its samples one at a time: decode the sampled frames of the video file
(PyAV or decord), then run the processor and tokenizer (``model.prepare``). Decoding takes
0.1-0.5 s for a 10-20 s 1080p clip (``benchmarks/results.md``), all of it on the CPU, while a
GPU would wait. ``PromptPreparer`` decodes the next samples' frames on worker threads (one per
sample ahead) while the caller analyses the current one: for a model on a GPU; on the CPU the
model's own threads use the cores, so by default it decodes when asked. The processor and
tokenizer still run on the caller's thread: a fast tokenizer is not safe to share between threads.

    with PromptPreparer(model, items, num_frames=8, wanted=lambda sample_id: ...) as preparer:
        for sample_id, task, item in items:
            prompt = preparer.prompt(sample_id)

The prompts are exactly those of ``to_prompt`` (the same frames, decoded by the same code); a
video that cannot be read raises its error when its sample is asked for, as without the thread.
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Sequence

import torch

from hooked_video.data.mcqa import Sample, to_prompt

#: Samples whose frames are decoded ahead of the one being analysed, for a model on a GPU.
DECODE_AHEAD = 2
#: The same for a model on the CPU, where decoding competes with the model for the same cores:
#: none by default (decode when asked).
DECODE_AHEAD_ON_CPU = 0


def default_ahead(model) -> int:
    """How many samples to decode ahead for ``model``: ``DECODE_AHEAD`` when it runs on a GPU (the
    caller's thread mostly waits for the GPU), ``DECODE_AHEAD_ON_CPU`` otherwise."""
    on_cpu = torch.device(getattr(model, "device", "cpu")).type == "cpu"
    return DECODE_AHEAD_ON_CPU if on_cpu else DECODE_AHEAD


def decodes_a_file(item) -> bool:
    """Whether preparing ``item`` reads a video file that can be decoded ahead: a Sample with a
    path (not in-memory frames or a VideoPrompt) whose class keeps Sample's own ``prepare``. A
    subclass's own ``frames_for`` / ``load_frames`` then runs on a worker thread."""
    return isinstance(item, Sample) and isinstance(item.video, (str, os.PathLike)) and type(item).prepare is Sample.prepare


class PromptPreparer:
    """VideoPrompts of ``items`` ((sample_id, task, item) triples, in the order they are asked
    for), with the frames of the next ``ahead`` wanted samples decoded in the background.

    Args:
        model: the HookedVideoLLM the prompts are for.
        items: the run's samples, as ``identify_all`` gives them.
        num_frames: frames sampled per video.
        wanted: which sample ids the caller will ask for (default: all); only those are decoded
            ahead, so a resumed run decodes nothing for the samples it skips.
        ahead: how many samples to decode ahead, each on its own thread (default:
            ``default_ahead(model)``; 0: none).
    """

    def __init__(self, model, items: Sequence[tuple[str, str, object]], num_frames: int | None,
                 wanted: Callable[[str], bool] | None = None, ahead: int | None = None) -> None:  # fmt: skip
        self.model, self.num_frames = model, num_frames
        self.ahead = default_ahead(model) if ahead is None else ahead
        self._items = [item for _, _, item in items]
        self._position = {sample_id: i for i, (sample_id, _, _) in enumerate(items)}
        self._queue = [i for i, (sample_id, _, item) in enumerate(items)
                       if decodes_a_file(item) and (wanted is None or wanted(sample_id))]  # fmt: skip
        self._next = 0  # the first entry of _queue not submitted yet
        self._pending: dict[int, Future] = {}
        self._pool = ThreadPoolExecutor(self.ahead, thread_name_prefix="hooked-video-decode") if self.ahead and self._queue else None
        self._submit_after(-1)  # the first ones decode while the caller sets up

    def prompt(self, sample_id: str):
        """The VideoPrompt of ``sample_id`` (its frames from the worker when decoded ahead)."""
        index = self._position[sample_id]
        future = self._pending.pop(index, None)
        for earlier in [i for i in self._pending if i < index]:  # asked for out of order or skipped
            self._pending.pop(earlier).cancel()
        self._submit_after(index)
        item = self._items[index]
        if future is None:
            return to_prompt(self.model, item, self.num_frames)
        return item.prepare(self.model, self.num_frames, decoded=future.result())

    def _submit_after(self, index: int) -> None:
        """Keep the ``ahead`` wanted samples after ``index`` decoding (or decoded)."""
        if self._pool is None:
            return
        while self._next < len(self._queue) and self._queue[self._next] <= index:
            self._next += 1
        while self._next < len(self._queue) and len(self._pending) < self.ahead:
            i = self._queue[self._next]
            self._pending[i] = self._pool.submit(self._items[i].frames_for, self.model, self.num_frames)
            self._next += 1

    def close(self) -> None:
        """Stop the workers; frames decoded for samples never asked for are dropped. A decode
        already under way finishes in the background (the interpreter waits for it at exit)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        self._pending.clear()

    def __enter__(self) -> "PromptPreparer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
