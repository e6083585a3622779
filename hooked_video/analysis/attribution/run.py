"""``attribute``: an estimate of every row ``flow.sweep`` would produce, from gradients instead of
knockout passes, in the sweep's schema (``rel_change`` is the estimate, also in ``estimate``).

    df = attribution.attribute(model, samples, window=9)                       # the paper's conditions
    pairs = attribution.attribute(model, samples, granularity="frame-pairs", window=1)
    attribution.compare(df, flow.sweep(model, samples, window=9))              # against the exact rows

``method="atp"``: one forward and one backward per sample; each layer's effect is the first-order
change of log P(answer) under the knockout's exact renormalised pattern; a window's estimate is the
sum of its layers' (first order again), shown as a relative change 100 (exp(sum) - 1), so never
below -100%. ``method="ig"``: for each condition, its edges fade out together in every layer along
``steps`` points of a gate path (one forward and backward per point, ``batch_size`` points at a
time), and the path's mean derivative is each layer's effect.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from hooked_video.analysis import knockout as ko
from hooked_video.analysis.accuracy import PAPER_RULE, check_rule
from hooked_video.analysis.attribution.estimates import group_effects
from hooked_video.analysis.attribution.gradients import pattern_gradients
from hooked_video.analysis.attribution.groups import check_granularity, effects_of
from hooked_video.analysis.flow.records import baseline_record, check_selection, is_selected, last_position_probs
from hooked_video.analysis.flow.targets import TARGETS, resolve_targets
from hooked_video.core.checks import check_count
from hooked_video.data.mcqa import identify_all
from hooked_video.data.prefetch import PromptPreparer
from hooked_video.runtime.distributed import Shard, resolve_shard
from hooked_video.runtime.store import model_identity, open_store

METHODS = ("atp", "ig")
ROW_KEY = ("sample_id", "target", "condition", "layer", "head_index")


def attribute(
    model,
    samples: Iterable,
    targets: Sequence[str | Mapping] | str = tuple(TARGETS),
    window: int = 9,
    layers: Sequence[int] | None = None,
    method: str = "atp",
    steps: int = 8,
    granularity: str = "conditions",
    head: bool = False,
    select: str = "correct",
    out: str | Path | None = None,
    resume: bool = True,
    batch_size: int = 8,
    num_frames: int | None = 8,
    window_style: str = "center",
    even_window: str = "above",
    rule: str = PAPER_RULE,
    progress: bool = True,
    shard: Shard | str | None = None,
) -> pd.DataFrame:
    """Estimated relative change of P(answer) (percent) for every edge group and swept layer.

    Args:
        targets: as ``flow.sweep`` (granularity "conditions"); other granularities ignore it.
        window, layers, window_style, even_window, select, rule, num_frames, out, resume, shard:
            as ``flow.sweep``; a window's estimate sums its layers'.
        method: "atp" (one backward per sample) or "ig" (``steps`` per condition).
        granularity: "conditions", "frame-pairs", "tokens" or "cells" (``groups``).
        head: one row per head as well (column ``head_index``, as TransformerLens names it; -1: all heads).
        batch_size: path points per forward for "ig".

    Returns:
        The sweep's columns (``rel_change`` = ``estimate``; the new answer and accuracy are not
        estimated) plus ``estimate``, ``method``, ``head_index`` and the granularity's placing columns.
        ``attrs["baseline"]`` holds every sample's baseline record.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    check_granularity(granularity)
    if method == "ig" and granularity != "conditions":
        raise ValueError("method='ig' follows one gate path per condition; for granularity="
                         f"{granularity!r} use method='atp' (one backward for every group at once)")
    check_count(steps, "steps")
    check_count(batch_size, "batch_size")
    check_selection(select)
    check_rule(rule)
    resolved = resolve_targets(targets)
    n_layers = model.cfg.n_layers
    swept = list(range(n_layers)) if layers is None else list(layers)
    windows = {l: ko.window(l, window, n_layers, style=window_style, even=even_window) for l in swept}
    items = identify_all(samples)
    shard = resolve_shard(shard)
    items = shard.take(items) if shard is not None else items
    store = None
    if out is not None:
        config = {"targets": {t: list(c) for t, c in resolved.items()}, "window": window, "window_style": window_style,
                  "even_window": even_window, "layers": swept, "select": select, "rule": rule, "num_frames": num_frames,
                  "model": model_identity(model), "n_layers": n_layers, "method": method, "steps": steps,
                  "granularity": granularity, "head": head, "dtype": str(next(model.hf_model.parameters()).dtype)}  # fmt: skip
        store = open_store(out, "flow.attribute", config, [(i, item) for i, _, item in items], key=ROW_KEY,
                           keys={"baseline": ("sample_id",)}, resume=resume, shard=shard)  # fmt: skip
    preparer = None
    try:
        frames, baselines = [], []
        done = {key[0] for key in store.done("rows")} if store is not None else set()
        done_base = {r["sample_id"]: r for r in store.rows("baseline")} if store is not None else {}
        resumed = lambda sample_id: sample_id in done_base and (  # noqa: E731  (stored, nothing left to do)
            sample_id in done or not is_selected(done_base[sample_id], select))
        preparer = PromptPreparer(model, items, num_frames, wanted=lambda sample_id: not resumed(sample_id))
        for sample_id, task, _ in tqdm(items, desc=f"attribution ({method})", disable=not progress):
            base = done_base.get(sample_id)
            if resumed(sample_id):
                baselines.append(base)
                continue
            prompt = preparer.prompt(sample_id)
            embedded = model.embed(prompt)
            clean = pattern_gradients(model, embedded) if method == "atp" else None  # its forward is the baseline's
            if clean is not None:
                probs = clean.probs
            else:
                with torch.no_grad():
                    probs = last_position_probs(model(embedded, logits_to_keep=1))[0].cpu()
            base = base or baseline_record(model, sample_id, task, prompt, probs, rule)
            if store is not None and sample_id not in done_base:
                store.add("baseline", [base])
            baselines.append(base)
            if not is_selected(base, select):
                continue
            if clean is not None:
                effects = effects_of(granularity, clean, prompt, resolved, head)
            else:
                effects = integrated_effects(model, embedded, prompt, base["pred_token"], resolved, steps, head, batch_size)
            new_rows = rows_of(base, effects, windows, method, head)
            if store is not None:
                store.add("rows", new_rows.to_dict("records"))
            frames.append(new_rows)
        if store is not None:
            ids = {sample_id for sample_id, _, _ in items}
            frames = [pd.DataFrame([r for r in store.rows("rows") if r["sample_id"] in ids])]
    finally:
        preparer.close() if preparer is not None else None
        if store is not None:
            store.close()
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    df.attrs["baseline"] = baselines
    df.attrs["n_layers"] = n_layers
    df.attrs["method"] = method
    return df


def integrated_effects(model, embedded, prompt, answer: int, targets, steps: int, per_head: bool,
                       batch_size: int) -> list[tuple[dict, torch.Tensor]]:  # fmt: skip
    """(labels, per-layer effect on log P(answer)) of every condition, each along its own gate path."""
    alphas = (torch.arange(steps, dtype=torch.float32) + 0.5) / steps  # midpoints of the path from 0 to 1
    out = []
    for target, conditions in targets.items():
        for name, build in conditions.items():
            mask = build(prompt.token_map).mask
            total = 0
            for chunk in alphas.split(batch_size):
                grads = pattern_gradients(model, embedded, answer, gate=mask, alphas=chunk)
                total = total + group_effects(grads, mask, per_head, integrated=True) * len(chunk)
            out.append(({"target": target, "condition": name}, total / steps))
    return out


def rows_of(base: dict, effects: list[tuple[dict, torch.Tensor]], windows: Mapping[int, list[int]], method: str,
            per_head: bool) -> pd.DataFrame:  # fmt: skip
    """One row per group, swept layer (and head): the window's summed effect as a relative change,
    built column by column (a per-head or per-cell run has tens of thousands of rows per question)."""
    if not effects:
        return pd.DataFrame()
    labels, per_layer = zip(*effects)
    stacked = torch.stack(per_layer).double()  # (groups, layers[, heads])
    swept = list(windows)
    inside = torch.zeros(len(swept), stacked.shape[1], dtype=torch.float64)
    for i, layer in enumerate(swept):
        inside[i, windows[layer]] = 1
    summed = torch.einsum("sl,gl...->gs...", inside, stacked)  # (groups, swept[, heads])
    summed = torch.cat([summed.sum(-1, keepdim=True), summed], -1) if per_head else summed[..., None]
    estimate = (100 * torch.expm1(summed)).reshape(-1).numpy()  # (groups x swept x [all heads, each head])
    group, at, head = np.indices(summed.shape).reshape(3, -1)
    layer = np.asarray(swept)[at]
    starts, ends, sizes = (np.asarray([f(windows[l]) for l in swept])[at] for f in (min, max, len))
    frame = pd.DataFrame(list(labels)).iloc[group].reset_index(drop=True)
    frame.insert(0, "task", base["task"])
    frame.insert(0, "sample_id", base["sample_id"])
    return frame.assign(
        layer=layer, head_index=head - 1, window_start=starts, window_end=ends, n_blocked_layers=sizes,
        p_base=base["p_pred"], p_knockout=base["p_pred"] * (1 + estimate / 100), rel_change=estimate, estimate=estimate,
        method=method, answer_token=base["pred_token"])
