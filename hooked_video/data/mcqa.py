"""Multiple-choice video QA samples, and a generic dataset from a list of dicts or a JSON file.

A JSON file holds a list of entries ``{"video": path, "question": str, "options": [str, ...],
"answer": int | str, optional "id", "task", "start", "end"}``; ``candidates`` is accepted for
``options`` (TVBench's name). Video paths are relative to the file's folder (or ``video_root``).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

from hooked_video.core.checks import InvalidInputError, check_answer, check_options, check_question
from hooked_video.core.video import SHORT_WINDOWS, load_video
from hooked_video.data.layout import AnnotationError, read_json


def _window(entry: dict, where: str) -> tuple[float | None, float | None]:
    """The entry's (start, end) in seconds, checked."""
    bounds = []
    for key in ("start", "end"):
        value = entry.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0
                                  or not math.isfinite(value)):  # fmt: skip
            raise AnnotationError(f"{where}: {key} must be a non-negative number of seconds, got {value!r}")
        bounds.append(value)
    if None not in bounds and bounds[0] >= bounds[1]:
        raise AnnotationError(f"{where}: start {bounds[0]} is not before end {bounds[1]}")
    return bounds[0], bounds[1]


@dataclass
class Sample:
    """One multiple-choice question about a video.

    Attributes:
        id: unique identifier within its dataset (used as the key of result rows).
        video: a path, or in-memory frames ((T, H, W, 3) uint8 array or list of PIL images).
        question, options: the question and its answer options.
        answer: index of the true option.
        task: task name (for per-task summaries).
        start, end: optional window of the clip in seconds.
        short: windows of ``num_frames`` frames or fewer: "error" or "repeat" (the released
            code's rule; see ``video.segment_midpoints``).
    """

    id: str
    video: object
    question: str
    options: list[str]
    answer: int
    task: str = ""
    start: float | None = None
    end: float | None = None
    short: str = "error"
    extra: dict = field(default_factory=dict)

    def load_frames(self, num_frames: int | None = 8, sampling: str = "midpoints", with_times: bool = False):
        """The sampled frames, (T, H, W, 3) uint8, over [start, end] (see ``load_video``: segment
        midpoints, or ``sampling="uniform"``); with ``with_times``, (frames, their seconds)."""
        return load_video(self.video, num_frames=num_frames, start=self.start, end=self.end, short=self.short,
                          sampling=sampling, with_times=with_times)  # fmt: skip

    def frames_for(self, model, num_frames: int | None = 8):
        """(frames, their seconds) sampled by ``model``'s family's rule (``family.frame_sampling``)."""
        return self.load_frames(num_frames, model.family.frame_sampling, with_times=True)

    def prepare(self, model, num_frames: int | None = 8, decoded: tuple | None = None, **prepare_kwargs):
        """This sample as a VideoPrompt for ``model`` (frames sampled by the model family's rule;
        ``decoded``: what ``frames_for(model, num_frames)`` returned, if already called)."""
        frames, times = self.frames_for(model, num_frames) if decoded is None else decoded
        return model.prepare(frames, self.question, self.options, self.answer, num_frames=None,
                             **{"frame_times": times, **prepare_kwargs})  # fmt: skip


def sample_from_entry(entry: dict, index: int, source: str, video_root: Path | None, task: str = "",
                      short: str = "error", inside: Path | None = None) -> Sample:  # fmt: skip
    """Validate one annotation entry and build its Sample (errors name ``source`` and the entry).
    With ``inside``, the video path must stay in that folder (no absolute path, no ``..`` out of it;
    links inside it may point anywhere)."""
    where = f"{source}, entry {index!r}" if not isinstance(index, int) else f"{source}, entry {index}"
    if not isinstance(entry, dict):
        raise AnnotationError(f"{where}: expected an object, got {type(entry).__name__}")
    options = entry.get("options", entry.get("candidates"))
    missing = [k for k, v in (("video", entry.get("video")), ("question", entry.get("question")),
                              ("options", options), ("answer", entry.get("answer"))) if v is None]  # fmt: skip
    if missing:
        raise AnnotationError(f"{where}: missing field(s) {missing}")
    try:
        question = check_question(entry["question"], "question")
        options = check_options(options, "options")
        if not options:
            raise InvalidInputError("options is empty; a multiple-choice question needs at least 2")
        answer = check_answer(entry["answer"], options)
    except InvalidInputError as err:
        raise AnnotationError(f"{where}: {err}") from None
    start, end = _window(entry, where)
    video = entry["video"]
    if not isinstance(video, str):
        raise AnnotationError(f"{where}: video must be a file path (a string), got {type(video).__name__}")
    if not video.strip():
        raise AnnotationError(f"{where}: video is an empty path; give the video file")
    if inside is not None:
        _check_inside(video, video_root or inside, inside, where)
    if video_root is not None and not Path(video).is_absolute():
        video = str(video_root / video)
    _check_video_file(video, where)
    sample_id, task = entry.get("id", index), entry.get("task", task)
    _check_id_and_task(sample_id, task, where)
    return Sample(
        id=str(sample_id), video=video, question=question, options=options, answer=answer, task=task,
        start=start, end=end, short=short,
    )  # fmt: skip


def _check_inside(video: str, base: Path, folder: Path, where: str) -> None:
    """Refuse a video path that leaves ``folder`` (checked on the path's text, before any file is opened)."""
    joined = os.path.normpath(os.path.join(base, video))
    root = os.path.normpath(folder)
    if os.path.isabs(video) or os.path.commonpath([os.path.abspath(joined), os.path.abspath(root)]) != os.path.abspath(root):
        raise AnnotationError(f"{where}: video {video!r} points outside the dataset folder {folder}; keep the videos "
                              "inside it (a link inside it may point anywhere), or pass allow_outside=True")  # fmt: skip


def _check_video_file(video: str, where: str) -> None:
    """Refuse a video path that is empty, missing or a folder (errors name ``where``)."""
    if not video.strip():
        raise AnnotationError(f"{where}: video is an empty path; give the video file")
    if Path(video).is_dir():
        raise AnnotationError(f"{where}: video {video} is a folder, not a video file")
    if not Path(video).exists():
        raise AnnotationError(f"{where}: video file {video} does not exist")


def _check_id_and_task(sample_id, task, where: str) -> None:
    if not isinstance(sample_id, (str, int)) or isinstance(sample_id, bool):
        raise AnnotationError(f"{where}: id must be a string or an integer, got {type(sample_id).__name__} {sample_id!r}")
    if not isinstance(task, str):
        raise AnnotationError(f"{where}: task must be a string, got {type(task).__name__} {task!r}")


def check_short_windows(short_windows) -> str:
    """``short_windows`` if it is one of ``video.SHORT_WINDOWS``."""
    if short_windows not in SHORT_WINDOWS:
        raise InvalidInputError(f"short_windows must be one of {SHORT_WINDOWS}, got {short_windows!r}")
    return short_windows


def _annotation_file(path: Path) -> Path:
    """``path`` if it is an existing file (errors say what it is instead)."""
    if path.is_dir():
        raise IsADirectoryError(f"annotation file {path} is a folder; give the JSON file of the entries")
    if not path.is_file():
        raise FileNotFoundError(f"annotation file {path} does not exist")
    return path


def open_questions(path: str | Path) -> list[dict]:
    """Free-form questions from a JSON list of ``{video, question, optional id, task, answer}``
    (video paths relative to the file), for the open-ended analysis; errors name the entry."""
    path = _annotation_file(Path(path))
    entries = read_json(path)
    if not isinstance(entries, list):
        raise AnnotationError(f"{path}: expected a list of entries")
    questions, first = [], {}
    for i, entry in enumerate(entries):
        where = f"{path}, entry {i}"
        if not isinstance(entry, dict) or not isinstance(entry.get("video"), str) or not isinstance(entry.get("question"), str):
            raise AnnotationError(f"{where}: needs a 'video' path and a 'question' string")
        try:
            check_question(entry["question"], "question")
        except InvalidInputError as err:
            raise AnnotationError(f"{where}: {err}") from None
        _check_id_and_task(entry.get("id", i), entry.get("task", ""), where)
        video = Path(entry["video"]) if Path(entry["video"]).is_absolute() else path.parent / entry["video"]
        _check_video_file(entry["video"] and str(video), where)
        sample_id = str(entry.get("id", i))
        if sample_id in first:
            raise AnnotationError(f"{where}: id {sample_id!r} is already the id of entry {first[sample_id]}; "
                                  "results are keyed by id, so give every question its own")  # fmt: skip
        first[sample_id] = i
        questions.append({**entry, "video": str(video), "id": sample_id, "task": entry.get("task", "")})
    return questions


def identify(item, index: int) -> tuple[str, str, object]:
    """(sample id, task, item) for a VideoPrompt (id = its index), a Sample, or a dict entry."""
    from hooked_video.model.prompt import VideoPrompt

    if isinstance(item, VideoPrompt):
        return str(index), "", item
    if isinstance(item, Mapping):
        item = sample_from_entry(dict(item), index, "<samples>", None)
    return str(item.id), item.task, item


def identify_all(samples: Iterable) -> list[tuple[str, str, object]]:
    """``identify`` every item, refusing duplicate sample ids (results are keyed by them)."""
    from hooked_video.core.checks import check_unique_ids

    items = [identify(item, index) for index, item in enumerate(samples)]
    check_unique_ids([sample_id for sample_id, _, _ in items])
    return items


def to_prompt(model, item, num_frames: int | None):
    """A VideoPrompt as is, or a Sample prepared for ``model``."""
    return item if hasattr(item, "token_map") else item.prepare(model, num_frames=num_frames)


class SampleList(Sequence[Sample]):
    """A list of samples plus the reasons of the entries that were skipped as invalid."""

    samples: list[Sample]
    skipped: list[str]

    def _report_skipped(self) -> None:
        if self.skipped:
            print(f"skipped {len(self.skipped)} invalid entries:\n  " + "\n  ".join(self.skipped))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i):
        return self.samples[i]

    def __iter__(self) -> Iterator[Sample]:
        return iter(self.samples)


class MCQADataset(SampleList):
    """Users' own multiple-choice data, from a list of dicts or a JSON file.

    Args:
        entries: a path to a JSON file holding a list of entries, or the list itself.
        video_root: folder that relative video paths are resolved against (default: the JSON
            file's folder, or the current folder for a list).
        skip_invalid: report and skip malformed entries instead of raising AnnotationError.
        short_windows: "error" or "repeat" for clips of ``num_frames`` frames or fewer.
    """

    def __init__(self, entries: str | Path | list[dict], video_root: str | Path | None = None,
                 skip_invalid: bool = False, short_windows: str = "error") -> None:  # fmt: skip
        check_short_windows(short_windows)
        source = "<list>"
        if isinstance(entries, (str, Path)):
            source = str(entries)
            path = _annotation_file(Path(entries))
            entries = read_json(path)
            video_root = video_root or path.parent
            if not isinstance(entries, list):
                raise AnnotationError(f"{source}: expected a list of entries, got {type(entries).__name__}")
        elif not isinstance(entries, list):
            raise AnnotationError(f"entries must be a JSON file's path or a list of entries, got {type(entries).__name__}")
        root = Path(video_root) if video_root is not None else None
        self.samples: list[Sample] = []
        self.skipped: list[str] = []
        first: dict[str, int] = {}
        for i, entry in enumerate(entries):
            try:
                sample = sample_from_entry(entry, i, source, root, short=short_windows)
                if sample.id in first:
                    raise AnnotationError(f"{source}, entry {i}: id {sample.id!r} is already the id of entry "
                                          f"{first[sample.id]}; results are keyed by id, so give every sample its own")  # fmt: skip
                first[sample.id] = i
                self.samples.append(sample)
            except AnnotationError as err:
                if not skip_invalid:
                    raise
                self.skipped.append(str(err))
        self._report_skipped()

    def __repr__(self) -> str:
        return f"MCQADataset({len(self)} samples)"
