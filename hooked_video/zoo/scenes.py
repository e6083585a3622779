"""Training scenes in which the question chooses what to read from the video.

Every benchmark task of ``hooked_video.data.synthetic`` asks one question per kind of clip, so a
model can answer from the video alone. These scenes hold two objects (distinct colours and
shapes) and support several questions, about either object and about different attributes and
events, in the benchmark's own wording::

    clips = scene_clips("moving_pair", rng, questions=2)   # two objects moving in different directions
    clips[0].question                                      # e.g. "Which way does the red ring move ?"

A training batch holds several questions of one scene, so the video alone no
longer tells the answer: the question must select the object and the attribute. Held-out
evaluation keeps using the benchmark's tasks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hooked_video.data.synthetic import COLOURS, DIRECTIONS, QUADRANTS, SHAPES, Canvas, Clip, _pick, _static, draw

STEPS = {"left": (-4.0, 0.0), "right": (4.0, 0.0), "up": (0.0, -4.0), "down": (0.0, 4.0)}


@dataclass
class Scene:
    """Frames (T, S, S, 3) uint8 and the questions they answer: (question, options, answer index)."""

    frames: np.ndarray
    questions: list[tuple[str, list[str], int]] = field(default_factory=list)


def _two_objects(rng) -> tuple[list[str], list[str]]:
    colours = _pick(rng, list(COLOURS), 2)
    shapes = list(SHAPES) if rng.integers(2) else list(SHAPES)[::-1]
    return colours, shapes


def _attribute_questions(colours, shapes) -> list[tuple[str, list[str], int]]:
    """Colour of each shape and shape of each colour (the two objects differ in both)."""
    names = list(COLOURS)
    return [
        *((f"What colour is the {s} ?", names, names.index(c)) for c, s in zip(colours, shapes)),
        *((f"What shape is the {c} object ?", list(SHAPES), SHAPES.index(s)) for c, s in zip(colours, shapes)),
    ]


def moving_pair(rng, canvas: Canvas = Canvas()) -> Scene:
    """Two objects moving 28 pixels in two different directions; asks which way either moves, or
    the colour / shape of either."""
    frames = canvas.blank()
    colours, shapes = _two_objects(rng)
    directions = [DIRECTIONS[i] for i in rng.choice(len(DIRECTIONS), 2, replace=False)]
    questions = []
    for colour, shape, direction in zip(colours, shapes, directions):
        step = np.array(STEPS[direction])
        travel = step * (canvas.frames - 1)
        start = rng.uniform(8 - np.minimum(travel, 0), canvas.size - 8 - np.maximum(travel, 0))
        for t in range(canvas.frames):
            draw(frames[t], shape, COLOURS[colour], *(start + step * t), 10)
        questions.append((f"Which way does the {colour} {shape} move ?", list(DIRECTIONS), DIRECTIONS.index(direction)))
    return Scene(frames, questions + _attribute_questions(colours, shapes))


def size_pair(rng, canvas: Canvas = Canvas()) -> Scene:
    """One object grows while the other shrinks (left and right halves); asks which does what,
    or the colour / shape of either."""
    frames = canvas.blank()
    colours, shapes = _two_objects(rng)
    grows = int(rng.integers(2))
    questions = []
    for i, (colour, shape) in enumerate(zip(colours, shapes)):
        small, large = rng.uniform(6, 10), rng.uniform(20, 26)
        sizes = np.linspace(small, large, canvas.frames) if i == grows else np.linspace(large, small, canvas.frames)
        cx, cy = rng.uniform(14, 18) + 32 * i, rng.uniform(20, 44)
        for t in range(canvas.frames):
            draw(frames[t], shape, COLOURS[colour], cx, cy, sizes[t])
        answer = 0 if i == grows else 1
        questions.append((f"Is the {colour} {shape} growing or shrinking ?", ["growing", "shrinking"], answer))
    return Scene(frames, questions + _attribute_questions(colours, shapes))


def static_pair(rng, canvas: Canvas = Canvas()) -> Scene:
    """Two still objects in two different quadrants (every frame the same); asks where either is,
    or the colour / shape of either."""
    image = canvas.blank()[0]
    colours, shapes = _two_objects(rng)
    quadrants = rng.choice(len(QUADRANTS), 2, replace=False)
    questions = []
    half = canvas.size / 2
    for colour, shape, quadrant in zip(colours, shapes, quadrants):
        cx = rng.uniform(8, half - 8) + (half if quadrant % 2 else 0)
        cy = rng.uniform(8, half - 8) + (half if quadrant >= 2 else 0)
        draw(image, shape, COLOURS[colour], cx, cy, 12)
        questions.append((f"Where is the {colour} {shape} ?", list(QUADRANTS), int(quadrant)))
    return Scene(_static(canvas, image), questions + _attribute_questions(colours, shapes))


#: Scene name -> (maker, kind): "temporal" scenes need several frames, "single-frame" ones do not.
SCENES = {"moving_pair": (moving_pair, "temporal"), "size_pair": (size_pair, "temporal"),
          "static_pair": (static_pair, "single-frame")}  # fmt: skip


def scene_clips(name: str, rng, questions: int = 2) -> list[Clip]:
    """``questions`` different questions of one fresh scene (fewer if it has fewer)."""
    scene = SCENES[name][0](rng)
    order = rng.permutation(len(scene.questions))[:questions]
    return [Clip(scene.frames, *scene.questions[i]) for i in order]
