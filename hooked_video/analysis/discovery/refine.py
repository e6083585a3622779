"""Below the paper's granularity: which frame pairs (or question tokens) inside a found pathway's
ranges does the model need?

A pathway at the paper's granularity opens whole flows in whole layers. ``refine`` splits its
open flows into finer edge groups, one per layer: frame i -> frame j (i < j) in the cross-frame
range, frame i -> the question in the video -> question range (``granularity="frame-pairs"``),
or each question token -> the last position in the question -> last range (``"tokens"``, one
question at a time: token positions differ between questions). It ranks the groups once by
attribution patching (the least harmful first) and finds, by bisection with exact forwards,
how many of them can be closed on top of the pathway while it stays faithful::

    found = discovery.discover(model, samples)
    finer = discovery.refine(model, samples, found, granularity="frame-pairs")
    finer.closed        # the groups closed (label, layer, estimate), least harmful first
    finer.path          # every bisection point: closed groups, retention, change, accuracy
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import pandas as pd

from hooked_video.analysis import knockout as ko
from hooked_video.analysis.accuracy import PAPER_RULE, check_rule
from hooked_video.analysis.discovery.scoring import Scorer
from hooked_video.analysis.discovery.search import Discovery, _open
from hooked_video.core.checks import InvalidInputError
from hooked_video.data.mcqa import identify_all

GRANULARITIES = ("frame-pairs", "tokens")


@dataclass
class Refinement:
    """What ``refine`` found.

    Attributes:
        spec: the pathway refined (the paper's granularity).
        granularity: "frame-pairs" or "tokens".
        closed: the finer groups closed on top of ``spec`` (label, layer, mean estimate %), in
            the order they were ranked; empty where closing even one is unfaithful.
        path: one row per exact point of the bisection (``n_closed`` groups closed): retention,
            rel_change, flipped, accuracy, faithful.
        candidates: how many finer groups the spec's ranges hold.
    """

    spec: object
    granularity: str
    closed: pd.DataFrame
    path: pd.DataFrame
    candidates: int

    def __repr__(self) -> str:
        row = self.path[self.path.n_closed == len(self.closed)].iloc[0]
        return (f"Refinement of {self.spec.describe()}: {len(self.closed)} of {self.candidates} {self.granularity} groups "
                f"closed, keeps {row.retention:.1%} of the edges, change {row.rel_change:+.2f}%, accuracy "
                f"{row.accuracy:.3f}")  # fmt: skip


def _groups(spec, granularity: str, tm) -> dict[tuple[str, int], Callable[[], ko.EdgeSet]]:
    """(label, layer) -> a builder of the edges of every finer group inside the spec's open ranges
    (built only when closed: a prompt of a thousand positions has hundreds of groups)."""
    out = {}
    if granularity == "frame-pairs":
        frame = tm.frame_group
        for layer in _layers(spec.inter):
            out.update({(f"frame {i}->frame {j}", layer): (lambda i=i, j=j: ko.between(frame(i), frame(j), tm))
                        for j in range(tm.n_frames) for i in range(j)})  # fmt: skip
        for layer in _layers(spec.v2q):
            out.update({(f"frame {i}->question", layer): (lambda i=i: ko.between(frame(i), tm.question, tm))
                        for i in range(tm.n_frames)})  # fmt: skip
    else:
        for layer in _layers(spec.q2l):
            out.update({(f"token {k}->last", layer): (lambda k=k: ko.between(tm.question[k : k + 1], tm.last, tm))
                        for k in range(len(tm.question))})  # fmt: skip
    return out


def _layers(r) -> range:
    return range(r[0], r[1] + 1) if r is not None else range(0)


def _estimates(model, items: list, granularity: str, num_frames, rule: str) -> dict[tuple[str, int], float]:
    """(label, layer) -> mean AtP estimate (%) of closing that group alone in that layer."""
    from hooked_video.analysis.attribution import attribute

    rows = attribute(model, [item for _, _, item in items], window=1, select="all", granularity=granularity, rule=rule,
                     num_frames=num_frames, progress=False)  # fmt: skip
    if granularity == "tokens":  # labels by the token's index inside the question block
        index = rows.groupby("sample_id").source_position.rank(method="dense").astype(int) - 1
        rows = rows.assign(condition="token " + index.astype(str) + "->last")
    return rows.groupby(["condition", "layer"]).estimate.mean().to_dict()


def refine(model, samples: Iterable, found: Discovery, granularity: str = "frame-pairs", tolerance: float = 5.0,
           min_accuracy: float = 0.95, num_frames: int | None = 8, engine: str = "auto", rule: str = PAPER_RULE,
           out: str | Path | None = None, resume: bool = True, progress: bool = True) -> Refinement:  # fmt: skip
    """Close as many finer edge groups inside ``found.spec`` as faithfulness allows (see the
    module docstring). ``tolerance`` and ``min_accuracy`` as in ``discover``; the full model's
    figures are the reference, as there. ``out``: a results folder (``discover``'s may be reused)."""
    if granularity not in GRANULARITIES:
        raise InvalidInputError(f"granularity={granularity!r}: one of {GRANULARITIES}")
    if found.spec is None:
        raise InvalidInputError("the search found no faithful pathway to refine (found.spec is None)")
    check_rule(rule)
    items = identify_all(samples)
    if granularity == "tokens" and len(items) != 1:
        raise InvalidInputError(f"granularity='tokens' refines one question at a time (got {len(items)}): token "
                                "positions differ between questions")  # fmt: skip
    spec, n_layers = found.spec, model.cfg.n_layers
    store = _open(model, items, out, resume, num_frames, rule)
    try:
        scorer = Scorer(model, items, num_frames, engine, store, progress, rule)
        estimates = _estimates(model, items, granularity, num_frames, rule)
        labels = list(_groups(spec, granularity, scorer.prompts[0].token_map))
        ranked = sorted(labels, key=lambda cell: -estimates.get(cell, 0.0))
        base = spec.describe()

        def setting(k: int) -> dict:
            digest = hashlib.sha1(repr(ranked[:k]).encode()).hexdigest()[:12]

            def edges_of(i, prompt):
                edges = spec.layer_edges(prompt.token_map, n_layers)
                groups = _groups(spec, granularity, prompt.token_map)
                for label, layer in ranked[:k]:
                    edges[layer] = edges[layer] | groups[(label, layer)]()
                return edges

            return {f"{base} | {granularity} closed {k} {digest}": edges_of}

        full = scorer.full_accuracy
        points: dict[int, dict] = {}

        def score(k: int) -> bool:
            name, edges_of = next(iter(setting(k).items()))
            figures = scorer.score({name: edges_of})[name]
            faithful = figures["rel_change"] >= -tolerance and figures["accuracy"] >= min_accuracy * full - 1e-12
            points[k] = {"n_closed": k, **figures, "faithful": faithful}
            return faithful

        low, high = 0, len(ranked)  # low: faithful (the spec itself, checked), high: the first unknown above
        if not score(0):
            high = 0
        elif score(high):
            low = high
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (middle, high) if score(middle) else (low, middle)
    finally:
        if store is not None:
            store.close()
    closed = pd.DataFrame([{"label": label, "layer": layer, "estimate": estimates.get((label, layer), 0.0)}
                           for label, layer in ranked[:low]], columns=["label", "layer", "estimate"])  # fmt: skip
    path = pd.DataFrame(sorted(points.values(), key=lambda r: r["n_closed"]))
    return Refinement(spec, granularity, closed, path, len(ranked))
