"""Information-flow sweeps: knock out edge families layer by layer, for every sample.

For every sample the vision pathway runs once (``model.embed``), the baseline runs once, and
each (condition, swept layer) pass blocks the condition's edges in the layers of its window.

    df = flow.sweep(model, samples, targets=["cross-frame", "vql-to-ql"], window=9, out="runs/a")
    flow.summarize(df)                      # mean relative change and bootstrap 95% CI, per task
    flow.accuracy_under_knockout(df)        # accuracy over all samples, per task, condition and layer

Rows are written to ``out`` as they are computed; running the same call again resumes where it
stopped, without losing or duplicating a row.
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import pandas as pd
import torch
from tqdm.auto import tqdm

from hooked_video.runtime import attention
from hooked_video.analysis import knockout as ko
from hooked_video.analysis.accuracy import PAPER_RULE, check_rule
from hooked_video.core.checks import InvalidInputError, check_count
from hooked_video.data.mcqa import identify_all
from hooked_video.data.prefetch import PromptPreparer
from hooked_video.analysis.flow.records import (
    baseline_record,
    check_selection,
    is_selected,
    knockout_records,
    last_position_probs,
)
from hooked_video.runtime.distributed import Shard, resolve_shard
from hooked_video.runtime.engine import Engine
from hooked_video.analysis.flow.targets import TARGETS, resolve_targets
from hooked_video.runtime.store import load_results, model_identity, open_store

ENGINES = ("auto", "fast", "compiled", "hooks")

ROW_KEY = ("sample_id", "target", "condition", "layer")
COLUMNS = ["sample_id", "task", "target", "condition", "layer", "window_start", "window_end", "n_blocked_layers",
           "p_base", "p_knockout", "rel_change", "p_gt_base", "p_gt_knockout", "rel_change_gt",
           "answer_token", "new_answer_token", "new_answer", "correct"]  # fmt: skip


@dataclass(frozen=True)
class Pass:
    """One knockout pass: a condition's edges blocked in ``blocked`` layers for swept ``layer``."""

    target: str
    condition: str
    layer: int
    blocked: tuple[int, ...]


def plan_passes(targets: Mapping[str, Mapping], swept: Sequence[int], n_layers: int, window: int, style: str,
                even: str) -> list[Pass]:  # fmt: skip
    """Every (target, condition, swept layer) pass with the layers its window blocks."""
    check_count(window, "window")
    if not len(swept):
        raise InvalidInputError("layers is empty: give the swept layers (e.g. range(5, 20)), or None for all")
    for layer in swept:
        check_count(layer, "a swept layer", minimum=0, allow_none=False)
        if not 0 <= layer < n_layers:
            raise InvalidInputError(f"swept layer {layer} is outside layers 0..{n_layers - 1}")
    windows = {l: tuple(ko.window(l, window, n_layers, style=style, even=even)) for l in swept}
    return [Pass(t, c, l, windows[l]) for t, conds in targets.items() for c in conds for l in swept]


def run_passes_with_hooks(model, embedded, passes: Sequence[Pass], edges: Mapping[tuple, ko.EdgeSet], n_layers: int,
                          batch_size: int, extra_hooks=(), heads: Sequence[int] | None = None,
                          ) -> Iterable[tuple[list[Pass], torch.Tensor]]:  # fmt: skip
    """The TransformerLens path: batched forwards with knockout hooks on ``hook_attn_scores``
    (each batch item carries its own edge set and layer flags; ``heads``: block in these heads
    only); yields (passes, probs on the model's device). Every block runs the reference path, as the baseline does, so
    that in half precision a knockout's
    probability and its baseline share one arithmetic (blocks without hooks would otherwise take
    the fast path and round differently)."""
    for start in range(0, len(passes), batch_size):
        chunk = list(passes[start : start + batch_size])
        stacked = ko.EdgeSet.stack([edges[(p.target, p.condition)] for p in chunk])
        active = torch.zeros(len(chunk), n_layers, dtype=torch.bool)
        for i, p in enumerate(chunk):
            active[i, list(p.blocked)] = True
        hooks = ko.hooks(stacked, active, heads=heads) + list(extra_hooks)
        with attention.reference_attention():
            logits = model.run_with_hooks(embedded.expand(len(chunk)), fwd_hooks=hooks, logits_to_keep=1)
        yield chunk, last_position_probs(logits)


def run_passes_with_engine(engine: Engine, trace, passes: Sequence[Pass], edges: Mapping[tuple, ko.EdgeSet],
                           max_rows: int) -> Iterable[tuple[list[Pass], torch.Tensor]]:  # fmt: skip
    """The sweep engine: only the rows and layers a knockout changes are recomputed; yields
    (passes, probs on the model's device) chunk by chunk."""
    device = trace.resid[0].device
    masks = {key: e.mask.to(device) for key, e in edges.items()}
    interventions = [{l: masks[(p.target, p.condition)] for l in p.blocked} for p in passes]
    for indices, logits in engine.run(trace, interventions, max_rows):
        yield [passes[i] for i in indices], last_position_probs(logits[:, None])


#: Samples from which ``engine="auto"`` compiles the engine on a GPU: at the 7B shape on one H200
#: compilation took 28 s more than the first uncompiled sweep and saved 0.03-0.19 s per sample
#: over two runs (benchmarks/results.md), so it pays from 150 to 850 samples.
AUTO_COMPILE_SAMPLES = 500


def choose_engine(model, engine: str, fwd_hooks: Sequence, n_samples: int | None = None) -> Engine | None:
    """The sweep engine a sweep runs on, or None for the hook path: "auto" takes the engine when
    no user hook is involved, compiled when ``n_samples`` (a sweep's length) reaches
    ``AUTO_COMPILE_SAMPLES`` on a GPU; "fast" and "compiled" insist on it (compiled:
    ``torch.compile``)."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if engine == "hooks" or (engine == "auto" and fwd_hooks):
        return None
    usable = Engine.usable(model)
    if engine in ("fast", "compiled") and (fwd_hooks or not usable):
        raise ValueError(f"engine={engine!r} needs a model without registered hooks and no fwd_hooks; use engine='hooks'")
    if not usable:
        return None
    device = next(model.hf_model.parameters()).device.type
    compile = engine == "compiled" or (engine == "auto" and auto_compiles(device, n_samples))
    if engine == "auto" and compile:
        tqdm.write(f"hooked-video: {n_samples} samples on the GPU: the sweep runs on the compiled engine "
                   "(engine='auto'; engine='fast' skips the compilation)", file=sys.stderr)  # fmt: skip
    return Engine(model, compile=compile)


def auto_compiles(device_type: str, n_samples: int | None) -> bool:
    """Whether ``engine="auto"`` compiles: on a GPU, for a sweep of ``AUTO_COMPILE_SAMPLES`` or more
    (on the CPU compilation rarely pays)."""
    return device_type == "cuda" and (n_samples or 0) >= AUTO_COMPILE_SAMPLES


def engine_name(runner: Engine | None) -> str:
    """"hooks", "fast" or "compiled": what a sweep ran on."""
    return "hooks" if runner is None else "compiled" if runner.compile else "fast"


@torch.no_grad()
def sweep(
    model,
    samples: Iterable,
    targets: Sequence[str | Mapping] | str = tuple(TARGETS),
    window: int = 9,
    layers: Sequence[int] | None = None,
    select: str = "correct",
    out: str | Path | None = None,
    resume: bool = True,
    batch_size: int = 8,
    num_frames: int | None = 8,
    window_style: str = "center",
    even_window: str = "above",
    rule: str = PAPER_RULE,
    fwd_hooks: Sequence = (),
    engine: str = "auto",
    progress: bool = True,
    shard: Shard | str | None = None,
) -> pd.DataFrame:
    """Knock out each target's conditions around each swept layer, for every sample.

    Args:
        model: a HookedVideoLLM.
        samples: data ``Sample``s or dicts (video, question, options, answer, id), or
            VideoPrompts (identified by their index in ``samples``: keep the order to resume).
        targets: paper target names (``TARGETS``) and/or ``{target: {condition: fn(tm) -> EdgeSet}}``.
        window: k, the number of layers blocked around each swept layer (clipped at the ends).
        layers: swept layers (default: all; e.g. ``range(5, 20)`` for a swept-layer range).
        select: which samples are knocked out: "correct" (the paper's default), "wrong", or
            "all". Baselines are recorded for every sample.
        out: results folder; a second call with the same settings resumes.
        resume: False starts over in ``out``.
        batch_size: knockout passes per forward (the engine: rows of this many full passes
            per recomputed layer).
        num_frames: frames sampled per video for samples given as files.
        window_style: "center" (the paper's), "inverse", "top_down" or "bottom_up"
            (``knockout.WINDOW_STYLES``).
        even_window: for an even ``window``, put the extra layer "above" the centre or "below"
            it (the released code's rule).
        rule: the accuracy rule that decides "correct" (``accuracy.RULES``; the paper's
            "vocab-argmax" by default).
        fwd_hooks: extra TransformerLens hooks applied in every pass (baseline included); they
            run on the TransformerLens hook path.
        engine: "auto" (default: the sweep engine, which recomputes only what a knockout
            changes, unless hooks are involved; compiled on a GPU from ``AUTO_COMPILE_SAMPLES``
            samples, saying so in one line; ``df.attrs["engine"]`` records the choice), "fast"
            (the engine, or an error), "compiled"
            (the engine with its decoder layers through ``torch.compile``: faster on a GPU for
            long runs, after a compilation of tens of seconds) or "hooks" (batched forwards
            with knockout hooks on ``hook_attn_scores``, the reference).
        shard: this process's share of a data-parallel run: a ``distributed.Shard``, "i/n", or
            "auto" (torchrun / accelerate's RANK and WORLD_SIZE). It takes every n-th sample and
            writes to its own store under ``out``; ``load(out)`` merges the shards.

    Returns:
        One row per sample x condition x swept layer (``layer`` is 0-based; the paper plots it
        at layer + 1), with p_base, p_knockout, rel_change, the same for the ground-truth letter
        (``*_gt``), the new argmax and whether it is correct. ``df.attrs["baseline"]`` holds
        the baseline records of all samples.
    """
    check_selection(select)
    check_rule(rule)
    resolved = resolve_targets(targets)
    n_layers = model.cfg.n_layers
    swept = list(range(n_layers)) if layers is None else list(layers)
    passes = plan_passes(resolved, swept, n_layers, window, window_style, even_window)
    check_count(batch_size, "batch_size")
    shard = resolve_shard(shard)
    items = identify_all(samples)
    items = shard.take(items) if shard is not None else items
    runner = choose_engine(model, engine, fwd_hooks, n_samples=len(items))
    store = None
    if out is not None:  # engine "fast" also when compiled: a run may resume either way
        config = {"targets": {t: list(c) for t, c in resolved.items()}, "window": window, "window_style": window_style,
                  "even_window": even_window, "layers": swept, "select": select, "rule": rule, "num_frames": num_frames,
                  "model": model_identity(model), "n_layers": n_layers,
                  "dtype": str(next(model.hf_model.parameters()).dtype), "extra_hooks": len(fwd_hooks),
                  "engine": "hooks" if runner is None else "fast"}  # fmt: skip
        store = open_store(out, "flow.sweep", config, [(i, item) for i, _, item in items], key=ROW_KEY,
                           keys={"baseline": ("sample_id",)}, resume=resume, shard=shard)  # fmt: skip
    try:
        rows, baselines = _sweep_items(model, items, passes, resolved, select, store, runner, batch_size, num_frames,
                                       rule, fwd_hooks, progress)  # fmt: skip
        warn_if_none_selected(baselines, select, rule, str(model.cfg.model_name))
        if store is not None:
            ids = {sample_id for sample_id, _, _ in items}
            rows = [r for r in store.rows("rows") if r["sample_id"] in ids]
    finally:
        if store is not None:
            store.close()
    df = frame(rows, baselines, n_layers)
    df.attrs["engine"] = engine_name(runner)  # what this call ran on
    return df


def warn_if_none_selected(baselines: list[dict], select: str, rule: str, model_name: str = "the model") -> None:
    """Say why nothing was knocked out when ``select`` kept no sample, and of which model."""
    if baselines and not any(is_selected(b, select) for b in baselines):
        answered = "correctly" if select == "correct" else "wrongly"
        warnings.warn(f"no sample was selected: {model_name} answered none of the {len(baselines)} samples {answered} "
                      f"(rule {rule!r}), so nothing was knocked out; pass select='all' (CLI: --select all) to knock "
                      "out every sample, or use a model that answers some correctly (e.g. the bundled toy-video-ft)",
                      stacklevel=3)  # fmt: skip


def _sweep_items(model, items, passes, resolved, select, store, runner, batch_size, num_frames, rule, fwd_hooks,
                 progress) -> tuple[list[dict], list[dict]]:  # fmt: skip
    """The sweep's loop over samples: (knockout rows computed now, baselines of all samples)."""
    n_layers = model.cfg.n_layers
    done_rows = store.done("rows") if store is not None else set()
    done_base = {r["sample_id"]: r for r in store.rows("baseline")} if store is not None else {}
    rows, baselines = [], []

    def to_do(sample_id: str) -> Iterator[Pass]:  # the passes not stored yet, in order
        return (p for p in passes if (sample_id, p.target, p.condition, p.layer) not in done_rows)

    def resumed(sample_id: str) -> bool:  # stored, with nothing left to compute
        base = done_base.get(sample_id)
        return base is not None and (next(to_do(sample_id), None) is None or not is_selected(base, select))

    bar = tqdm(total=len(items) * len(passes), desc="knockout passes", disable=not progress)
    with PromptPreparer(model, items, num_frames, wanted=lambda sample_id: not resumed(sample_id)) as preparer:
        for sample_id, task, _ in items:
            if resumed(sample_id):
                baselines.append(done_base[sample_id])
                bar.update(len(passes))
                continue
            todo, base = list(to_do(sample_id)), done_base.get(sample_id)
            prompt = preparer.prompt(sample_id)
            if prompt.answer is None:
                raise ValueError(f"sample {sample_id!r} has no answer; sweeps need multiple-choice prompts with answer=...")
            embedded = model.embed(prompt)
            if runner is not None:
                trace = runner.trace(embedded)
                probs = last_position_probs(trace.logits[None, None])[0].cpu()
            else:
                with attention.reference_attention():  # the reference path throughout
                    logits = model.run_with_hooks(embedded, fwd_hooks=list(fwd_hooks), logits_to_keep=1)
                probs = last_position_probs(logits)[0].cpu()
            base = base or baseline_record(model, sample_id, task, prompt, probs, rule)
            if sample_id not in done_base and store is not None:
                store.add("baseline", [base])
            baselines.append(base)
            if not is_selected(base, select):
                bar.update(len(passes))
                continue
            bar.update(len(passes) - len(todo))
            edges = {(p.target, p.condition): resolved[p.target][p.condition](prompt.token_map) for p in todo}
            if runner is not None:
                results = run_passes_with_engine(runner, trace, todo, edges, batch_size * prompt.n_positions)
            else:
                results = run_passes_with_hooks(model, embedded, todo, edges, n_layers, batch_size, fwd_hooks)
            for chunk, chunk_probs in results:
                new_rows = knockout_records(model, base, chunk_probs, chunk, prompt, rule)
                if store is not None:
                    store.add("rows", new_rows)
                rows.extend(new_rows)
                bar.update(len(chunk))
    bar.close()
    return rows, baselines


def frame(rows: list[dict], baselines: list[dict], n_layers: int | None = None) -> pd.DataFrame:
    """Sweep rows as a DataFrame with ``attrs["baseline"]`` and ``attrs["n_layers"]``."""
    df = pd.DataFrame(rows, columns=COLUMNS)
    df.attrs["baseline"] = baselines
    df.attrs["n_layers"] = n_layers  # the model's depth (a sweep may cover fewer layers)
    return df


def load(out: str | Path) -> pd.DataFrame:
    """The rows of a sweep folder (complete or not; also a folder of shards, or an older JSONL
    folder), with ``attrs["baseline"]``."""
    try:
        rows, baseline = load_results(out, "rows"), load_results(out, "baseline")
    except FileNotFoundError:
        raise FileNotFoundError(f"{out} holds no sweep results") from None
    kind = baseline.attrs.get("kind")
    if kind not in (None, "legacy", "flow.sweep"):
        raise InvalidInputError(f"{out} holds {kind} results, not a flow sweep")
    settings = baseline.attrs.get("settings") or {}
    return frame(rows.to_dict("records"), baseline.to_dict("records"), settings.get("n_layers"))
