"""Below the paper's granularity: which frame pairs, question tokens or video cells inside a
found pathway's ranges does the model need?

A pathway at the paper's granularity opens whole flows in whole layers. ``refine`` splits its
open flows into finer edge groups (``groups``), one per layer: frame i -> frame j (i < j) in the
cross-frame range and frame i -> the question in the video -> question range
(``granularity="frame-pairs"``); each question token -> the last position in the question ->
last range (``"tokens"``, one question at a time: token positions differ between questions); each
video cell (frame, row, column) -> the question in the video -> question range and -> the last
position in the video -> last range (``"cells"``). It ranks the groups once by attribution
patching (the least harmful first) and closes them on top of the pathway in that order, in
chunks, each checked by exact forwards: a chunk that keeps the pathway faithful stays closed, one
that does not is split in two and its halves tried in turn, down to single groups, which are left
open. A group the ranking misplaces costs a few exact points instead of stopping the search::

    found = discovery.discover(model, samples)
    finer = discovery.refine(model, samples, found, granularity="frame-pairs")
    finer.closed        # the groups closed (label, layer, estimate), least harmful first
    finer.path          # every exact point tried: closed groups, retention, change, accuracy
    pathways.evaluate(model, samples, finer.pathway)   # the refined pathway, as any spec
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import pandas as pd
from tqdm.auto import tqdm

from hooked_video.analysis.accuracy import PAPER_RULE, check_rule
from hooked_video.analysis.discovery.groups import GRANULARITIES, RefinedPathway, candidates, label
from hooked_video.analysis.discovery.scoring import Scorer
from hooked_video.analysis.discovery.search import Discovery, _open
from hooked_video.core.checks import InvalidInputError, check_count
from hooked_video.data.mcqa import identify_all
from hooked_video.runtime.distributed import Shard, resolve_shard, shard_failed


@dataclass
class Refinement:
    """What ``refine`` found.

    Attributes:
        spec: the pathway refined (the paper's granularity).
        granularity: "frame-pairs", "tokens" or "cells".
        closed: the finer groups closed on top of ``spec`` (label, layer, mean estimate %), in
            the order they were ranked; empty where closing any is unfaithful.
        path: one row per exact point tried, in order (point 0: the spec itself): ``n_closed``
            groups closed (those kept so far plus the chunk tried), ``chunk`` (its size),
            retention, rel_change, flipped, accuracy, faithful (the chunk then stays closed).
        candidates: how many finer groups the spec's ranges hold.
        pathway: the refined pathway (``spec`` with ``closed`` closed), for ``pathways.evaluate``.
        untried: groups never tried because the search reached ``max_points`` (0: every group was
            tried, alone or in a chunk).
    """

    spec: object
    granularity: str
    closed: pd.DataFrame
    path: pd.DataFrame
    candidates: int
    pathway: RefinedPathway | None = None
    untried: int = 0

    def __repr__(self) -> str:
        faithful = self.path[self.path.faithful]
        if faithful.empty:
            row = self.path.iloc[0]
            return (f"Refinement of {self.spec.describe()}: the pathway itself is not faithful on these samples (change "
                    f"{row.rel_change:+.2f}%, accuracy {row.accuracy:.3f}); nothing closed")  # fmt: skip
        row = faithful.iloc[-1]
        stopped = f"; {self.untried} not tried (max_points reached)" if self.untried else ""
        return (f"Refinement of {self.spec.describe()}: {len(self.closed)} of {self.candidates} {self.granularity} groups "
                f"closed, keeps {row.retention:.1%} of the edges, change {row.rel_change:+.2f}%, accuracy "
                f"{row.accuracy:.3f}{stopped}")  # fmt: skip


def _estimates(scorer: Scorer, granularity: str, progress: bool) -> dict[tuple[str, int], float]:
    """(label, layer) -> mean AtP estimate (%) of closing that group alone in that layer, over the
    scorer's samples (pooled across shards, stored with its rows)."""
    cells = granularity == "cells"  # a cell a sample lacks (another grid) counts as 0 for it
    compute = _cell_estimates if cells else _attributed
    return scorer.mean_per_sample(f"atp {granularity}", lambda i: compute(scorer, i, granularity),
                                  f"attribution ({granularity})" if progress else None, absent_is_zero=cells)  # fmt: skip


def _attributed(scorer: Scorer, i: int, granularity: str) -> dict[tuple[str, int], float]:
    """(label, layer) -> ``flow.attribute``'s estimate for sample ``i`` at ``granularity``."""
    from hooked_video.analysis.attribution import attribute

    rows = attribute(scorer.model, [scorer.prompts[i]], window=1, select="all", granularity=granularity,
                     rule=scorer.rule, progress=False)  # fmt: skip
    if granularity == "tokens":  # labels by the token's index inside the question block
        index = rows.source_position.rank(method="dense").astype(int) - 1
        rows = rows.assign(condition="token " + index.astype(str) + "->last")
    return {key: float(value) for key, value in rows.groupby(["condition", "layer"]).estimate.mean().items()}


def _cell_estimates(scorer: Scorer, i: int, granularity: str = "cells") -> dict[tuple[str, int], float]:
    """(label, layer) -> AtP estimate (%) of one video cell -/-> the question, or -/-> the last
    position, in one layer, for sample ``i``: one backward, every cell at once."""
    from hooked_video.analysis.attribution.estimates import pair_effects
    from hooked_video.analysis.attribution.gradients import pattern_gradients

    model, prompt = scorer.model, scorer.prompts[i]
    tm = prompt.token_map
    grads = pattern_gradients(model, model.embed(prompt))
    video = tm.video.tolist()
    effects = pair_effects(grads, [tm.question, tm.last], [[p] for p in video])  # (layer, 2, cells)
    del grads
    values = {}
    for c, p in enumerate(video):
        place = tuple(int(x) for x in tm.cell[p])
        for target, kind in enumerate(("cell->question", "cell->last")):
            name = label((kind, *place))
            for layer, value in enumerate(effects[:, target, c].tolist()):
                values[(name, layer)] = 100 * math.expm1(value)
    return values


def refine(model, samples: Iterable, found: Discovery, granularity: str = "frame-pairs", tolerance: float = 5.0,
           min_accuracy: float = 0.95, num_frames: int | None = 8, engine: str = "auto", rule: str = PAPER_RULE,
           out: str | Path | None = None, resume: bool = True, progress: bool = True, max_points: int = 64,
           shard: Shard | str | None = None) -> Refinement:  # fmt: skip
    """Close as many finer edge groups inside ``found.spec`` as faithfulness allows (see the
    module docstring). ``tolerance`` and ``min_accuracy`` as in ``discover``; the full model's
    figures are the reference, as there. ``out``: a results folder (``discover``'s may be reused).
    ``max_points``: the most exact points tried (each one forward per sample); the search stops
    there with what it closed so far. ``shard``: this process's share of a data-parallel run (as
    ``discover``; needs ``out``)."""
    if granularity not in GRANULARITIES:
        raise InvalidInputError(f"granularity={granularity!r}: one of {GRANULARITIES}")
    if found.spec is None:
        raise InvalidInputError("the search found no faithful pathway to refine (found.spec is None)")
    check_rule(rule)
    check_count(max_points, "max_points", allow_none=False)
    items = identify_all(samples)
    if granularity == "tokens" and len(items) != 1:
        raise InvalidInputError(f"granularity='tokens' refines one question at a time (got {len(items)}): token "
                                "positions differ between questions")  # fmt: skip
    spec = found.spec
    shard = resolve_shard(shard)
    store = _open(model, items, out, resume, num_frames, rule, shard)
    try:
        with shard_failed(store.folder if store is not None else None, shard):
            scorer = Scorer(model, items, num_frames, engine, store, progress, rule, shard=shard)
            groups = _candidates(spec, granularity, [p.token_map for p in scorer.prompts])
            estimates = _estimates(scorer, granularity, progress)
            ranked = sorted(groups, key=lambda g: -estimates.get((label(g[0]), g[1]), 0.0))
            base, full = spec.describe(), scorer.full_accuracy
            points: list[dict] = []

            def faithful(pathway: RefinedPathway, chunk: int) -> bool:
                names = [(label(g), layer) for g, layer in pathway.closed]
                name = f"{base} | {granularity} closed {len(names)} {hashlib.sha1(repr(names).encode()).hexdigest()[:12]}"
                figures = scorer.score_pathway(name, pathway)
                ok = figures["rel_change"] >= -tolerance and figures["accuracy"] >= min_accuracy * full - 1e-12
                points.append({"n_closed": len(names), "chunk": chunk, **figures, "faithful": ok})
                return ok

            kept: list = []
            with tqdm(total=max_points, desc=f"refining ({granularity})", disable=not progress) as bar:
                chunks = [ranked] if faithful(RefinedPathway(spec, (), granularity), 0) and ranked else []
                bar.update()
                while chunks and len(points) < max_points:
                    chunk = chunks.pop(0)
                    if faithful(RefinedPathway(spec, tuple(kept + chunk), granularity), len(chunk)):
                        kept += chunk
                    elif len(chunk) > 1:
                        chunks[:0] = [chunk[: len(chunk) // 2], chunk[len(chunk) // 2 :]]
                    bar.update()
    finally:
        if store is not None:
            store.close()
    closed = pd.DataFrame([{"label": label(group), "layer": layer, "estimate": estimates.get((label(group), layer), 0.0)}
                           for group, layer in kept], columns=["label", "layer", "estimate"])  # fmt: skip
    return Refinement(spec, granularity, closed, pd.DataFrame(points), len(ranked), RefinedPathway(spec, tuple(kept), granularity),
                      sum(len(chunk) for chunk in chunks))  # fmt: skip


def _candidates(spec, granularity: str, maps: list) -> list:
    """The finer groups of every prompt (a compressed frame lacks some cells), in first-seen order;
    the prompts must share one token grid (frames and cells are named by place)."""
    shapes = {tm.grid_shape for tm in maps}
    if granularity != "tokens" and len(shapes) > 1:
        raise InvalidInputError(f"granularity={granularity!r} names frames and cells by place, but these prompts have "
                                f"token grids {sorted(shapes)} (T, H, W): refine questions of one layout (the same "
                                "frames and resolution) together")  # fmt: skip
    return list(dict.fromkeys(group for tm in maps for group in candidates(spec, granularity, tm)))
