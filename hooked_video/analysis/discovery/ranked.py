"""The faithfulness-size curve over every attention edge, from the full model down to one edge
per row: block groups (``blocks``) ranked by attribution patching and closed in that order.

The greedy search of ``discover`` moves the paper's flows, and its path ends where the union
rule's families are all closed. ``size_curve`` goes further: it ranks every (source block,
target block, layer) group by the attribution estimate of closing it (one forward and backward
per sample: the size of the first-order change of log P(top token), per edge) and closes the
groups least harmful per edge first, until the next size of the grid is reached. From there on
the groups still open are also ranked again with the closed ones knocked out (a first-order
estimate is only good near the point it is taken at), and the next size is reached in whichever
order, the old or the new, keeps more there. Every size is scored exactly; random pruning (the
paper's rule, several seeds) and the preset are scored at the same sizes on the same samples. The smallest
pathway that keeps ``min_accuracy`` of the full model's accuracy (at every size down to it) is
then narrowed down by bisection on the closing order::

    curve = discovery.size_curve(model, samples, seeds=3, preset="auto")
    curve.table                       # pathway (ranked / random / preset), size, retention, figures
    curve.smallest                    # a BlockPathway; pathways.evaluate takes it
    viz.faithfulness_curve(curve)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from hooked_video.analysis.accuracy import PAPER_RULE, check_rule
from hooked_video.analysis.attribution.estimates import pair_effects
from hooked_video.analysis.attribution.gradients import pattern_gradients
from hooked_video.analysis.discovery.blocks import BlockPathway, blocks, group_sizes
from hooked_video.analysis.discovery.curve import preset_row, random_rows, resolve_preset
from hooked_video.analysis.discovery.scoring import Scorer
from hooked_video.analysis.discovery.search import _open
from hooked_video.analysis.pathways import PathwaySpec, causal_edges
from hooked_video.core.checks import InvalidInputError, check_count
from hooked_video.data.mcqa import identify_all
from hooked_video.runtime.distributed import Shard, resolve_shard, shard_failed

#: The shares of edges kept that the curve is scored at (the smallest reachable stands in for
#: sizes below the floor of one edge per row).
SIZES = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005)


@dataclass
class SizeCurve:
    """What ``size_curve`` measured.

    Attributes:
        table: one row per point: ``pathway`` ("ranked", "random", "preset"), ``size`` (the share
            of edges asked for; NaN for the preset and bisection points), ``n_closed`` (ranked
            groups closed), ``seed`` (random), retention, rel_change (mean % change of the full
            model's top-token probability), flipped, accuracy (the rule's).
        ranking: one row per block group, in the order they are closed: source, target, layer,
            edges (over the samples), estimate (mean change of log P(top token) per sample),
            per_edge (the mean size of that change per edge of one sample), ranked_after (how
            many groups were closed, knocked out, when it was ranked; the groups left open at the
            last size keep the order of that size's ranking).
        smallest: the smallest ranked pathway that keeps ``min_accuracy`` x the full accuracy, as
            every larger one does (at worst the full model: no group closed).
        full_accuracy: the full model's accuracy on the samples.
        samples: how many samples the figures are over.
        n_layers: the model's depth.
    """

    table: pd.DataFrame
    ranking: pd.DataFrame
    smallest: BlockPathway
    full_accuracy: float
    samples: int
    n_layers: int

    def pathway(self, n_closed: int) -> BlockPathway:
        """The ranked pathway with the first ``n_closed`` groups closed."""
        head = self.ranking.iloc[:n_closed]
        return BlockPathway(tuple(zip(head.source, head.target, head.layer.astype(int))), self.n_layers)

    def summary(self) -> pd.DataFrame:
        """Ranked, random (mean over seeds) and preset side by side per size asked for."""
        grid = self.table[self.table["size"].notna() | (self.table.pathway == "preset")]
        return grid.groupby(["pathway", "size"], dropna=False)[["retention", "rel_change", "accuracy"]].mean().unstack(0)

    def __repr__(self) -> str:
        best = ""
        if self.smallest is not None:
            row = self.table[(self.table.pathway == "ranked") & (self.table.n_closed == len(self.smallest.closed))].iloc[0]
            best = f"; smallest keeping the accuracy: {row.retention:.1%} of the edges, accuracy {row.accuracy:.3f}"
        ranked = self.table[self.table.pathway == "ranked"]
        return (f"SizeCurve over {self.samples} samples: {len(ranked)} ranked points from {ranked.retention.max():.1%} to "
                f"{ranked.retention.min():.1%} of the edges{best}; full accuracy {self.full_accuracy:.3f}")  # fmt: skip


def rank_groups(model, scorer: Scorer, closed: BlockPathway | None = None, progress: bool = False) -> pd.DataFrame:
    """The block groups of the scorer's prompts still open on top of ``closed``, least harmful per
    edge first: source, target, layer, edges (over the samples), estimate (the mean first-order
    change of log P(top token) when the group's edges leave the attention rows, which renormalise;
    gradients taken with ``closed`` knocked out, each token's own edge kept), per_edge (the mean
    over samples of the change's size, per edge of one sample: a group that moves the answer up on
    one question and down on another is not taken for harmless). Each sample's estimates are
    stored with the scorer's rows (pooled across shards, read back on a rerun)."""
    done = set(closed.closed) if closed is not None else set()

    def estimates(i: int) -> list:
        tm = scorer.prompts[i].token_map
        named = blocks(tm)
        names, positions = list(named), list(named.values())
        knocked = {l: e.mask for l, e in closed.layer_edges(tm, scorer.n_layers).items()} if closed is not None else None
        grads = pattern_gradients(model, model.embed(scorer.prompts[i]), answer=scorer.top[i], blocked=knocked)
        per_layer = pair_effects(grads, positions, positions, self_edges=False).tolist()  # (layer, target, source)
        del grads
        return [[names[s], names[t], layer, per_layer[layer][t][s]] for t, s in _pairs(tm)
                for layer in range(scorer.n_layers) if (names[s], names[t], layer) not in done]  # fmt: skip

    tag = hashlib.sha1(repr(sorted(done)).encode()).hexdigest()[:12]
    values = scorer.per_sample(f"block ranking {len(done)} {tag}", estimates, "ranking block groups" if progress else None)
    effects: dict[tuple, float] = {}
    sizes_of: dict[tuple, float] = {}
    for entries in values:
        for source, target, layer, effect in entries:
            key = (source, target, layer)
            effects[key] = effects.get(key, 0.0) + effect
            sizes_of[key] = sizes_of.get(key, 0.0) + abs(effect)
    edges: dict[tuple, int] = {}
    for prompt in scorer.prompts:  # every sample's, also the other shards'
        names, sizes = list(blocks(prompt.token_map)), group_sizes(prompt.token_map)
        for t, s in _pairs(prompt.token_map):
            for layer in range(scorer.n_layers):
                edges[(names[s], names[t], layer)] = edges.get((names[s], names[t], layer), 0) + int(sizes[t, s])
    n = len(scorer.prompts)
    table = pd.DataFrame([{"source": key[0], "target": key[1], "layer": key[2], "edges": edges[key], "estimate": e / n,
                           "per_edge": sizes_of[key] / edges[key]} for key, e in effects.items()],
                         columns=["source", "target", "layer", "edges", "estimate", "per_edge"])  # fmt: skip
    return table.sort_values("per_edge", kind="stable").reset_index(drop=True)


def _pairs(tm) -> list[tuple[int, int]]:
    """(target, source) block indices of the groups that hold edges, in order."""
    return [(int(t), int(s)) for t, s in zip(*torch.nonzero(group_sizes(tm), as_tuple=True))]


def _total_edges(scorer: Scorer) -> int:
    return sum(causal_edges(p.n_positions) for p in scorer.prompts) * scorer.n_layers


def _count_to(order: pd.DataFrame, closed_edges: int, total: int, size: float) -> int:
    """How many groups of ``order`` to close after ``closed_edges`` so that at most ``size`` of
    ``total`` is left (all of them where that is below the floor)."""
    left = total - closed_edges - np.concatenate([[0], order.edges.cumsum().to_numpy()])
    return int(min(np.searchsorted(-left, -size * total), len(order)))


def size_curve(model, samples: Iterable, sizes: Sequence[float] = SIZES, seeds: int = 3,
               preset: PathwaySpec | str | None = "auto", min_accuracy: float = 0.95, rerank: bool = True, bisect: int = 8,
               num_frames: int | None = 8, engine: str = "auto", rule: str = PAPER_RULE, out: str | Path | None = None,
               resume: bool = True, progress: bool = True, shard: Shard | str | None = None) -> SizeCurve:  # fmt: skip
    """The faithfulness-size curve of ranked block pathways (see the module docstring).

    Args:
        sizes: shares of the edges kept to score (1.0: the full model).
        seeds: random-pruning draws per size (the paper's rule; sizes it cannot reach, those
            below the share of edges at or after the video start, are left out).
        preset: a ``PathwaySpec``, a preset name, "auto" (the preset measured on this model, if
            any) or None; scored on the same samples, and its size joins ``sizes``.
        min_accuracy: the share of the full model's accuracy ``smallest`` must keep.
        rerank: at each size, also rank the open groups again with the groups closed so far
            knocked out, and close in whichever order, the one so far or the new one, keeps more
            there (accuracy, then the top token's probability; one more backward and forward per
            sample and size); False: one ranking of the full model.
        bisect: the most extra points spent narrowing ``smallest`` down between grid sizes.
        num_frames, engine, rule: as ``discover``.
        out: a results folder (``discover``'s may be shared: rows are named by their content).
        shard: this process's share of a data-parallel run (as ``discover``; needs ``out``): each
            shard ranks and scores its own samples and reads the others' from the folder, so all
            shards draw the same curve.
    """
    items = identify_all(samples)
    if not items:
        raise InvalidInputError("no samples to draw a size curve on")
    sizes = sorted({float(s) for s in sizes}, reverse=True)
    if not all(0 < s <= 1 for s in sizes):
        raise InvalidInputError(f"sizes={sizes!r}: shares of the edges kept, each in (0, 1]")
    sizes = sorted(set(sizes) | {1.0}, reverse=True)  # the full model anchors the curve
    if not 0 <= min_accuracy <= 1:
        raise InvalidInputError(f"min_accuracy={min_accuracy!r}: a share of the full model's accuracy, 0..1")
    check_count(seeds, "seeds", minimum=0, allow_none=False)
    check_count(bisect, "bisect", minimum=0, allow_none=False)
    check_rule(rule)
    preset = resolve_preset(model, preset)
    shard = resolve_shard(shard)
    store = _open(model, items, out, resume, num_frames, rule, shard)
    try:
        with shard_failed(store.folder if store is not None else None, shard):
            scorer = Scorer(model, items, num_frames, engine, store, progress, rule, shard=shard)
            layouts = {tuple(blocks(p.token_map)) for p in scorer.prompts}
            if len(layouts) > 1:
                raise InvalidInputError(f"these prompts have different blocks ({sorted(layouts)}): block groups are named by "
                                        "frame, so draw a size curve over questions of one number of frames")  # fmt: skip
            rows = [preset_row(scorer, preset)] if preset is not None else []
            if rows:  # the preset's size joins the grid, and its row sits at that size
                rows[0]["size"] = round(float(rows[0]["retention"]), 6)
                sizes = sorted(set(sizes) | {rows[0]["size"]}, reverse=True)
            full, total = scorer.full_accuracy, _total_edges(scorer)
            curve = SizeCurve(pd.DataFrame(), pd.DataFrame(), None, full, len(items), scorer.n_layers)

            def score(k: int, size: float) -> dict:
                pathway = curve.pathway(k)
                name = f"blocks closed {k} {hashlib.sha1(repr(pathway.closed).encode()).hexdigest()[:12]}"
                figures = scorer.score_pathway(name, pathway)
                return {"pathway": "ranked", "size": size, "n_closed": k, "seed": np.nan, **figures}

            curve.ranking = rank_groups(model, scorer, None, progress).assign(ranked_after=0)
            ranked, n_closed = [], 0
            for size in tqdm(sizes, desc="ranked sizes", disable=not progress):
                orders = [curve.ranking]  # the order so far, and the open groups ranked again with the closed knocked out
                if rerank and 0 < n_closed < len(curve.ranking):
                    fresh = rank_groups(model, scorer, curve.pathway(n_closed), progress).assign(ranked_after=n_closed)
                    orders.append(pd.concat([curve.ranking.iloc[:n_closed], fresh], ignore_index=True))
                closed_edges = int(curve.ranking.edges.iloc[:n_closed].sum())
                tried = []
                for order in orders:
                    curve.ranking = order
                    tried.append((score(n_closed + _count_to(order.iloc[n_closed:], closed_edges, total, size), size), order))
                point, curve.ranking = max(tried, key=lambda t: (t[0]["accuracy"], t[0]["rel_change"]))
                n_closed = point["n_closed"]
                ranked.append(point)
            random, _ = random_rows(scorer, {size: 1 - size for size in sizes if size < 1}, seeds, key="size")
            needed = full * min_accuracy - 1e-12
            low = _last_keeping(ranked, needed)
            if low is not None:
                ranked += _bisect(ranked, low, score, needed, bisect)
                low = _last_keeping(ranked, needed)
            smallest = curve.pathway(low if low is not None else 0)
    finally:
        if store is not None:
            store.close()
    curve.table = pd.DataFrame(ranked + random + rows).drop(columns="step", errors="ignore")
    curve.table.attrs["full_accuracy"] = full
    curve.smallest = smallest
    return curve


def _last_keeping(points: list[dict], needed: float) -> int | None:
    """The most groups closed while every point with fewer closed keeps the accuracy (the end of
    the run that starts at the full model; a lucky point past a failing one does not count)."""
    low = None
    for point in sorted(points, key=lambda r: r["n_closed"]):
        if point["accuracy"] < needed:
            break
        low = point["n_closed"]
    return low


def _bisect(grid: list[dict], low: int, score, needed: float, budget: int) -> list[dict]:
    """Points between ``low`` (keeps the accuracy) and the next grid point (does not), halving that
    range of the ranking each time."""
    above = [r["n_closed"] for r in grid if r["n_closed"] > low]
    if not above:
        return []
    high, points = min(above), []
    while high - low > 1 and len(points) < budget:
        middle = (low + high) // 2
        points.append(score(middle, np.nan))
        low, high = (middle, high) if points[-1]["accuracy"] >= needed else (low, middle)
    return points
