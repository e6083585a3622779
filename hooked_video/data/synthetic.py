"""A synthetic temporal-reasoning benchmark: short videos of coloured shapes with multiple-choice
questions, written as real mp4 files with TVBench-format annotations (``TVBench(root)`` reads it).

Temporal tasks mirror the paper's five (a single frame does not tell the answer; see each task):

| task | question | options |
|---|---|---|
| action_antonym | is the object growing or shrinking? | 2 |
| action_sequence | which of two objects flashes first? | 2 |
| moving_direction | which way does the object move? | 4 |
| object_count | how many objects move? | 3 |
| scene_transition | how does the background change? (A to B vs B to A) | 2 |

Single-frame tasks (static clips, every frame the same): colour, shape, position, static_count.

Every sample is drawn from its own seeded generator (seed, task, index); the answer class cycles
through the classes, and options keep a fixed order per task, so answer classes and option
positions are balanced together (exactly, over any n_classes consecutive samples); for the two
ordered tasks (which object first, from which colour to which) both orders occur equally. Add
tasks with ``register_task``.

    root = synthetic.generate("data/synthetic", per_task=32, seed=0)
    data = TVBench(root)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from hooked_video.core.video import save_video

COLOURS = {"red": (220, 50, 50), "green": (50, 190, 70), "blue": (60, 90, 235), "yellow": (235, 215, 50)}
SHAPES = ("square", "ring")  # distinct even after 2x2 pooling of 8-pixel patches
BACKGROUNDS = {"black": (20, 20, 20), "grey": (120, 120, 120), "purple": (110, 50, 140), "brown": (120, 80, 40)}
WHITE = (250, 250, 250)


@dataclass
class Clip:
    """One generated question: frames (T, S, S, 3) uint8, the question, its options (true one
    at ``answer``)."""

    frames: np.ndarray
    question: str
    options: list[str]
    answer: int


@dataclass(frozen=True)
class Task:
    """A task: ``make(rng, label, canvas) -> (frames, question, options, answer index)`` where
    ``label`` in ``range(n_classes)`` picks the answer class."""

    name: str
    kind: str  # "temporal" or "single-frame"
    n_classes: int
    make: Callable


TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Add a task to the registry (name = file stem of its annotation file)."""
    TASKS[task.name] = task
    return task


# ----- drawing ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Canvas:
    """Clip size of the synthetic benchmark: frames and square side in pixels."""
    frames: int = 8
    size: int = 64

    def blank(self, background=BACKGROUNDS["black"]) -> np.ndarray:
        """(frames, size, size, 3) uint8 frames filled with ``background``."""
        return np.broadcast_to(np.array(background, np.uint8), (self.frames, self.size, self.size, 3)).copy()


def draw(image: np.ndarray, shape: str, colour, cx: float, cy: float, size: float) -> None:
    """Draw a filled square or a ring (outer diameter ``size``, hollow centre) at (cx, cy), in place."""
    yy, xx = np.mgrid[: image.shape[0], : image.shape[1]]
    half = size / 2
    if shape == "square":
        inside = (np.abs(xx - cx) <= half) & (np.abs(yy - cy) <= half)
    else:
        radius2 = (xx - cx) ** 2 + (yy - cy) ** 2
        inside = (radius2 <= half**2) & (radius2 >= (half * 0.5) ** 2)
    image[inside] = colour


def _pick(rng, names: Sequence[str], k: int) -> list[str]:
    return [names[i] for i in rng.choice(len(names), k, replace=False)]


def _name(colour: str, shape: str) -> str:
    return f"the {colour} {shape}"


# ----- temporal tasks -------------------------------------------------------------------------------
def _action_antonym(rng, label: int, c: Canvas):
    """Growing vs shrinking; start sizes overlap across classes, so one frame's size is ambiguous."""
    frames = c.blank()
    colour, shape = _pick(rng, list(COLOURS), 1)[0], SHAPES[rng.integers(2)]
    small, large = rng.uniform(8, 16), rng.uniform(26, 34)
    sizes = np.linspace(small, large, c.frames) if label == 0 else np.linspace(large, small, c.frames)
    cx, cy = rng.uniform(22, 42, 2)
    for t in range(c.frames):
        draw(frames[t], shape, COLOURS[colour], cx, cy, sizes[t])
    return frames, f"Is {_name(colour, shape)} growing or shrinking ?", ["growing", "shrinking"], label


def _action_sequence(rng, label: int, c: Canvas):
    """Two objects, each flashes white for two frames; which flashes first (any one frame shows
    at most one flash, not the order)."""
    frames = c.blank()
    colours = _pick(rng, list(COLOURS), 2)
    shapes = [SHAPES[rng.integers(2)] for _ in range(2)]
    xs = [rng.uniform(12, 24), rng.uniform(40, 52)]
    ys = rng.uniform(14, 50, 2)
    early, late = int(rng.integers(0, c.frames // 2 - 1)), int(rng.integers(c.frames // 2, c.frames - 1))
    flash = {label: early, 1 - label: late}  # object `label` flashes first
    for t in range(c.frames):
        for i in range(2):
            colour = WHITE if flash[i] <= t < flash[i] + 2 else COLOURS[colours[i]]
            draw(frames[t], shapes[i], colour, xs[i], ys[i], 14)
    names = [_name(colours[i], shapes[i]) for i in range(2)]  # left object first
    return frames, "Which object flashes first ?", names, label


DIRECTIONS = ("left", "right", "up", "down")


def _moving_direction(rng, label: int, c: Canvas):
    """One object moves 28 pixels in a straight line; its start is random within the frame."""
    frames = c.blank()
    colour, shape = _pick(rng, list(COLOURS), 1)[0], SHAPES[rng.integers(2)]
    step = np.array({"left": (-4, 0), "right": (4, 0), "up": (0, -4), "down": (0, 4)}[DIRECTIONS[label]], float)
    travel = step * (c.frames - 1)
    low = 10 - np.minimum(travel, 0)
    high = c.size - 10 - np.maximum(travel, 0)
    start = rng.uniform(low, high)
    for t in range(c.frames):
        draw(frames[t], shape, COLOURS[colour], *(start + step * t), 12)
    return frames, f"Which way does {_name(colour, shape)} move ?", list(DIRECTIONS), label


NUMBERS = ("one", "two", "three")


def _object_count(rng, label: int, c: Canvas):
    """Three objects, ``label + 1`` of them move; which ones move cannot be seen in one frame."""
    frames = c.blank()
    colours = _pick(rng, list(COLOURS), 3)
    slots = [(14 + 18 * i, rng.uniform(16, 48)) for i in range(3)]
    moving = set(rng.choice(3, label + 1, replace=False).tolist())
    velocity = {i: rng.choice([-1, 1]) * np.array([0, 4.0]) for i in moving}
    for t in range(c.frames):
        for i, (x, y) in enumerate(slots):
            dy = velocity[i][1] * (t - (c.frames - 1) / 2) if i in moving else 0
            draw(frames[t], SHAPES[i % 2], COLOURS[colours[i]], x, np.clip(y + dy, 6, c.size - 6), 10)
    return frames, "How many objects move ?", list(NUMBERS), label


def _scene_transition(rng, label: int, c: Canvas):
    """The background switches colour once; the options are the same two colours in both
    orders, so a single frame (one colour) cannot tell."""
    first, second = sorted(_pick(rng, list(BACKGROUNDS), 2))
    a, b = (first, second) if label == 0 else (second, first)
    switch = int(rng.integers(3, c.frames - 2))
    frames = c.blank()
    frames[:switch] = BACKGROUNDS[a]
    frames[switch:] = BACKGROUNDS[b]
    colour, shape = _pick(rng, list(COLOURS), 1)[0], SHAPES[rng.integers(2)]
    x, y = rng.uniform(16, 48, 2)
    for t in range(c.frames):
        draw(frames[t], shape, COLOURS[colour], x, y, 12)
    return frames, "How does the scene change ?", [f"from {first} to {second}", f"from {second} to {first}"], label


# ----- single-frame tasks (static clips) ----------------------------------------------------------
def _static(c: Canvas, image: np.ndarray) -> np.ndarray:
    return np.broadcast_to(image, (c.frames, *image.shape)).copy()


def _colour(rng, label: int, c: Canvas):
    names = list(COLOURS)
    image = c.blank()[0]
    shape = SHAPES[rng.integers(2)]
    draw(image, shape, COLOURS[names[label]], *rng.uniform(16, 48, 2), rng.uniform(12, 24))
    return _static(c, image), f"What colour is the {shape} ?", names, label


def _shape(rng, label: int, c: Canvas):
    image = c.blank()[0]
    colour = _pick(rng, list(COLOURS), 1)[0]
    draw(image, SHAPES[label], COLOURS[colour], *rng.uniform(16, 48, 2), rng.uniform(14, 24))
    return _static(c, image), f"What shape is the {colour} object ?", list(SHAPES), label


QUADRANTS = ("top left", "top right", "bottom left", "bottom right")


def _position(rng, label: int, c: Canvas):
    image = c.blank()[0]
    colour, shape = _pick(rng, list(COLOURS), 1)[0], SHAPES[rng.integers(2)]
    half = c.size / 2
    cx = rng.uniform(8, half - 8) + (half if label % 2 else 0)
    cy = rng.uniform(8, half - 8) + (half if label >= 2 else 0)
    draw(image, shape, COLOURS[colour], cx, cy, 12)
    return _static(c, image), f"Where is {_name(colour, shape)} ?", list(QUADRANTS), label


def _static_count(rng, label: int, c: Canvas):
    image = c.blank()[0]
    colours = _pick(rng, list(COLOURS), label + 1)
    slots = rng.choice(4, label + 1, replace=False)
    for colour, slot in zip(colours, slots):
        cx, cy = 16 + 32 * (slot % 2) + rng.uniform(-4, 4), 16 + 32 * (slot // 2) + rng.uniform(-4, 4)
        draw(image, SHAPES[rng.integers(2)], COLOURS[colour], cx, cy, 12)
    return _static(c, image), "How many objects are there ?", list(NUMBERS), label


for _task in (
    Task("action_antonym", "temporal", 2, _action_antonym),
    Task("action_sequence", "temporal", 2, _action_sequence),
    Task("moving_direction", "temporal", 4, _moving_direction),
    Task("object_count", "temporal", 3, _object_count),
    Task("scene_transition", "temporal", 2, _scene_transition),
    Task("colour", "single-frame", 4, _colour),
    Task("shape", "single-frame", 2, _shape),
    Task("position", "single-frame", 4, _position),
    Task("static_count", "single-frame", 3, _static_count),
):
    register_task(_task)

TEMPORAL_TASKS = tuple(t for t, spec in TASKS.items() if spec.kind == "temporal")
SINGLE_FRAME_TASKS = tuple(t for t, spec in TASKS.items() if spec.kind == "single-frame")


# ----- samples and files --------------------------------------------------------------------------
def make_clip(task: str, index: int, seed: int = 0, canvas: Canvas = Canvas()) -> Clip:
    """The ``index``-th question of a task, of answer class ``index % n_classes``.

    Options come in each task's fixed order (directions, numbers, colours..., objects left to
    right, colour pairs alphabetically), so the true option's position is its class: classes
    and positions are balanced together, and a model can answer from the video alone.
    """
    if task not in TASKS:
        raise KeyError(f"unknown task {task!r}; tasks: {sorted(TASKS)}")
    spec = TASKS[task]
    rng = np.random.default_rng([seed, list(TASKS).index(task), index])
    frames, question, options, answer = spec.make(rng, index % spec.n_classes, canvas)
    return Clip(frames, question, list(options), int(answer))


def generate(root: str | Path, tasks: Sequence[str] | None = None, per_task: int = 16, seed: int = 0,
             canvas: Canvas = Canvas(), fps: int = 8, progress: bool = True) -> Path:  # fmt: skip
    """Write ``per_task`` questions per task as ``video/{task}/{i:04d}.mp4`` plus
    ``json/{task}.json`` (TVBench format); skips work already done with the same settings.

    Only folders this function made (they hold its ``synthetic.json`` stamp) are rewritten: a
    folder with other benchmark files is refused, never overwritten.
    """
    root = Path(root)
    tasks = list(tasks or TASKS)
    stamp = {"tasks": tasks, "per_task": per_task, "seed": seed, "frames": canvas.frames, "size": canvas.size, "fps": fps}
    stamp_file = root / "synthetic.json"
    previous = _read_stamp(stamp_file)
    if previous == stamp:
        return root
    if previous is None and any((root / sub).exists() for sub in ("json", "video")):
        raise FileExistsError(f"{root} already holds json/ or video/ files that hooked_video did not generate "
                              "(a real benchmark?); give an empty or new folder for the synthetic benchmark")  # fmt: skip
    for task in (previous or {}).get("tasks", []):  # our earlier run's tasks must not linger
        (root / "json" / f"{task}.json").unlink(missing_ok=True)
    root.mkdir(parents=True, exist_ok=True)
    stamp_file.write_text(json.dumps({**stamp, "complete": False}, sort_keys=True))  # ours, even if cut short
    for task in tqdm(tasks, desc="synthetic benchmark", disable=not progress):
        entries = []
        for index in range(per_task):
            clip = make_clip(task, index, seed, canvas)
            name = f"{index:04d}.mp4"
            save_video(clip.frames, root / "video" / task / name, fps=fps, crf=0)  # lossless: reproducible frames
            entries.append({"video": name, "question": clip.question, "candidates": clip.options,
                            "answer": clip.options[clip.answer]})  # fmt: skip
        (root / "json").mkdir(parents=True, exist_ok=True)
        (root / "json" / f"{task}.json").write_text(json.dumps(entries, indent=1, sort_keys=True))
    stamp_file.write_text(json.dumps(stamp, sort_keys=True))
    return root


def _read_stamp(path: Path) -> dict | None:
    """The settings a previous ``generate`` recorded in ``path`` (None: no stamp, or unreadable)."""
    try:
        stamp = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return stamp if isinstance(stamp, dict) else None


def vocabulary() -> list[str]:
    """Every word the generated questions and options use (for word-level tokenizers)."""
    words: set[str] = {*COLOURS, *SHAPES, *BACKGROUNDS, *DIRECTIONS, *NUMBERS, *" ".join(QUADRANTS).split()}
    for task in TASKS:
        for index in range(24):
            clip = make_clip(task, index, canvas=Canvas(frames=8, size=64))
            for text in [clip.question, *clip.options]:
                words.update(text.replace("?", " ? ").split())
    return sorted(words)
