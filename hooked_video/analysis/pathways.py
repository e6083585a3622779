"""Effective pathways: keep only the critical attention edges.

A ``PathwaySpec`` names the layers where three flows stay open: cross-frame interaction
(INTER), video -> question (V2Q) and question -> last (Q2L). Everything else of those families
is blocked, plus last -> last and video -> last everywhere, video -> video above V2Q and
question -> question above Q2L, all in one forward with per-layer masks::

    spec = PathwaySpec.preset("llava-next-7b-video-ft")     # or PathwaySpec(inter=(5, 14), ...)
    report = evaluate(model, dataset, spec, random_baseline=True, seed=0)
    report.accuracy, report.retention
"""

from __future__ import annotations

import numbers
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

import pandas as pd
import torch
from tqdm.auto import tqdm

from hooked_video.runtime import attention
from hooked_video.analysis import knockout as ko
from hooked_video.analysis.accuracy import PAPER_RULE, check_rule, option_prediction
from hooked_video.core.checks import InvalidInputError, check_count
from hooked_video.runtime.engine import Engine
from hooked_video.analysis.flow.records import last_position_probs
from hooked_video.analysis.flow.sweep import choose_engine
from hooked_video.data.mcqa import identify_all
from hooked_video.data.prefetch import PromptPreparer
from hooked_video.runtime.capture import stacked_on_host
from hooked_video.runtime.distributed import Shard, resolve_shard, wait_for_rows
from hooked_video.runtime.store import ResultsMismatchError, model_identity, open_store
from hooked_video.model.tokens import TokenMap
from hooked_video.analysis.random_pruning import (  # noqa: F401 (importable here, as before)
    RANDOM_DRAW, causal_edges, random_layer_edges, random_ranks, sample_seed)

Range = tuple[int, int] | None  # inclusive, 0-based; None: closed in every layer

#: The paper's ranges, each with the checkpoint it was measured on, that model's depth and
#: family, and the random-pruning fraction r its released script fixes (1 - the paper's retention).
PRESETS: dict[str, dict] = {
    "llava-next-7b-video-ft": dict(inter=(5, 14), v2q=(5, 19), q2l=(15, 24), n_layers=32, random_fraction=0.58,
                                   checkpoint="byminji/LLaVA-NeXT-7B-Video-FT", family="pllava"),
    "llava-next-13b-video-ft": dict(inter=(5, 14), v2q=(5, 19), q2l=(15, 29), n_layers=40, random_fraction=0.63,
                                    checkpoint="byminji/LLaVA-NeXT-13B-Video-FT", family="pllava"),
    "mini-internvl-4b-video-ft": dict(inter=(5, 14), v2q=(5, 19), q2l=(10, 29), n_layers=32, random_fraction=0.6,
                                      checkpoint="byminji/Mini-InternVL-4B-Video-FT", family="internvl"),
    "videollama3-7b": dict(inter=(0, 14), v2q=(5, 19), q2l=(20, 27), n_layers=28, random_fraction=0.42,
                           checkpoint="DAMO-NLP-SG/VideoLLaMA3-7B", family="video_llama_3"),
    # Not the paper's: the bundled toy trained to use exactly this pathway (hooked_video.zoo.planted).
    "toy-planted": dict(inter=(1, 3), v2q=(4, 7), q2l=(8, 10), n_layers=12, random_fraction=None,
                        checkpoint="toy-planted", family="llava_next_video"),
    # Not the paper's: the bundled toys' ranges read off their own knockout curves the paper's way
    # (PathwaySpec.from_sweep, threshold 10%, window 9, 20 synthetic temporal questions; benchmarks/discovery.py --toy-presets).
    "toy-video-ft": dict(inter=(0, 7), v2q=(0, 4), q2l=(7, 11), n_layers=12, random_fraction=None,
                         checkpoint="toy-video-ft", family="llava_next_video"),
    "toy16-video-ft": dict(inter=None, v2q=(0, 15), q2l=(4, 15), n_layers=16, random_fraction=None,
                           checkpoint="toy16-video-ft", family="llava_next_video"),
}
#: Presets that are only a sweep's reading (``from_sweep``) of a bundled toy: ``reproduce`` reads its own sweep instead.
SWEEP_READ_PRESETS = ("toy-video-ft", "toy16-video-ft")
RANDOM_FRACTIONS = ("run", "sample")

def preset_for(model) -> str | None:
    """The preset measured on ``model``: the one whose checkpoint name appears in the model's
    name (its hub id or folder), else None."""
    name = str(getattr(model.cfg, "model_name", "")).lower()
    return next((p for p, fields in PRESETS.items() if fields["checkpoint"].split("/")[-1].lower() in name), None)


#: Sweep conditions that define each family in ``PathwaySpec.from_sweep``.
SWEEP_CONDITIONS = {
    "inter": ("cross-frame", "cross-frame"),
    "v2q": ("vql-to-ql", "video->question"),
    "q2l": ("vql-to-ql", "question->last"),
}


#: The flows a ``PathwaySpec`` opens in a range of layers each (``v2l``: not the paper's).
FLOWS = ("inter", "v2q", "q2l", "v2l")


def _in(layer: int, r: Range) -> bool:
    return r is not None and r[0] <= layer <= r[1]


@dataclass(frozen=True)
class PathwaySpec:
    """Layer ranges (0-based, inclusive) where each flow stays open.

    Attributes:
        inter: cross-frame interaction among video tokens.
        v2q: video -> question (the question block with its options).
        q2l: question -> last position.
        n_layers: the model depth the ranges were chosen for (checked when applied), or None.
        random_fraction: the random baseline's pruned share r for this model (presets: the
            released scripts' value), or None (1 - the pathway run's retention).
        checkpoint, family: the model a preset was measured on (applying it to a model of
            another depth or family warns).
        v2l: video -> last, blocked in every layer by the paper's rule (None, the default); a
            range opens it there, for models that read the video straight into the last position.
    """

    inter: Range
    v2q: Range
    q2l: Range
    n_layers: int | None = None
    random_fraction: float | None = None
    checkpoint: str | None = None
    family: str | None = None
    v2l: Range = None

    def __post_init__(self) -> None:
        if self.random_fraction is not None:
            check_random_fraction(self.random_fraction)
        for family in FLOWS:
            r = getattr(self, family)
            if r is None:
                continue
            if isinstance(r, str) or not all(isinstance(x, numbers.Integral) and not isinstance(x, bool) for x in r):
                raise InvalidInputError(f"{family}={r!r}: a range is (first, last) of whole layer numbers, or None")
            r = tuple(int(x) for x in r)
            object.__setattr__(self, family, r)
            top = (self.n_layers or 10**9) - 1
            if len(r) != 2 or not 0 <= r[0] <= r[1] <= top:
                raise InvalidInputError(f"{family}={r}: a range is (first, last) with 0 <= first <= last <= n_layers - 1, "
                                        "or None")  # fmt: skip

    @classmethod
    def preset(cls, name: str) -> "PathwaySpec":
        """The paper's ranges for one of its models (see ``PRESETS``: each names the checkpoint
        it was measured on)."""
        if name not in PRESETS:
            raise KeyError(f"unknown preset {name!r}; presets: {sorted(PRESETS)}")
        return cls(**PRESETS[name])

    def check_model(self, model) -> None:
        """Warn when the spec was measured on a model of another depth or family than ``model``."""
        n_layers, family = model.cfg.n_layers, getattr(model.family, "name", None)
        source = self.checkpoint or "the model it was made for"
        if self.n_layers is not None and self.n_layers != n_layers:
            warnings.warn(f"these pathway ranges were measured on {source} ({self.n_layers} layers) but the model has "
                          f"{n_layers} layers; ranges do not transfer across depths: derive them from a sweep "
                          "of this model (PathwaySpec.from_sweep)", stacklevel=3)  # fmt: skip
        elif self.family is not None and family is not None and self.family != family:
            warnings.warn(f"these pathway ranges were measured on {source} (family {self.family!r}) but the model is "
                          f"of family {family!r}; derive ranges for it with PathwaySpec.from_sweep", stacklevel=3)  # fmt: skip

    @classmethod
    def from_sweep(cls, flow_df: pd.DataFrame, threshold: float = 10.0, value: str = "rel_change") -> "PathwaySpec":
        """Derive ranges from a ``flow.sweep`` DataFrame.

        Rule: for each family, take the mean ``value`` (relative change of the answer's
        probability, %) per swept layer of its sweep condition (INTER: cross-frame; V2Q:
        vql-to-ql video->question; Q2L: vql-to-ql question->last). The family's range runs from
        the first to the last swept layer whose mean drop exceeds ``threshold`` (mean <=
        -threshold), gaps included; a family that never drops that much gets no range (closed
        in every layer). The sweep must contain the cross-frame and vql-to-ql targets. The
        model's depth is taken from the sweep (``df.attrs["n_layers"]``) when it is known.
        """
        if flow_df.empty:
            n = len(flow_df.attrs.get("baseline", []))
            raise InvalidInputError(
                f"the sweep is empty: none of its {n} samples was knocked out (the sweep knocks out only the samples "
                "its select= keeps, by default those answered correctly); rerun it with select='all' (CLI: --select "
                "all) or with a model that answers some correctly"
            )
        ranges = {}
        for family, (target, condition) in SWEEP_CONDITIONS.items():
            rows = flow_df[(flow_df.target == target) & (flow_df.condition == condition)]
            if rows.empty:
                raise ValueError(f"the sweep has no {target}/{condition} rows; sweep targets ['cross-frame', 'vql-to-ql']")
            means = rows.groupby("layer")[value].mean()
            hurting = means.index[means <= -threshold]
            ranges[family] = (int(hurting.min()), int(hurting.max())) if len(hurting) else None
        return cls(**ranges, n_layers=flow_df.attrs.get("n_layers"))

    def blocked_layers(self, n_layers: int) -> dict[str, list[int]]:
        """Each family of the union rule (the names of ``families``) -> the layers it is blocked in."""
        layers = range(n_layers)
        top_v2q = self.v2q[1] if self.v2q else -1
        top_q2l = self.q2l[1] if self.q2l else -1
        return {"cross-frame": [l for l in layers if not _in(l, self.inter)],
                "video->question": [l for l in layers if not _in(l, self.v2q)],
                "question->last": [l for l in layers if not _in(l, self.q2l)],
                "last->last": list(layers), "video->last": [l for l in layers if not _in(l, self.v2l)],
                "video->video": [l for l in layers if l > top_v2q],
                "question->question": [l for l in layers if l > top_q2l]}  # fmt: skip

    def families(self, tm: TokenMap, n_layers: int) -> list[tuple[str, ko.EdgeSet, list[int]]]:
        """The union rule's edge families, each as (name, edges, the layers it is blocked in, maybe
        none): their union in a layer is that layer's ``layer_edges``."""
        video = tm.video_group  # video tokens and their frames' text
        edges = {"cross-frame": ko.cross_frame(tm), "video->question": ko.between(video, tm.question, tm),
                 "question->last": ko.between(tm.question, tm.last, tm), "last->last": ko.self_edges(tm.last, tm),
                 "video->last": ko.between(video, tm.last, tm), "video->video": ko.within(video, tm),
                 "question->question": ko.within(tm.question, tm)}  # fmt: skip
        return [(name, edges[name], layers) for name, layers in self.blocked_layers(n_layers).items()]

    def open_groups(self, tm: TokenMap) -> list[tuple[str, ko.EdgeSet, list[int]]]:
        """The pathway's own flows in the layers they stay open, as (name, edges, layers):
        cross-frame in INTER, video -> question in V2Q, question -> last in Q2L, video -> last in
        V2L (a closed flow is left out). Knocking one of them out is how a pathway is shown to be
        needed."""
        flows = [("cross-frame", ko.cross_frame(tm), self.inter),
                 ("video->question", ko.between(tm.video_group, tm.question, tm), self.v2q),
                 ("question->last", ko.between(tm.question, tm.last, tm), self.q2l),
                 ("video->last", ko.between(tm.video_group, tm.last, tm), self.v2l)]  # fmt: skip
        return [(name, edges, list(range(r[0], r[1] + 1))) for name, edges, r in flows if r is not None]

    def settings(self) -> dict:
        """The spec as a results folder records it (``v2l`` only where it is open, so folders
        written before it existed still resume)."""
        fields = asdict(self)
        if fields["v2l"] is None:
            del fields["v2l"]
        return fields

    def describe(self) -> str:
        """One line: each flow's range (0-based, inclusive), e.g. ``INTER 5-14, V2Q 5-19, Q2L 15-24``."""
        flows = FLOWS if self.v2l is not None else FLOWS[:3]
        return ", ".join(f"{f.upper()} " + (f"{r[0]}-{r[1]}" if (r := getattr(self, f)) else "closed") for f in flows)

    def layer_edges(self, tm: TokenMap, n_layers: int) -> dict[int, ko.EdgeSet]:
        """Blocked edges of every layer: the union rule of the effective pathways."""
        families = [(edges.mask, set(layers)) for _, edges, layers in self.families(tm, n_layers)]
        edges = {}
        for layer in range(n_layers):
            mask = torch.zeros(tm.n_positions, tm.n_positions, dtype=torch.bool)
            for family, blocked_in in families:
                if layer in blocked_in:
                    mask |= family
            edges[layer] = ko.EdgeSet(mask)
        return edges


# ----- edge accounting and the random baseline --------------------------------------------------
@dataclass
class EdgeCount:
    """Edges of one prompt over all layers (one head; heads are not multiplied in)."""

    retained: int
    baseline: int

    @property
    def retention(self) -> float:
        return self.retained / self.baseline


def count_edges(layer_edges: dict[int, ko.EdgeSet], n_positions: int) -> EdgeCount:
    """Retained (allowed) and baseline (causal) edges summed over layers."""
    per_layer = causal_edges(n_positions)
    sums = [e.mask.sum() for e in layer_edges.values()]  # one host read for all layers, not one each
    blocked = int(stacked_on_host(sums).sum()) if sums else 0
    return EdgeCount(per_layer * len(layer_edges) - blocked, per_layer * len(layer_edges))


# ----- evaluation ----------------------------------------------------------------------------------
def check_random_fraction(value) -> float | str:
    """A random-pruning fraction: a number in [0, 1), "run" or "sample"."""
    if isinstance(value, str):
        if value not in RANDOM_FRACTIONS:
            raise ValueError(f"random_fraction must be a number in [0, 1), 'run' or 'sample', got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f"random_fraction must be a number in [0, 1) (the share of each layer's edges to block), "
                         f"'run' or 'sample', got {value!r}")  # fmt: skip
    return float(value)


@dataclass
class PathwayReport:
    """Multiple-choice accuracy with full attention, the pathways, and the random baseline.

    Attributes:
        rows: one row per sample (predictions and edge counts per setting).
        accuracy: rows = tasks plus "overall", columns = settings (full, pathways, random).
        retention: per setting: mean retained and baseline edges per sample, and their ratio.
        rule: the accuracy rule (``accuracy.RULES``).
        faithfulness: with ``evaluate(..., faithfulness=True)``, the tidy table of ``faithfulness``.
    """

    rows: pd.DataFrame
    spec: PathwaySpec
    rule: str = PAPER_RULE
    faithfulness: pd.DataFrame | None = None
    accuracy: pd.DataFrame = field(init=False)
    retention: pd.DataFrame = field(init=False)

    def __post_init__(self) -> None:
        settings = [s for s in ("full", "pathways", "random") if f"{s}_correct" in self.rows]
        by_task = self.rows.groupby("task")[[f"{s}_correct" for s in settings]].mean()
        by_task.loc["overall"] = self.rows[[f"{s}_correct" for s in settings]].mean()
        by_task.columns = settings
        by_task.attrs["rule"] = self.rule
        self.accuracy = by_task
        records = []
        for s in settings:
            if f"{s}_retained" in self.rows:
                retained, baseline = self.rows[f"{s}_retained"].mean(), self.rows[f"{s}_baseline"].mean()
                records.append({"setting": s, "retained": retained, "baseline": baseline, "retention": retained / baseline})
        self.retention = pd.DataFrame(records).set_index("setting")

    def __repr__(self) -> str:
        return (f"PathwayReport({len(self.rows)} samples, accuracy rule {self.rule!r})\n{self.accuracy.round(3)}\n"
                f"{self.retention.round(3)}")  # fmt: skip


def _prediction(model, prompt, logits: torch.Tensor, setting: str, rule: str) -> dict:
    return {f"{setting}_pred": option_prediction(logits, prompt, model.tokenizer, rule),
            f"{setting}_token": int(logits[0, -1].argmax())}  # fmt: skip


class _Runner:
    """Last-position logits of one embedded prompt under per-layer edge sets: the sweep engine
    (recomputes only the affected rows and layers) or, with ``engine=None``, knockout hooks."""

    def __init__(self, model, embedded, engine: Engine | None) -> None:
        self.model, self.embedded = model, embedded
        self.engine = engine
        self.trace = engine.trace(embedded) if engine is not None else None

    @property
    def device(self) -> torch.device:
        """Where edge masks are best built (the first layer's device)."""
        return self.trace.resid[0].device if self.trace is not None else next(self.model.hf_model.parameters()).device

    def full(self) -> torch.Tensor:
        if self.trace is not None:
            return self.trace.logits[None, None]
        with attention.reference_attention():
            return self.model(self.embedded, logits_to_keep=1)

    def knocked_out(self, edges: dict[int, ko.EdgeSet]) -> torch.Tensor:
        return self.knocked_out_many([edges], lanes=1)[0][None, None]

    def knocked_out_many(self, edge_sets: list[dict[int, ko.EdgeSet]], lanes: int = 8) -> list[torch.Tensor]:
        """Last-position logits (vocab,) under each per-layer edge set; the engine runs up to
        ``lanes`` of them side by side."""
        if self.engine is None:  # the reference path throughout, as full()
            with attention.reference_attention():
                return [self.model.run_with_hooks(self.embedded, fwd_hooks=ko.hooks(edges), logits_to_keep=1)[0, -1]
                        for edges in edge_sets]  # fmt: skip
        device = self.trace.resid[0].device
        interventions = [{l: e.mask.to(device) for l, e in edges.items()} for edges in edge_sets]
        out: list = [None] * len(edge_sets)
        for indices, logits in self.engine.run(self.trace, interventions, max_rows=lanes * self.trace.n_positions):
            for index, row in zip(indices, logits):
                out[index] = row
        return out


@torch.no_grad()
def evaluate_prompt(model, prompt, spec: PathwaySpec, random_baseline: bool = True, random_fraction: float | None = None,
                    seed: int = 0, sample_id: str = "0", rule: str = PAPER_RULE, engine: str = "auto") -> dict:  # fmt: skip
    """Predictions and edge counts of one prompt under full attention, the pathways and random pruning.

    ``random_fraction`` is the share of each layer's causal edges the random baseline blocks
    (None: this sample's own pathway pruned share). Predictions follow ``rule``; ``engine`` as
    in ``flow.sweep``.
    """
    tm, n_layers = prompt.token_map, model.cfg.n_layers
    runner = _Runner(model, model.embed(prompt), choose_engine(model, engine, ()))
    row = _prediction(model, prompt, runner.full(), "full", rule)
    edges = spec.layer_edges(tm, n_layers)
    counts = count_edges(edges, tm.n_positions)
    row.update(pathways_retained=counts.retained, pathways_baseline=counts.baseline, full_retained=counts.baseline,
               full_baseline=counts.baseline)  # fmt: skip
    settings = {"pathways": edges}
    if random_baseline:
        fraction = 1 - counts.retention if random_fraction is None else random_fraction
        settings["random"], random_counts = _random_draw(tm, n_layers, fraction, seed, sample_id, runner.device)
        row.update(random_counts)
    logits = runner.knocked_out_many(list(settings.values()), lanes=len(settings))  # side by side
    for name, last in zip(settings, logits):
        row.update(_prediction(model, prompt, last[None, None], name, rule))
    return row


def evaluate(model, samples: Iterable, spec: PathwaySpec, random_baseline: bool = True, random_fraction: float | str | None = None,
             seed: int = 0, num_frames: int | None = 8, out: str | Path | None = None, resume: bool = True,
             rule: str = PAPER_RULE, engine: str = "auto", progress: bool = True,
             shard: Shard | str | None = None, faithfulness: bool = False) -> PathwayReport:  # fmt: skip
    """Accuracy of full attention vs the effective pathways (vs random pruning) over a dataset.

    The random baseline blocks, per layer, ``int(r * N(N+1)/2)`` edges. ``random_fraction``
    sets r: a number (e.g. the paper's 0.58 for the 7B); "run": 1 - retention of the whole
    pathway run (it then runs after the pathway pass of every sample); "sample": each sample's
    own pruned share; None (default): the spec's ``random_fraction`` (presets carry the value
    the released scripts fix per model), else "run".

    Accuracy follows ``rule``: "vocab-argmax" (the paper's: the argmax over the full
    vocabulary must be the true letter) or "option-argmax". Each sample costs one vision pass
    and a forward per setting, the pruned settings side by side (``engine`` as in
    ``flow.sweep``); with ``random_fraction="run"`` the random baseline is a second pass over
    the samples, as its fraction needs them all. The random edges are drawn where the model
    runs (``random_layer_edges``; the same on every device).
    With ``out``, rows are stored as they are computed and a rerun resumes. ``shard``: a share
    of a data-parallel run (see ``flow.sweep``); with ``random_fraction="run"`` each shard waits
    for all shards' pathway rows, so every shard draws the same fraction as one process would.
    ``faithfulness=True`` also runs ``faithfulness`` (a table of the same store) into
    ``report.faithfulness``.
    """
    check_rule(rule)
    check_count(seed, "seed", minimum=0, allow_none=False)
    spec.check_model(model)
    if random_fraction is None:
        random_fraction = spec.random_fraction if spec.random_fraction is not None else "run"
    random_fraction = check_random_fraction(random_fraction)
    shard = resolve_shard(shard)
    items = identify_all(samples)
    all_ids = [sample_id for sample_id, _, _ in items]
    items = shard.take(items) if shard is not None else items
    store = None
    if out is not None:
        config = {"spec": spec.settings(), "random_baseline": random_baseline, "random_fraction": random_fraction,
                  "random_draw": RANDOM_DRAW, "seed": seed,
                  "num_frames": num_frames, "rule": rule, "model": model_identity(model),
                  "dtype": str(next(model.hf_model.parameters()).dtype)}  # fmt: skip
        store = open_store(out, "pathways.evaluate", config, [(i, item) for i, _, item in items], key=("sample_id",),
                           resume=resume, shard=shard)  # fmt: skip
    in_one_pass = random_fraction != "run"  # the random draw needs no other sample: it runs beside the pathway
    fixed = random_fraction if isinstance(random_fraction, float) else None
    try:
        rows = _run_phase(model, items, store, "rows", "pathway evaluation", progress, lambda prompt, sid: {
            "answer": prompt.answer, "n_positions": prompt.n_positions,
            **evaluate_prompt(model, prompt, spec, random_baseline and in_one_pass, fixed, seed, sid, rule, engine)}, num_frames)  # fmt: skip
        if random_baseline and not in_one_pass and rows:
            # over all samples: shards wait for each other's pathway rows
            every = wait_for_rows(store, "rows", all_ids) if shard is not None and store is not None else rows
            fraction = 1 - sum(r["pathways_retained"] for r in every) / sum(r["pathways_baseline"] for r in every)
            _check_stored_fraction(store, fraction)
            random_rows = _run_phase(model, items, store, "random", "random baseline", progress,
                                     lambda prompt, sid: random_prompt(model, prompt, fraction, seed, sid, rule, engine=engine),
                                     num_frames)  # fmt: skip
            by_id = {r["sample_id"]: r for r in random_rows}
            rows = [{**r, **{k: v for k, v in by_id[r["sample_id"]].items() if k.startswith("random")}} for r in rows]
        cuts = None
        if faithfulness:
            cuts = _faithfulness_table(_run_phase(model, items, store, "faithfulness", "pathway faithfulness", progress,
                                                  _faithfulness_row(model, spec, engine), num_frames))  # fmt: skip
    finally:
        if store is not None:
            store.close()
    for row in rows:
        for setting in ("full", "pathways", "random"):
            if f"{setting}_pred" in row:
                row[f"{setting}_correct"] = row[f"{setting}_pred"] == row["answer"]
    return PathwayReport(pd.DataFrame(rows), spec, rule, cuts)


def _check_stored_fraction(store, fraction: float) -> None:
    """Random-baseline rows stored with another pruned share (a "run" fraction over other samples)
    must not be mixed with new ones."""
    if store is None:
        return
    stored = sorted({r["random_fraction"] for r in store.rows("random") if abs(r["random_fraction"] - fraction) > 1e-9})
    if stored:
        raise ResultsMismatchError(
            f"{store.folder} holds random-baseline rows that prune r = {stored[0]:.6f} of the edges, but these samples "
            f"give r = {fraction:.6f} (random_fraction='run' is 1 - the retention over all of the run's samples, and "
            "they changed); use another folder, start over (--fresh, resume=False), or a fixed --random-fraction"
        )  # fmt: skip


@torch.no_grad()
def random_prompt(model, prompt, fraction: float, seed: int, sample_id: str, rule: str = PAPER_RULE, runner=None,
                  engine: str = "auto") -> dict:  # fmt: skip
    """Prediction and edge counts of one prompt with random pruning of ``fraction`` per layer
    (``runner``: the prompt's runner, if already built)."""
    runner = runner or _Runner(model, model.embed(prompt), choose_engine(model, engine, ()))
    edges, counts = _random_draw(prompt.token_map, model.cfg.n_layers, fraction, seed, sample_id, runner.device)
    return {**_prediction(model, prompt, runner.knocked_out(edges), "random", rule), **counts}


def _random_draw(tm: TokenMap, n_layers: int, fraction: float, seed: int, sample_id: str, device) -> tuple[dict, dict]:
    """One sample's random-pruning edges (built on ``device``) and their row fields."""
    edges = random_layer_edges(tm, n_layers, fraction, sample_seed(seed, sample_id), device=device)
    counts = count_edges(edges, tm.n_positions)
    return edges, {"random_retained": counts.retained, "random_baseline": counts.baseline, "random_fraction": fraction}


def _run_phase(model, items, store, table: str, desc: str, progress: bool, compute, num_frames) -> list[dict]:
    """One row per sample from ``compute(prompt, sample_id)``, resuming from ``store``'s ``table``."""
    done = {r["sample_id"]: r for r in store.rows(table)} if store is not None else {}
    rows = []
    with PromptPreparer(model, items, num_frames, wanted=lambda sample_id: sample_id not in done) as preparer:
        for sample_id, task, _ in tqdm(items, desc=desc, disable=not progress):
            if sample_id not in done:
                row = {"sample_id": sample_id, "task": task, **compute(preparer.prompt(sample_id), sample_id)}
                if store is not None:
                    store.add(table, [row])
                done[sample_id] = row
            rows.append(done[sample_id])
    return rows


# ----- is a pathway enough, and is each of its flows needed? ---------------------------------------
@torch.no_grad()
def faithfulness_prompt(model, prompt, spec: PathwaySpec, engine: str = "auto") -> dict:
    """One prompt's row of ``faithfulness``: for "outside" (every edge the pathway blocks, as
    ``evaluate`` blocks them) and each "cut <flow>" (one of the pathway's flows knocked out in its
    open layers, nothing else), the relative change (%) of the probability of the full model's
    top token, whether the top token changed, and the predicted option (paper's rule)."""
    tm, n_layers = prompt.token_map, model.cfg.n_layers
    runner = _Runner(model, model.embed(prompt), choose_engine(model, engine, ()))
    full_logits = runner.full()
    full = last_position_probs(full_logits)[0]
    token = int(full.argmax())
    row = {"p_top": float(full[token]), **_prediction(model, prompt, full_logits, "full", PAPER_RULE)}
    settings = {"outside": spec.layer_edges(tm, n_layers)}
    settings.update({f"cut {name}": dict.fromkeys(layers, edges) for name, edges, layers in spec.open_groups(tm)})
    for setting, edges in settings.items():
        logits = runner.knocked_out(edges)
        probs = last_position_probs(logits)[0]
        row.update({f"{setting}|rel_change": (float(probs[token]) - row["p_top"]) / row["p_top"] * 100,
                    f"{setting}|flipped": int(probs.argmax()) != token,
                    f"{setting}|pred": option_prediction(logits, prompt, model.tokenizer, PAPER_RULE)})  # fmt: skip
    return row


def faithfulness(model, samples: Iterable, spec: PathwaySpec, num_frames: int | None = 8, engine: str = "auto",
                 progress: bool = True, out: str | Path | None = None, resume: bool = True) -> pd.DataFrame:  # fmt: skip
    """Is ``spec`` sufficient (blocking everything outside it changes nothing) and is each of its
    flows necessary (cutting it alone hurts)? Exact forwards, one per setting per sample.

    Returns a tidy DataFrame, one row per sample and setting ("outside", "cut cross-frame",
    "cut video->question", "cut question->last"; closed flows are left out): ``rel_change`` (%
    change of the full model's top-token probability, the sweep's metric), ``flipped`` (the top
    token changed), ``correct`` (the prediction under the setting is the true option) and
    ``full_correct``. ``df.groupby("setting")[["rel_change", "flipped", "correct"]].mean()``
    summarises it. With ``out``, rows are stored as they are computed and a rerun resumes.
    """
    spec.check_model(model)
    items = identify_all(samples)
    store = None
    if out is not None:
        config = {"spec": spec.settings(), "num_frames": num_frames, "model": model_identity(model),
                  "dtype": str(next(model.hf_model.parameters()).dtype)}  # fmt: skip
        store = open_store(out, "pathways.faithfulness", config, [(i, item) for i, _, item in items], key=("sample_id",),
                           resume=resume)  # fmt: skip
    try:
        rows = _run_phase(model, items, store, "rows", "pathway faithfulness", progress,
                          _faithfulness_row(model, spec, engine), num_frames)  # fmt: skip
    finally:
        if store is not None:
            store.close()
    return _faithfulness_table(rows)


def _faithfulness_row(model, spec: PathwaySpec, engine: str):
    return lambda prompt, sample_id: {"answer": prompt.answer, **faithfulness_prompt(model, prompt, spec, engine)}


def _faithfulness_table(rows: list[dict]) -> pd.DataFrame:
    """Wide per-sample rows (``setting|field`` columns) -> one row per sample and setting."""
    tidy = []
    for row in rows:
        for setting in dict.fromkeys(k.split("|")[0] for k in row if "|" in k):
            tidy.append({"sample_id": row["sample_id"], "task": row["task"], "setting": setting,
                         "rel_change": row[f"{setting}|rel_change"], "flipped": row[f"{setting}|flipped"],
                         "correct": row[f"{setting}|pred"] == row["answer"], "full_correct": row["full_pred"] == row["answer"]})  # fmt: skip
    return pd.DataFrame(tidy, columns=["sample_id", "task", "setting", "rel_change", "flipped", "correct", "full_correct"])
