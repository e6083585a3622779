"""Where a dataset's annotations are, read without torch and without a video: the TVBench and
TOMATO folder layouts, each task's annotation file, and a JSON file's entries. The command line
checks ``--data`` and ``--task`` with these before it loads a model; the loaders use the same
functions, so both say the same thing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from hooked_video.core.checks import InvalidInputError

#: Annotation folder of each benchmark layout: TVBench ``json/``, TOMATO ``jsons/``.
ANNOTATION_DIRS = {"TVBench": "json", "TOMATO": "jsons"}


class AnnotationError(InvalidInputError):
    """An annotation entry is malformed; the message names the file and the entry."""


def read_json(path: Path):
    """The parsed JSON of an annotation file; errors name the file."""
    try:
        return json.loads(Path(path).read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        raise AnnotationError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start}); save it as UTF-8") from None
    except json.JSONDecodeError as err:
        raise AnnotationError(f"{path}: not valid JSON ({err})") from None


def task_stem(task: str) -> str:
    """A task's annotation file stem: "Action Antonym" -> "action_antonym"."""
    return task.strip().lower().replace(" ", "_")


def layout_of(path: str | Path) -> str:
    """"TVBench" or "TOMATO" for a benchmark folder, "file" for a JSON file; otherwise an error
    that says what the path is and what was expected."""
    path = Path(path)
    for layout, folder in ANNOTATION_DIRS.items():
        if (path / folder).is_dir():
            return layout
    if path.is_dir():
        raise FileNotFoundError(f"{path} is a folder but neither a TVBench folder (json/, video/) nor a TOMATO folder "
                                "(jsons/, videos/); give one of those, or a JSON file of entries")  # fmt: skip
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: give a TVBench folder (json/, video/), a TOMATO folder "
                                "(jsons/, videos/) or a JSON file of entries")  # fmt: skip
    return "file"


def task_files(root: str | Path, layout: str, tasks: Sequence[str] | None = None) -> dict[str, Path]:
    """{stem: annotation file} of a benchmark folder: every task, or ``tasks`` (paper names or stems)."""
    folder = Path(root) / ANNOTATION_DIRS[layout]
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} does not exist: is {root} a {layout} folder?")
    available = {p.stem: p for p in sorted(folder.glob("*.json"))}
    wanted = [task_stem(t) for t in tasks] if tasks else list(available)
    unknown = [t for t in wanted if t not in available]
    if unknown:
        raise FileNotFoundError(f"no annotation file for task(s) {unknown} in {folder}; found {sorted(available)}")
    return {stem: available[stem] for stem in wanted}


def file_tasks(path: str | Path, entries) -> list[str]:
    """The tasks named by a JSON file's entries (a list of objects; "task" optional)."""
    if not isinstance(entries, list):
        raise AnnotationError(f"{path}: expected a JSON list of entries, got a {type(entries).__name__}")
    return sorted({str(e["task"]) for e in entries if isinstance(e, dict) and "task" in e})


def check_tasks_of_file(path: str | Path, found: Sequence[str], tasks: Sequence[str]) -> None:
    """An error naming the tasks of ``tasks`` that no entry of the file has."""
    unknown = [t for t in tasks if t not in found]
    if unknown:
        raise AnnotationError(f"{path}: no sample has task {unknown}; tasks in the file: {sorted(found)}")


def check_dataset(path: str | Path, tasks: Sequence[str] | None = None) -> str:
    """``--data`` and ``--task`` checked without loading a video: the layout, the tasks' files,
    and for a JSON file its syntax and tasks. Returns the layout."""
    layout = layout_of(path)
    if layout != "file":
        task_files(path, layout, tasks)
    elif tasks:
        check_tasks_of_file(path, file_tasks(path, read_json(Path(path))), tasks)
    return layout
