"""TVBench and TOMATO loaders (docs/method.md, "Data"), yielding ``Sample``s.

TVBench: ``{root}/json/{task}.json``, each a list of ``{video, question, candidates, answer
(text), optional start, end (seconds)}``; videos under ``{root}/video/{task}/``. Tasks are named
as in the paper ("Action Antonym") or by file stem ("action_antonym"). As in the released
evaluation code, start/end windows are used only for the tasks flagged as bound (Action
Sequence, Action Localization); other tasks use the whole clip (``time_windows`` changes this).

TOMATO: ``{root}/jsons/{task}.json``, each a dict of ``{id: {question, options, answer (index),
demonstration_type, key}}``; the video is ``{root}/videos/{demonstration_type}/{key}.mp4``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

from hooked_video.data.layout import AnnotationError, check_tasks_of_file, layout_of, read_json, task_files, task_stem
from hooked_video.data.mcqa import Sample, SampleList, check_short_windows, sample_from_entry

TVBENCH_TASKS = (
    "Action Antonym", "Action Count", "Action Localization", "Action Sequence", "Egocentric Sequence",
    "Moving Direction", "Object Count", "Object Shuffle", "Scene Transition", "Unexpected Action",
)  # fmt: skip
#: The five TVBench tasks of the paper's analyses.
PAPER_TVBENCH_TASKS = ("Action Antonym", "Action Sequence", "Moving Direction", "Object Count", "Scene Transition")
TOMATO_TASKS = ("count", "direction", "rotation", "shape&trend", "velocity&frequency", "visual_cues")
#: TVBench tasks whose start/end window the released evaluation code applies.
BOUND_TASKS = ("Action Sequence", "Action Localization")
TIME_WINDOWS = ("bound-tasks", "all", "none")


class _Benchmark(SampleList):
    """Samples of a benchmark folder, task by task, with per-entry validation."""

    annotation_dir = ""

    def __init__(self, root: str | Path, tasks: Sequence[str] | None = None, skip_invalid: bool = False,
                 short_windows: str = "error", allow_outside: bool = False) -> None:  # fmt: skip
        self.root = Path(root)
        self.short_windows = check_short_windows(short_windows)
        self.inside = None if allow_outside else self.root  # videos must stay in the folder
        files = task_files(self.root, type(self).__name__, tasks)
        self.samples: list[Sample] = []
        self.skipped: list[str] = []
        for stem, path in files.items():
            entries = read_json(path)
            for index, entry in self._entries(path, entries):
                try:
                    sample = self._sample(path, stem, index, entry)
                except AnnotationError as err:
                    if not skip_invalid:
                        raise
                    self.skipped.append(str(err))
                    continue
                self.samples.append(sample)
        self._report_skipped()

    def _entries(self, path: Path, entries) -> Iterator[tuple]:
        raise NotImplementedError

    def _sample(self, path: Path, stem: str, index, entry) -> Sample:
        raise NotImplementedError

    @property
    def tasks(self) -> list[str]:
        return sorted({s.task for s in self.samples})

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.root}, {len(self)} samples, tasks={self.tasks})"


def _require(entry, fields: Sequence[str], where: str) -> None:
    if not isinstance(entry, dict):
        raise AnnotationError(f"{where}: expected an object, got {type(entry).__name__}")
    missing = [f for f in fields if entry.get(f) is None]
    if missing:
        raise AnnotationError(f"{where}: missing field(s) {missing}")


class TVBench(_Benchmark):
    """TVBench multiple-choice questions; ``tasks`` by paper name or file stem (default: all).

    Args:
        time_windows: "bound-tasks" (default, the released code: start/end only for
            ``BOUND_TASKS``), "all" (every entry's start/end) or "none" (whole clips).
        short_windows: windows of ``num_frames`` frames or fewer: "error" (default) or
            "repeat" (repeat frames as the released code does).
    """

    annotation_dir = "json"

    def __init__(self, root: str | Path, tasks: Sequence[str] | None = None, skip_invalid: bool = False,
                 short_windows: str = "error", time_windows: str = "bound-tasks", allow_outside: bool = False) -> None:  # fmt: skip
        if time_windows not in TIME_WINDOWS:
            raise ValueError(f"time_windows must be one of {TIME_WINDOWS}, got {time_windows!r}")
        self.time_windows = time_windows
        super().__init__(root, tasks, skip_invalid, short_windows, allow_outside)

    def _entries(self, path, entries):
        if not isinstance(entries, list):
            raise AnnotationError(f"{path}: expected a list of entries")
        return enumerate(entries)

    def _sample(self, path, stem, index, entry) -> Sample:
        _require(entry, ("video", "question", "candidates", "answer"), f"{path}, entry {index}")
        task = next((t for t in TVBENCH_TASKS if task_stem(t) == stem), stem)
        entry = {**entry, "id": f"{stem}/{index}", "task": task}
        if self.time_windows == "none" or (self.time_windows == "bound-tasks" and task not in BOUND_TASKS):
            entry = {k: v for k, v in entry.items() if k not in ("start", "end")}
        return sample_from_entry(entry, index, str(path), self.root / "video" / stem, short=self.short_windows,
                                 inside=self.inside)  # fmt: skip


class TOMATO(_Benchmark):
    """TOMATO multiple-choice questions; ``tasks`` among TOMATO_TASKS (default: all)."""

    annotation_dir = "jsons"

    def _entries(self, path, entries):
        if not isinstance(entries, dict):
            raise AnnotationError(f"{path}: expected an object of entries keyed by id")
        return entries.items()

    def _sample(self, path, stem, key, entry) -> Sample:
        where = f"{path}, entry {key!r}"
        _require(entry, ("question", "options", "answer", "demonstration_type", "key"), where)
        video = Path("videos", str(entry["demonstration_type"]), f"{entry['key']}.mp4")
        entry = {"video": str(video), "question": entry["question"], "options": entry["options"],
                 "answer": entry["answer"], "id": f"{stem}/{key}", "task": stem}  # fmt: skip
        if isinstance(entry["answer"], str) and entry["answer"].isdigit():
            entry["answer"] = int(entry["answer"])
        return sample_from_entry(entry, key, str(path), self.root, short=self.short_windows, inside=self.inside)


def open_dataset(path: str | Path, tasks: Sequence[str] | None = None, skip_invalid: bool = False,
                 short_windows: str = "error", allow_outside: bool = False):  # fmt: skip
    """A TVBench folder, a TOMATO folder, or a JSON file of entries (``MCQADataset``). A folder's
    videos must stay inside it unless ``allow_outside``."""
    from hooked_video.data.mcqa import MCQADataset

    layout = layout_of(path)
    if layout != "file":
        cls = {"TVBench": TVBench, "TOMATO": TOMATO}[layout]
        return cls(path, tasks=tasks, skip_invalid=skip_invalid, short_windows=short_windows, allow_outside=allow_outside)
    data = MCQADataset(path, skip_invalid=skip_invalid, short_windows=short_windows)
    if tasks:
        check_tasks_of_file(path, {s.task for s in data.samples}, tasks)
        data.samples = [s for s in data.samples if s.task in set(tasks)]
    return data
