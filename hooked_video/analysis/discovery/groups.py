"""Edge groups finer than the paper's flows, and a pathway with some of them closed.

A group is a tuple naming its kind and place, the same for every prompt of one layout:

- ``("frame->frame", i, j)``: frame i -/-> frame j (i < j; frames with their text, as cross-frame);
- ``("frame->question", i)``: frame i -/-> the question block;
- ``("token->last", k)``: the question block's k-th token -/-> the last position;
- ``("cell->question", t, h, w)``: the video token of grid cell (t, h, w) -/-> the question block;
- ``("cell->last", t, h, w)``: that video token -/-> the last position.

``RefinedPathway`` is a ``PathwaySpec`` plus groups closed in given layers; ``pathways.evaluate``
and ``pathways.faithfulness`` take it as they take a spec::

    finer = discovery.refine(model, samples, found, granularity="cells")
    pathways.evaluate(model, samples, finer.pathway)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import torch
from jaxtyping import Int

from hooked_video.analysis import knockout as ko
from hooked_video.analysis.pathways import PathwaySpec
from hooked_video.core.checks import InvalidInputError
from hooked_video.model.tokens import TokenMap

#: What ``refine`` splits, per granularity: (flow of the spec, group kind) pairs.
SPLITS = {
    "frame-pairs": (("inter", "frame->frame"), ("v2q", "frame->question")),
    "tokens": (("q2l", "token->last"),),
    "cells": (("v2q", "cell->question"), ("v2l", "cell->last")),
}
GRANULARITIES = tuple(SPLITS)

Group = tuple  # (kind, *place)


def label(group: Group) -> str:
    """A group as a line of text, e.g. ``frame 0->frame 3``, ``token 4->last``, ``cell 2,1,0->question``."""
    kind, *place = group
    source, target = kind.split("->")
    if kind == "frame->frame":
        return f"frame {place[0]}->frame {place[1]}"
    where = ",".join(str(x) for x in place)
    return f"{source} {where}->{target}"


def parse(text: str) -> Group:
    """The group a ``label`` names (``parse(label(g)) == g``)."""
    match = re.fullmatch(r"(frame|token|cell) ([\d,]+)->(frame (\d+)|question|last)", text)
    if match is None:
        raise InvalidInputError(f"{text!r} names no edge group (e.g. 'frame 0->frame 3', 'token 4->last', "
                                "'cell 2,1,0->question')")  # fmt: skip
    source, place, target, target_frame = match.groups()
    numbers = tuple(int(x) for x in place.split(","))
    if target_frame is not None:
        return ("frame->frame", *numbers, int(target_frame))
    return (f"{source}->{target}", *numbers)


def _places(kind: str, tm: TokenMap) -> list[tuple[int, ...]]:
    if kind == "frame->frame":
        return [(i, j) for j in range(tm.n_frames) for i in range(j)]
    if kind == "frame->question":
        return [(i,) for i in range(tm.n_frames)]
    if kind == "token->last":
        return [(k,) for k in range(len(tm.question))]
    return [tuple(int(x) for x in tm.cell[p]) for p in tm.video.tolist()]


def candidates(spec: PathwaySpec, granularity: str, tm: TokenMap) -> list[tuple[Group, int]]:
    """(group, layer) of every finer group inside the spec's open ranges, at ``granularity``."""
    out = []
    for flow, kind in SPLITS[granularity]:
        r = getattr(spec, flow)
        if r is not None:
            places = _places(kind, tm)
            out += [((kind, *place), layer) for layer in range(r[0], r[1] + 1) for place in places]
    return out


def _endpoints(group: Group, tm: TokenMap, cells: Int[torch.Tensor, "T H W"]) -> tuple[torch.Tensor, torch.Tensor]:
    """(source positions, target positions) of one group in a prompt."""
    kind, *place = group
    if kind in ("frame->frame", "frame->question") and max(place) >= tm.n_frames:
        raise InvalidInputError(f"this pathway closes frame {max(place)}, but the prompt has {tm.n_frames} frames: "
                                "frame groups belong to one number of frames")  # fmt: skip
    if kind == "frame->frame":
        return tm.frame_group(place[0]), tm.frame_group(place[1])
    if kind == "frame->question":
        return tm.frame_group(place[0]), tm.question
    if kind == "token->last":
        if place[0] >= len(tm.question):
            raise InvalidInputError(f"this pathway closes question token {place[0]}, but the prompt's question block has "
                                    f"{len(tm.question)} tokens: token groups belong to one question")  # fmt: skip
        return tm.question[place[0] : place[0] + 1], tm.last
    if len(place) != 3 or any(not 0 <= x < n for x, n in zip(place, cells.shape)):
        raise InvalidInputError(f"this pathway closes video cell {tuple(place)}, which the prompt's token grid "
                                f"{tuple(cells.shape)} does not have: cell groups belong to one grid layout")  # fmt: skip
    position = cells[tuple(place)].reshape(1)
    source = position[position >= 0]  # a frame whose processor dropped the cell: nothing to close
    return source, (tm.question if kind == "cell->question" else tm.last)


def close(edges: dict[int, ko.EdgeSet], groups: Sequence[tuple[Group, int]], tm: TokenMap) -> dict[int, ko.EdgeSet]:
    """``edges`` (blocked per layer) with every (group, layer) of ``groups`` blocked too."""
    n = tm.n_positions
    masks = {layer: e.mask.clone() for layer, e in edges.items()}
    cells = tm.grid
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    for group, layer in groups:
        source, target = _endpoints(group, tm, cells)
        masks.setdefault(layer, torch.zeros(n, n, dtype=torch.bool))[target[:, None], source[None, :]] = True
    return {layer: ko.EdgeSet(mask & causal) for layer, mask in masks.items()}


@dataclass(frozen=True)
class RefinedPathway:
    """A pathway at the paper's granularity with finer edge groups closed inside its ranges.

    Attributes:
        spec: the pathway refined.
        closed: (group, layer) pairs closed on top of it (see the module docstring).
        granularity: the granularity they were found at (``GRANULARITIES``).
    """

    spec: PathwaySpec
    closed: tuple[tuple[Group, int], ...]
    granularity: str

    def __post_init__(self) -> None:
        closed = tuple((tuple(g), int(layer)) for g, layer in self.closed)
        kinds = {kind for _, kind in (pair for pairs in SPLITS.values() for pair in pairs)}
        wrong = [g for g, _ in closed if not g or g[0] not in kinds]
        if wrong:
            raise InvalidInputError(f"unknown edge group {wrong[0]!r}: a group is (kind, *place) with kind one of {sorted(kinds)}")
        object.__setattr__(self, "closed", closed)

    @property
    def n_layers(self) -> int | None:
        return self.spec.n_layers

    @property
    def random_fraction(self) -> None:
        return None  # the random baseline prunes the refined pathway's own share

    def check_model(self, model) -> None:
        self.spec.check_model(model)

    def layer_edges(self, tm: TokenMap, n_layers: int) -> dict[int, ko.EdgeSet]:
        """Blocked edges of every layer: the spec's union rule plus the closed groups."""
        return close(self.spec.layer_edges(tm, n_layers), self.closed, tm)

    def open_groups(self, tm: TokenMap) -> list[tuple[str, ko.EdgeSet, list[int]]]:
        """The spec's flows in their open layers (``PathwaySpec.open_groups``)."""
        return self.spec.open_groups(tm)

    def settings(self) -> dict:
        """The pathway as a results folder records it."""
        return {**self.spec.settings(), "granularity": self.granularity,
                "closed": [[label(group), layer] for group, layer in self.closed]}  # fmt: skip

    def describe(self) -> str:
        return f"{self.spec.describe()} minus {len(self.closed)} {self.granularity} groups"

    @classmethod
    def from_settings(cls, settings: dict) -> "RefinedPathway":
        """The pathway ``settings()`` recorded (e.g. ``summary.json``'s ``refine.pathway`` of
        ``hooked-video discover --refine``)."""
        fields = {k: v for k, v in settings.items() if k not in ("granularity", "closed")}
        spec = PathwaySpec(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in fields.items()})
        return cls(spec, tuple((parse(text), layer) for text, layer in settings["closed"]), settings["granularity"])
