"""Find a pathway from data instead of hand-setting it, at the paper's granularity.

A ``PathwaySpec`` opens each flow (cross-frame, video -> question, question -> last, and
optionally video -> last) in one range of layers; everything else of the union rule is blocked.
``discover`` starts with every flow open in every layer and closes one layer at a time, always at
an end of a range (so ranges stay ranges), always the layer whose closing costs least, each
candidate scored by exact forwards over the samples (the sweep engine, candidates batched). The
pathway it returns is the smallest on that path that is still faithful: the mean relative change
of the full model's top-token probability stays above ``-tolerance`` percent and accuracy (the
paper's rule) at or above ``min_accuracy`` x the full model's. The whole path is the
faithfulness-size curve; random pruning of the same sizes and the model's preset join it in
``found.curve``::

    found = discovery.discover(model, samples, out="runs/discover")   # a rerun replays stored rows
    found.spec, found.path, found.curve
    viz.faithfulness_curve(found)
    pathways.evaluate(model, samples, found.spec)       # its exact figures, as for any spec
    discovery.discover_each(model, samples, by="task")  # one search per task (or "sample")
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd
from tqdm.auto import tqdm

from hooked_video.analysis.accuracy import PAPER_RULE, check_rule
from hooked_video.analysis.discovery.curve import baselines, resolve_preset
from hooked_video.analysis.discovery.gates import gate_ranking
from hooked_video.analysis.discovery.scoring import PER_SAMPLE, Scorer
from hooked_video.analysis.pathways import FLOWS, PathwaySpec
from hooked_video.core.checks import InvalidInputError, check_count
from hooked_video.data.mcqa import identify_all
from hooked_video.runtime.distributed import Shard, resolve_shard, shard_failed
from hooked_video.runtime.store import model_identity, open_store

#: The flows the paper's pathways open (``discover``'s default); add "v2l" to let video -> last open.
PAPER_FLOWS = FLOWS[:3]
FLOW_NAMES = {"inter": "cross-frame", "v2q": "video->question", "q2l": "question->last", "v2l": "video->last"}
#: The sweep condition whose rows knock out each flow alone in one layer (window 1).
FLOW_CONDITIONS = {"inter": ("cross-frame", "cross-frame"), "v2q": ("vql-to-ql", "video->question"),
                   "q2l": ("vql-to-ql", "question->last"), "v2l": ("vql-to-ql", "video->last")}  # fmt: skip
BY = ("task", "sample")
METHODS = ("exact", "atp", "gates")


@dataclass
class Discovery:
    """What ``discover`` found.

    Attributes:
        spec: the smallest faithful pathway on the path (None where even every flow open in every
            layer is not faithful: the union rule's always-blocked edges already cost too much).
        path: one row per step (step 0: every flow open everywhere): the ranges (0-based), the
            layer closed at that step, retention (edges kept / causal edges, over the samples),
            mean relative change of the top token's probability (%), share of changed top tokens,
            accuracy, and whether the step is faithful.
        full_accuracy: the full model's accuracy on the samples (the search's rule).
        samples: how many samples the figures are over.
        step: the row of ``path`` that ``spec`` is (None with no spec).
        curve: the faithfulness-size curve: the path ("discovered"), random pruning of the same
            sizes ("random", one row per seed and size) and the preset ("preset"), each row with
            retention, rel_change, flipped and accuracy; None with ``seeds=0`` and no preset.
        flows: the flows the search opened and closed.
    """

    spec: PathwaySpec | None
    path: pd.DataFrame
    full_accuracy: float
    samples: int
    step: int | None = None
    curve: pd.DataFrame | None = None
    flows: tuple[str, ...] = PAPER_FLOWS

    def summary(self) -> dict:
        """The found pathway in one row: its ranges and exact figures (NaN without one)."""
        row = self.path.loc[self.step] if self.step is not None else None
        figures = {k: (row[k] if row is not None else float("nan")) for k in ("retention", "rel_change", "flipped", "accuracy")}
        ranges = {f: (getattr(self.spec, f) if self.spec else None) for f in self.flows}
        return {**ranges, **figures, "full_accuracy": self.full_accuracy, "samples": self.samples}

    def __repr__(self) -> str:
        found = "none" if self.spec is None else self.spec.describe()
        row = self.path.loc[self.step] if self.step is not None else None
        kept = f", keeps {row.retention:.1%} of the edges, accuracy {row.accuracy:.3f}" if row is not None else ""
        return (f"Discovery over {self.samples} samples: {found} (0-based){kept}; full accuracy "
                f"{self.full_accuracy:.3f}; {len(self.path)} steps in .path")  # fmt: skip


def _closings(spec: PathwaySpec, flows: Sequence[str]) -> list[tuple[str, str]]:
    """(flow, "first" | "last") of every layer that can be closed next: an end of an open range."""
    return [(f, end) for f in flows if getattr(spec, f) is not None for end in ("first", "last")
            if end == "first" or getattr(spec, f)[0] < getattr(spec, f)[1]]  # fmt: skip


def _closed(spec: PathwaySpec, flow: str, end: str) -> tuple[PathwaySpec, int]:
    """``spec`` with the first or last layer of ``flow``'s range closed, and that layer."""
    first, last = getattr(spec, flow)
    layer = first if end == "first" else last
    rest = None if first == last else ((first + 1, last) if end == "first" else (first, last - 1))
    ranges = {f: getattr(spec, f) for f in FLOWS}
    ranges[flow] = rest
    return PathwaySpec(**ranges, n_layers=spec.n_layers), layer


def _setting(scorer: Scorer, spec: PathwaySpec) -> dict:
    return {spec.describe(): lambda i, prompt: spec.layer_edges(prompt.token_map, scorer.n_layers)}


def _check(tolerance: float, min_accuracy: float, flows: Sequence[str]) -> tuple[str, ...]:
    if not tolerance >= 0 or not 0 <= min_accuracy <= 1:
        raise InvalidInputError(f"tolerance (a percentage, >= 0) and min_accuracy (a share of the full model's accuracy, "
                                f"0..1) got {tolerance!r} and {min_accuracy!r}")  # fmt: skip
    flows = tuple(flows)
    if not flows or len(set(flows)) != len(flows) or not set(flows) <= set(FLOWS):
        raise InvalidInputError(f"flows={flows!r}: a selection of {FLOWS} (the paper's: {PAPER_FLOWS})")
    return flows


def attribution_ranking(scorer: Scorer, flows: Sequence[str] = PAPER_FLOWS, progress: bool = False) -> dict[tuple[str, int], float]:
    """(flow, layer) -> the attribution estimate (AtP, one backward per sample) of knocking that
    flow out in that layer alone, in percent of the top token's probability, averaged over the
    scorer's samples (pooled across shards, stored with its rows): what ``method="atp"`` closes
    first (the largest, i.e. the least harmful)."""
    from hooked_video.analysis.attribution import attribute

    targets = sorted({FLOW_CONDITIONS[f][0] for f in flows})

    def estimates(i: int) -> dict[tuple[str, int], float]:
        rows = attribute(scorer.model, [scorer.prompts[i]], targets=targets, window=1, select="all", rule=scorer.rule,
                         progress=False)  # fmt: skip
        means = rows.groupby(["target", "condition", "layer"]).estimate.mean()
        return {(f, layer): float(means.get((*FLOW_CONDITIONS[f], layer), 0.0)) for f in flows for layer in range(scorer.n_layers)}

    means = scorer.mean_per_sample(f"atp flows {','.join(flows)}", estimates, "attribution (atp)" if progress else None)
    return {(f, layer): means.get((f, layer), 0.0) for f in flows for layer in range(scorer.n_layers)}


def greedy(scorer: Scorer, tolerance: float = 5.0, min_accuracy: float = 0.95, full_curve: bool = True,
           flows: Sequence[str] = PAPER_FLOWS, progress: bool = True,
           ranking: dict[tuple[str, int], float] | None = None) -> Discovery:  # fmt: skip
    """The greedy search of ``discover`` over a scorer's prompts (its arguments as there).

    ``ranking`` ((flow, layer) -> estimate, ``attribution_ranking``): try the closable layers in
    the order of their estimates, exactly, one at a time, and take the first that stays faithful
    (after the path's first unfaithful step: the first); without it every closable layer is
    scored and the best taken."""
    flows = _check(tolerance, min_accuracy, flows)
    n_layers = scorer.n_layers
    full_accuracy = scorer.full_accuracy

    def faithful(figures: dict) -> bool:
        return figures["rel_change"] >= -tolerance and figures["accuracy"] >= min_accuracy * full_accuracy - 1e-12

    def row(spec: PathwaySpec, closed: str | None, figures: dict) -> dict:
        return {"step": len(path), **{f: getattr(spec, f) for f in flows}, "closed": closed, **figures,
                "faithful": faithful(figures)}  # fmt: skip

    spec = PathwaySpec(**{f: (0, n_layers - 1) for f in flows}, **{f: None for f in FLOWS if f not in flows},
                       n_layers=n_layers)  # fmt: skip
    path: list[dict] = []
    path.append(row(spec, None, scorer.score_pathway(spec.describe(), spec)))
    bar = tqdm(total=len(flows) * n_layers, desc="closing layers", disable=not progress)
    while _closings(spec, flows) and (full_curve or path[-1]["faithful"]):
        candidates = [_closed(spec, flow, end) + (flow,) for flow, end in _closings(spec, flows)]
        if ranking is None:
            settings = {}
            for candidate, _, _ in candidates:
                settings.update(_setting(scorer, candidate))
            scored = scorer.score(settings)
            figures = [scored[c.describe()] for c, _, _ in candidates]
            best = max(range(len(candidates)), key=lambda i: (faithful(figures[i]), figures[i]["rel_change"], -figures[i]["retention"]))
            spec, layer, flow = candidates[best]
            chosen = figures[best]
        else:
            candidates.sort(key=lambda c: -ranking[(c[2], c[1])])
            tried = []
            for candidate in candidates[: len(candidates) if path[-1]["faithful"] else 1]:
                tried.append((scorer.score_pathway(candidate[0].describe(), candidate[0]), candidate))
                if faithful(tried[-1][0]):
                    break
            chosen, (spec, layer, flow) = max(tried, key=lambda t: (faithful(t[0]), t[0]["rel_change"]))
        path.append(row(spec, f"{FLOW_NAMES[flow]} @ {layer}", chosen))
        bar.update()
    bar.close()
    table = pd.DataFrame(path)
    unfaithful = table.index[~table.faithful]
    last = (int(unfaithful[0]) - 1) if len(unfaithful) else len(table) - 1  # the end of the first faithful run
    found = None
    if last >= 0:  # flows not searched stay closed
        found = PathwaySpec(**{f: (table.loc[last, f] if f in flows else None) for f in FLOWS}, n_layers=n_layers)
    return Discovery(found, table, full_accuracy, len(scorer.prompts), last if last >= 0 else None, flows=flows)


def _open(model, items: list, out, resume: bool, num_frames, rule: str, shard: Shard | None = None):
    """The results store of a search (None without ``out``): one row per (setting, sample), so any
    search over these samples, with any criteria, reads the rows another one wrote; and the
    per-sample values a search pools (``Scorer.per_sample``). A shard writes its own database in
    the folder and reads the others'."""
    if out is None:
        if shard is not None:
            raise InvalidInputError("shards of a search meet in its results folder: give out= (the same on every shard)")
        return None
    config = {"num_frames": num_frames, "rule": rule, "model": model_identity(model), "dtype": str(next(model.hf_model.parameters()).dtype)}
    return open_store(out, "discovery", config, [(i, item) for i, _, item in items], key=("setting", "sample_id"),
                      keys={PER_SAMPLE: ("name", "sample_id")}, resume=resume, shard=shard)  # fmt: skip


def discover(model, samples: Iterable, tolerance: float = 5.0, min_accuracy: float = 0.95, full_curve: bool = True,
             flows: Sequence[str] = PAPER_FLOWS, method: str = "exact", seeds: int = 0,
             preset: PathwaySpec | str | None = None, num_frames: int | None = 8, engine: str = "auto", rule: str = PAPER_RULE, out: str | Path | None = None,
             resume: bool = True, progress: bool = True, gate_steps: int = 30, sparsity: float = 0.5,
             shard: Shard | str | None = None) -> Discovery:  # fmt: skip
    """The smallest pathway that stays faithful on ``samples``, found by closing one layer at a
    time (see the module docstring), and the path to it.

    Args:
        tolerance: the largest mean drop (%) of the full model's top-token probability a faithful
            pathway may cause.
        min_accuracy: the share of the full model's accuracy (the paper's rule) it must keep.
        full_curve: go on closing layers past the last faithful step, down to every flow closed,
            so that ``path`` is the whole faithfulness-size curve (about twice the forwards).
        flows: the flows searched (the paper's three; ``PAPER_FLOWS + ("v2l",)`` lets video ->
            last open, which the paper's rule always blocks).
        method: "exact" (every closable layer scored by exact forwards at every step) or "atp" (the
            layers ranked once by attribution patching, ``attribution_ranking``, and tried in that
            order, exactly, until one stays faithful: about one candidate per step instead of up to
            two per flow) or "gates" (the same, in the order of learned continuous gates, one per
            flow and layer, trained with a sparsity penalty: ``gates``). Every figure of the path is
            exact either way.
        seeds: random pruning (the paper's rule: a share of each layer's causal edges at or after
            the video start, drawn uniformly) at the sizes of about ten steps of the path and of
            the found pathway, with this many seeds each, into ``found.curve``.
        preset: a ``PathwaySpec`` or preset name scored on the same samples into ``found.curve``
            ("auto": the preset measured on this model, if any).
        rule: the accuracy rule (``accuracy.RULES``; the paper's by default).
        out: a results folder: every scored (setting, sample) row is stored as it is computed and
            never computed again: a rerun of the same search replays its steps from the folder (one
            traced forward per sample, plus the ranking's backward with "atp", or the gates' training
            with "gates", whose order can then differ slightly and score a few new rows), and a search with
            other criteria, per task or per sample over the same questions reuses every row it shares.
        gate_steps, sparsity: with "gates": Adam steps (each a forward and backward on up to 8
            samples) and the penalty's weight on the share of the flows' edges kept
            (``gates.gate_logits``).
        shard: this process's share of a data-parallel search (a ``distributed.Shard``, "i/n" or
            "auto", as ``flow.sweep``; needs ``out``, the same folder for every shard): each shard
            scores and ranks its own samples and reads the others' figures from the folder at every
            step, so all shards take the same steps and return the same search (start them
            together). Not with "gates" (its gates learn from every sample's gradients).
    """
    items = identify_all(samples)
    if not items:
        raise InvalidInputError("no samples to discover a pathway on")
    return _search_groups(model, items, {"all": items}, tolerance, min_accuracy, full_curve, flows, method, seeds,
                          preset, num_frames, engine, rule, out, resume, progress, gate_steps, sparsity, shard)["all"]  # fmt: skip


def _search_groups(model, items: list, groups: dict[str, list], tolerance, min_accuracy, full_curve, flows, method,
                   seeds, preset, num_frames, engine, rule, out, resume, progress, gate_steps,
                   sparsity, shard=None, split: bool = False) -> dict[str, Discovery]:  # fmt: skip
    """One search per group of ``items`` (arguments checked once, one results folder for all).
    With a shard: ``split`` (one-sample groups) shares the groups out among the shards, each
    searched whole by one; otherwise every shard searches every group together with the others,
    taking the samples ``Shard.take`` gives it from the whole run."""
    flows = _check(tolerance, min_accuracy, flows)
    check_rule(rule)
    if method not in METHODS:
        raise InvalidInputError(f"method={method!r}: one of {METHODS}")
    check_count(seeds, "seeds", minimum=0, allow_none=False)
    check_count(gate_steps, "gate_steps", allow_none=False)
    if not sparsity >= 0:
        raise InvalidInputError(f"sparsity={sparsity!r}: the penalty's weight, a number >= 0")
    preset = resolve_preset(model, preset)
    shard = resolve_shard(shard)
    if shard is not None and method == "gates":
        raise InvalidInputError("method='gates' learns its gates from every sample's gradients and keeps them nowhere, "
                                "so it runs in one process: drop the shard, or shard method='atp' or 'exact'")  # fmt: skip
    if shard is not None and split:  # one-sample searches: each shard runs its share of them whole
        groups = {name: groups[name] for name in list(groups)[shard.index :: shard.count]}
    position = {sample_id: j for j, (sample_id, _, _) in enumerate(items)}
    store = _open(model, items, out, resume, num_frames, rule, shard)
    stored = store.rows("rows") if store is not None else []  # read once for all groups
    alone = len(groups) == 1
    found = {}
    try:
        with shard_failed(store.folder if store is not None else None, None if split else shard):
            for name, group in tqdm(groups.items(), desc="discovery per group", disable=not progress or alone):
                scorer = Scorer(model, group, num_frames, engine, store, progress and alone, rule, stored,
                                None if split else shard, [position[sample_id] for sample_id, _, _ in group])  # fmt: skip
                ranking = None
                if method == "atp":
                    ranking = attribution_ranking(scorer, flows, progress and alone)
                elif method == "gates":
                    ranking = gate_ranking(model, group, flows, num_frames, gate_steps, sparsity, progress and alone)
                found[name] = greedy(scorer, tolerance, min_accuracy, full_curve, flows, progress and alone, ranking)
                found[name].curve = baselines(scorer, found[name], preset, seeds)
    finally:
        if store is not None:
            store.close()
    return found


#: ``discover``'s settings and their defaults (``discover_each`` takes the same).
_DEFAULTS = dict(tolerance=5.0, min_accuracy=0.95, full_curve=True, flows=PAPER_FLOWS, method="exact", seeds=0, preset=None,
                 num_frames=8, engine="auto", rule=PAPER_RULE, out=None, resume=True, progress=True, gate_steps=30, sparsity=0.5,
                 shard=None)


def discover_each(model, samples: Iterable, by: str = "task", **kwargs) -> dict[str, Discovery]:
    """One ``discover`` per task (``by="task"``) or per sample (``by="sample"``), keyed by task name
    or sample id; ``kwargs`` as ``discover``'s (one results folder holds every search's rows).
    ``discovery.table(result)`` puts the found pathways side by side; its ``full_accuracy``
    column says where the full model was wrong (a one-sample search then keeps the wrong answer).
    With ``shard``, ``by="sample"`` shares the samples' searches out among the shards (each
    returns its own), ``by="task"`` runs each task's search on every shard together (each
    returns every task's)."""
    if by not in BY:
        raise InvalidInputError(f"by={by!r}: one of {BY} (discover itself pools every sample)")
    settings = {**_DEFAULTS, **kwargs}
    unknown = set(kwargs) - set(_DEFAULTS)
    if unknown:
        raise TypeError(f"discover_each() got unexpected arguments {sorted(unknown)}")
    items = identify_all(samples)
    groups: dict[str, list] = {}
    for item in items:
        groups.setdefault(item[1] if by == "task" else item[0], []).append(item)
    return _search_groups(model, items, groups, **settings, split=by == "sample")


def table(discoveries: dict[str, Discovery]) -> pd.DataFrame:
    """Found pathways side by side: one row per key of ``discover_each``'s result (``Discovery.summary``)."""
    return pd.DataFrame({name: found.summary() for name, found in discoveries.items()}).T
