"""Exact knockouts of single heads: the rows that per-head attributions (``attribute(head=True)``)
are checked against. Each pass blocks a condition's edges in one head of its window's layers
(``knockout.hooks(..., heads=[h])``), on the TransformerLens hook path.

    exact = attribution.head_knockouts(model, samples, targets=["cross-frame"], window=1)
    attribution.compare(attribution.attribute(model, samples, window=1, head=True), exact)

It runs n_heads passes for every row of ``flow.sweep``: meant for checking on a few samples.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping, Sequence

import pandas as pd
import torch
from tqdm.auto import tqdm

from hooked_video.analysis.accuracy import PAPER_RULE, check_rule
from hooked_video.analysis.knockout import check_heads
from hooked_video.analysis.flow.records import (baseline_record, check_selection, is_selected, knockout_records,
                                               last_position_probs)
from hooked_video.analysis.flow.sweep import plan_passes, run_passes_with_hooks
from hooked_video.analysis.flow.targets import TARGETS, resolve_targets
from hooked_video.core.checks import InvalidInputError, check_count
from hooked_video.data.mcqa import identify_all
from hooked_video.data.prefetch import PromptPreparer
from hooked_video.runtime import attention
from hooked_video.runtime.store import model_identity, open_store

#: A head's row: the sweep's key and the head.
ROW_KEY = ("sample_id", "target", "condition", "layer", "head_index")


@torch.no_grad()
def head_knockouts(model, samples: Iterable, targets: Sequence[str | Mapping] | str = tuple(TARGETS), window: int = 1,
                   layers: Sequence[int] | None = None, heads: Sequence[int] | None = None, select: str = "correct",
                   batch_size: int = 8, num_frames: int | None = 8, rule: str = PAPER_RULE,
                   out: str | Path | None = None, resume: bool = True, progress: bool = True) -> pd.DataFrame:  # fmt: skip
    """``flow.sweep``'s rows, one per head as well: each condition knocked out in one head at a time.

    Args:
        targets, window, layers, select, batch_size, num_frames, rule: as ``flow.sweep``.
        heads: the heads to knock out one by one (default: every head).
        out, resume: a results folder written head by head as each is done; running the same call
            again resumes where it stopped (``resume=False`` starts over).

    Returns:
        ``flow.sweep``'s columns plus ``head_index``; ``attrs["baseline"]`` as in the sweep.
    """
    check_selection(select)
    check_rule(rule)
    check_count(batch_size, "batch_size")
    resolved = resolve_targets(targets)
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    heads = list(range(n_heads)) if heads is None else list(check_heads(heads))
    if max(heads) >= n_heads:
        raise InvalidInputError(f"heads must be indices in 0..{n_heads - 1} ({model.cfg.model_name} has {n_heads} heads), "
                                f"got {heads}")  # fmt: skip
    passes = plan_passes(resolved, list(range(n_layers)) if layers is None else list(layers), n_layers, window, "center",
                         "above")  # fmt: skip
    items = identify_all(samples)
    store = None
    if out is not None:
        config = {"targets": {t: list(c) for t, c in resolved.items()}, "window": window, "layers": [p.layer for p in passes],
                  "heads": heads, "select": select, "rule": rule, "num_frames": num_frames, "model": model_identity(model),
                  "dtype": str(next(model.hf_model.parameters()).dtype)}  # fmt: skip
        store = open_store(out, "attribution.head_knockouts", config, [(i, item) for i, _, item in items], key=ROW_KEY,
                           keys={"baseline": ("sample_id",)}, resume=resume)  # fmt: skip
    rows, baselines = [], []
    bar = tqdm(total=len(items) * len(passes) * len(heads), desc="head knockouts", disable=not progress)
    preparer = None
    try:
        done = {(key[0], key[-1]) for key in store.done("rows")} if store is not None else set()
        stored = {r["sample_id"]: r for r in store.rows("baseline")} if store is not None else {}
        resumed = lambda sample_id: sample_id in stored and (  # noqa: E731  (stored, nothing left to do)
            all((sample_id, h) in done for h in heads) or not is_selected(stored[sample_id], select))
        preparer = PromptPreparer(model, items, num_frames, wanted=lambda sample_id: not resumed(sample_id))
        for sample_id, task, _ in items:
            base = stored.get(sample_id)
            todo = [h for h in heads if (sample_id, h) not in done]
            if resumed(sample_id):
                baselines.append(base)
                bar.update(len(passes) * len(heads))
                continue
            prompt = preparer.prompt(sample_id)
            embedded = model.embed(prompt)
            if base is None:
                with attention.reference_attention():  # the passes' own path
                    probs = last_position_probs(model.run_with_hooks(embedded, fwd_hooks=[], logits_to_keep=1))[0].cpu()
                base = baseline_record(model, sample_id, task, prompt, probs, rule)
                if store is not None:
                    store.add("baseline", [base])
            baselines.append(base)
            bar.update(len(passes) * (len(heads) - len(todo)))
            if not is_selected(base, select):
                bar.update(len(passes) * len(todo))
                continue
            edges = {(p.target, p.condition): resolved[p.target][p.condition](prompt.token_map) for p in passes}
            for head in todo:
                new = []
                for chunk, chunk_probs in run_passes_with_hooks(model, embedded, passes, edges, n_layers, batch_size,
                                                                heads=[head]):  # fmt: skip
                    new.extend({**row, "head_index": head} for row in knockout_records(model, base, chunk_probs, chunk,
                                                                                        prompt, rule))  # fmt: skip
                    bar.update(len(chunk))
                if store is not None:
                    store.add("rows", new)  # a head's rows at once: a rerun redoes a head or skips it whole
                rows.extend(new)
        if store is not None:
            ids = {sample_id for sample_id, _, _ in items}
            rows = [r for r in store.rows("rows") if r["sample_id"] in ids and r["head_index"] in heads]
    finally:
        bar.close()
        preparer.close() if preparer is not None else None
        if store is not None:
            store.close()
    df = pd.DataFrame(rows)
    df.attrs["baseline"] = baselines
    return df
