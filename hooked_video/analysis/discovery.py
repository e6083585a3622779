"""Find a pathway from data instead of hand-setting it, at the paper's granularity.

A ``PathwaySpec`` opens three flows (cross-frame, video -> question, question -> last), each in
one range of layers; everything else of the union rule is blocked. ``discover`` starts with every
flow open in every layer and closes one layer at a time, always at an end of a range (so ranges
stay ranges), always the layer whose closing costs least, each candidate scored by exact forwards
over the samples (the sweep engine, candidates batched). The pathway it returns is the smallest
on that path that is still faithful: the mean relative change of the full model's top-token
probability stays above ``-tolerance`` percent and accuracy (the paper's rule) at or above
``min_accuracy`` x the full model's. The whole path is the faithfulness-size curve::

    found = discovery.discover(model, samples)          # also pathways.discover
    found.spec, found.path                              # the spec; one row per closed layer
    pathways.evaluate(model, samples, found.spec)       # its exact figures, as for any spec
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from hooked_video.analysis.accuracy import PAPER_RULE, option_prediction
from hooked_video.analysis.flow.sweep import choose_engine
from hooked_video.analysis.pathways import PathwaySpec, _Runner, count_edges
from hooked_video.core.checks import InvalidInputError
from hooked_video.data.mcqa import identify_all, to_prompt

FLOWS = ("inter", "v2q", "q2l")
FLOW_NAMES = {"inter": "cross-frame", "v2q": "video->question", "q2l": "question->last"}


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
        full_accuracy: the full model's accuracy on the samples (the paper's rule).
        samples: how many samples the figures are over.
        step: the row of ``path`` that ``spec`` is (None with no spec).
    """

    spec: PathwaySpec | None
    path: pd.DataFrame
    full_accuracy: float
    samples: int
    step: int | None = None

    def __repr__(self) -> str:
        found = "none" if self.spec is None else ", ".join(f"{f.upper()} {getattr(self.spec, f)}" for f in FLOWS)
        row = self.path.loc[self.step] if self.step is not None else None
        kept = f", keeps {row.retention:.1%} of the edges, accuracy {row.accuracy:.3f}" if row is not None else ""
        return (f"Discovery over {self.samples} samples: {found} (0-based){kept}; full accuracy "
                f"{self.full_accuracy:.3f}; {len(self.path)} steps in .path")  # fmt: skip


class _Scorer:
    """Exact figures of candidate specs over fixed prompts (one trace per prompt, kept)."""

    def __init__(self, model, prompts: list, engine: str) -> None:
        self.model, self.prompts, self.n_layers = model, prompts, model.cfg.n_layers
        self.runners = [_Runner(model, model.embed(p), choose_engine(model, engine, ())) for p in prompts]
        self.top, self.p_top, self.full_correct = [], [], []
        for prompt, runner in zip(prompts, self.runners):
            logits = runner.full()
            probs = logits[0, -1].float().softmax(-1)
            self.top.append(int(probs.argmax()))
            self.p_top.append(float(probs[self.top[-1]]))
            self.full_correct.append(option_prediction(logits, prompt, model.tokenizer, PAPER_RULE) == prompt.answer)
        self.cache: dict[tuple, dict] = {}

    @torch.no_grad()
    def score(self, specs: list[PathwaySpec]) -> list[dict]:
        new = list({_key(s): s for s in specs if _key(s) not in self.cache}.values())
        per_sample = {_key(s): [] for s in new}
        for i, (prompt, runner) in enumerate(zip(self.prompts, self.runners)):
            edges = [s.layer_edges(prompt.token_map, self.n_layers) for s in new]
            for spec, layer_edges, logits in zip(new, edges, runner.knocked_out_many(edges)):
                probs = logits.float().softmax(-1)
                counts = count_edges(layer_edges, prompt.n_positions)
                per_sample[_key(spec)].append({
                    "rel_change": (float(probs[self.top[i]]) - self.p_top[i]) / self.p_top[i] * 100,
                    "flipped": int(probs.argmax()) != self.top[i],
                    "correct": option_prediction(logits[None, None], prompt, self.model.tokenizer, PAPER_RULE) == prompt.answer,
                    "retained": counts.retained, "baseline": counts.baseline})  # fmt: skip
        for key, rows in per_sample.items():
            table = pd.DataFrame(rows)
            self.cache[key] = {"retention": table.retained.sum() / table.baseline.sum(),
                               "rel_change": table.rel_change.mean(), "flipped": table.flipped.mean(),
                               "accuracy": table.correct.mean()}  # fmt: skip
        return [self.cache[_key(s)] for s in specs]


def _key(spec: PathwaySpec) -> tuple:
    return tuple(getattr(spec, f) for f in FLOWS)


def _closings(spec: PathwaySpec) -> list[tuple[str, str]]:
    """(flow, "first" | "last") of every layer that can be closed next: an end of an open range."""
    return [(f, end) for f in FLOWS if getattr(spec, f) is not None for end in ("first", "last")
            if end == "first" or getattr(spec, f)[0] < getattr(spec, f)[1]]  # fmt: skip


def _closed(spec: PathwaySpec, flow: str, end: str) -> tuple[PathwaySpec, int]:
    """``spec`` with the first or last layer of ``flow``'s range closed, and that layer."""
    first, last = getattr(spec, flow)
    layer = first if end == "first" else last
    rest = None if first == last else ((first + 1, last) if end == "first" else (first, last - 1))
    ranges = {f: getattr(spec, f) for f in FLOWS}
    ranges[flow] = rest
    return PathwaySpec(**ranges, n_layers=spec.n_layers), layer


def discover(model, samples: Iterable, tolerance: float = 5.0, min_accuracy: float = 0.95, full_curve: bool = True,
             num_frames: int | None = 8, engine: str = "auto", progress: bool = True) -> Discovery:  # fmt: skip
    """The smallest pathway at the paper's granularity that stays faithful on ``samples``, found
    by closing one layer at a time (see the module docstring), and the path to it.

    ``tolerance``: the largest mean drop (%) of the full model's top-token probability a faithful
    pathway may cause; ``min_accuracy``: the share of the full model's accuracy it must keep.
    ``full_curve``: go on closing layers past the last faithful step, down to every flow closed,
    so that ``path`` is the whole faithfulness-size curve (about twice the forwards). Every
    figure is exact; pass ``found.spec`` to ``pathways.evaluate`` for the random baseline.
    """
    if not tolerance >= 0 or not 0 <= min_accuracy <= 1:
        raise InvalidInputError(f"tolerance (a percentage, >= 0) and min_accuracy (a share of the full model's accuracy, "
                                f"0..1) got {tolerance!r} and {min_accuracy!r}")  # fmt: skip
    items = identify_all(samples)
    if not items:
        raise InvalidInputError("no samples to discover a pathway on")
    n_layers = model.cfg.n_layers
    prompts = [to_prompt(model, item, num_frames) for _, _, item in tqdm(items, desc="preparing", disable=not progress)]
    scorer = _Scorer(model, prompts, engine)
    full_accuracy = float(np.mean(scorer.full_correct))

    def faithful(figures: dict) -> bool:
        return figures["rel_change"] >= -tolerance and figures["accuracy"] >= min_accuracy * full_accuracy - 1e-12

    spec = PathwaySpec(inter=(0, n_layers - 1), v2q=(0, n_layers - 1), q2l=(0, n_layers - 1), n_layers=n_layers)
    figures = scorer.score([spec])[0]
    path = [{"step": 0, **{f: getattr(spec, f) for f in FLOWS}, "closed": None, **figures, "faithful": faithful(figures)}]
    bar = tqdm(total=3 * n_layers, desc="closing layers", disable=not progress)
    while _closings(spec) and (full_curve or path[-1]["faithful"]):
        candidates = [_closed(spec, flow, end) for flow, end in _closings(spec)]
        scored = scorer.score([c for c, _ in candidates])
        best = max(range(len(candidates)), key=lambda i: (faithful(scored[i]), scored[i]["rel_change"], -scored[i]["retention"]))
        (spec, layer), figures = candidates[best], scored[best]
        flow = next(f for f in FLOWS if getattr(spec, f) != path[-1][f])
        path.append({"step": len(path), **{f: getattr(spec, f) for f in FLOWS}, "closed": f"{FLOW_NAMES[flow]} @ {layer}",
                     **figures, "faithful": faithful(figures)})  # fmt: skip
        bar.update()
    bar.close()
    table = pd.DataFrame(path)
    unfaithful = table.index[~table.faithful]
    last = (int(unfaithful[0]) - 1) if len(unfaithful) else len(table) - 1  # the end of the first faithful run
    found = PathwaySpec(**{f: table.loc[last, f] for f in FLOWS}, n_layers=n_layers) if last >= 0 else None
    return Discovery(found, table, full_accuracy, len(prompts), last if last >= 0 else None)
