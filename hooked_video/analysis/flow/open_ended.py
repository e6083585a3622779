"""The open-ended variant of the knockout analysis (the paper's appendix).

For a free-form question the model first answers greedily. The n-th "anchor" token of that
answer is then predicted again with the answer's earlier tokens teacher-forced after the
prompt, and each knockout is measured as the relative change of the anchor's probability at
the last position (the token before the anchor).

On the teacher-forced sequence, the generated tokens before the last position form the
"response" group (except the ``num_open_tokens`` right before the last position, which stay
untyped and open, as in the released analysis); the last position is the token before the
anchor. Targets: ``OPEN_ENDED_TARGETS`` ("vqrl-to-qrl": video -> question, video -> response,
video -> last, question -> last, response -> last; and "cross-frame").

    df = flow.sweep_open_ended(model, samples, anchor=2, targets=["vqrl-to-qrl"], window=9)
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Sequence

import pandas as pd
import torch
from tqdm.auto import tqdm

from hooked_video.runtime import attention
from hooked_video.data.mcqa import identify
from hooked_video.analysis.flow.records import last_position_probs, relative_change
from hooked_video.analysis.flow.sweep import ROW_KEY, choose_engine, plan_passes, run_passes_with_engine, run_passes_with_hooks
from hooked_video.analysis.flow.targets import OPEN_ENDED_TARGETS, resolve_targets
from hooked_video.model.prompt import PromptTemplate
from hooked_video.core.checks import check_count, check_unique_ids
from hooked_video.runtime.distributed import Shard, resolve_shard
from hooked_video.runtime.store import model_identity, open_store

AnchorRule = Sequence[str] | Callable[[list[str]], list[int]] | None


def anchor_positions(tokens: list[str], rule: AnchorRule = None) -> list[int]:
    """Indices of the generated tokens that count as anchors.

    ``rule``: None (default: every token with a letter or digit, i.e. not punctuation or
    whitespace), a list of words (tokens whose text, stripped, is one of them; e.g. the verbs
    of the answer, as the released analysis picks with spaCy), or a function of the decoded
    tokens returning indices.
    """
    if callable(rule):
        return list(rule(tokens))
    text = [t.strip() for t in tokens]
    if rule is None:
        return [i for i, t in enumerate(text) if any(c.isalnum() for c in t)]
    words = set(rule)
    return [i for i, t in enumerate(text) if t in words]


def free_form_prompt(model, item, num_frames: int | None, template: PromptTemplate | None):
    """A VideoPrompt as is, or a free-form prompt of a Sample's or dict's video and question."""
    if hasattr(item, "token_map"):
        return item
    template = template or PromptTemplate.free_form()
    if isinstance(item, dict):
        return model.prepare(item["video"], item["question"], template=template, num_frames=num_frames)
    frames, times = item.load_frames(num_frames, model.family.frame_sampling, with_times=True)
    return model.prepare(frames, item.question, template=template, num_frames=None, frame_times=times)


def _identify(item, index: int) -> tuple[str, str]:
    if isinstance(item, dict):
        return str(item.get("id", index)), str(item.get("task", ""))
    sample_id, task, _ = identify(item, index) if not hasattr(item, "token_map") else (str(index), "", None)
    return sample_id, task


@torch.no_grad()
def sweep_open_ended(
    model,
    samples: Iterable,
    anchor: int = 1,
    anchors: AnchorRule = None,
    targets: Sequence[str] | str = ("vqrl-to-qrl",),
    window: int = 9,
    layers: Sequence[int] | None = None,
    max_new_tokens: int = 100,
    num_open_tokens: int = 1,
    template: PromptTemplate | None = None,
    out: str | Path | None = None,
    resume: bool = True,
    batch_size: int = 8,
    num_frames: int | None = 8,
    window_style: str = "center",
    even_window: str = "above",
    engine: str = "auto",
    progress: bool = True,
    shard: Shard | str | None = None,
) -> pd.DataFrame:
    """Knockout sweep of the n-th anchor token of the model's own free-form answer.

    Args:
        samples: VideoPrompts (built with ``PromptTemplate.free_form()``), ``Sample``s or
            dicts with ``video`` and ``question`` (options are not shown).
        anchor: which anchor to trace, 1-based (the released analysis' "generation anchor
            order"); samples whose answer has fewer anchors are skipped (recorded in the
            baseline with ``skipped``).
        anchors: which generated tokens are anchors (see ``anchor_positions``).
        targets: ``OPEN_ENDED_TARGETS`` names or custom ``{target: {condition: fn}}``.
        max_new_tokens: length limit of the greedy answer.
        num_open_tokens: response tokens right before the last position left untyped.
        others: as in ``flow.sweep``.

    Returns:
        One row per sample x condition x swept layer: p_base and p_knockout of the anchor
        token, rel_change, the new argmax; ``attrs["baseline"]`` holds each sample's answer,
        anchor and baseline probability.
    """
    if isinstance(anchor, bool) or not isinstance(anchor, int) or anchor < 1:
        raise ValueError(f"anchor is 1-based: 1 for the first anchor token, got {anchor!r}")
    runner = choose_engine(model, engine, ())
    resolved = resolve_targets(targets, OPEN_ENDED_TARGETS)
    n_layers = model.cfg.n_layers
    swept = list(range(n_layers)) if layers is None else list(layers)
    passes = plan_passes(resolved, swept, n_layers, window, window_style, even_window)
    check_count(batch_size, "batch_size")
    check_count(max_new_tokens, "max_new_tokens")
    shard = resolve_shard(shard)
    items = [(*_identify(item, index), item) for index, item in enumerate(samples)]
    check_unique_ids([sample_id for sample_id, _, _ in items])
    items = shard.take(items) if shard is not None else items
    store = None
    if out is not None:
        settings = {"open_ended": True, "anchor": anchor, "anchors": None if callable(anchors) else anchors,
                    "targets": {t: list(c) for t, c in resolved.items()}, "window": window, "layers": swept,
                    "window_style": window_style, "even_window": even_window, "max_new_tokens": max_new_tokens,
                    "num_open_tokens": num_open_tokens, "num_frames": num_frames,
                    "model": model_identity(model), "n_layers": n_layers}  # fmt: skip
        store = open_store(out, "flow.sweep_open_ended", settings, [(i, item) for i, _, item in items], key=ROW_KEY,
                           keys={"baseline": ("sample_id",)}, resume=resume, shard=shard)  # fmt: skip
    try:
        rows, baselines = _open_ended_items(model, items, passes, resolved, store, runner, anchor, anchors, template,
                                            max_new_tokens, num_open_tokens, batch_size, num_frames, progress)  # fmt: skip
        ids = {b["sample_id"] for b in baselines}
        if store is not None:
            rows = [r for r in store.rows("rows") if r["sample_id"] in ids]
    finally:
        if store is not None:
            store.close()
    df = pd.DataFrame(rows, columns=["sample_id", "task", "target", "condition", "layer", "window_start", "window_end",
                                     "anchor_token", "p_base", "p_knockout", "rel_change", "new_answer_token", "new_answer"])  # fmt: skip
    df.attrs["baseline"] = baselines
    df.attrs["n_layers"] = n_layers
    return df


def _open_ended_items(model, items, passes, resolved, store, runner, anchor, anchors, template, max_new_tokens,
                      num_open_tokens, batch_size, num_frames, progress) -> tuple[list[dict], list[dict]]:  # fmt: skip
    """The loop over questions: (knockout rows computed now, baselines of all questions)."""
    n_layers = model.cfg.n_layers
    done = store.done("rows") if store is not None else set()
    done_base = {r["sample_id"]: r for r in store.rows("baseline")} if store is not None else {}
    rows, baselines = [], []
    for sample_id, task, item in tqdm(items, desc="open-ended knockout", disable=not progress):
        todo = [p for p in passes if (sample_id, p.target, p.condition, p.layer) not in done]
        if sample_id in done_base and (not todo or done_base[sample_id].get("skipped")):
            baselines.append(done_base[sample_id])
            continue
        prompt = free_form_prompt(model, item, num_frames, template)
        answer = model.generate(prompt, max_new_tokens=max_new_tokens, return_type="tokens")
        tokens = [model.tokenizer.decode([t]) for t in answer]
        found = anchor_positions(tokens, anchors)
        base = {"sample_id": sample_id, "task": task, "answer": model.tokenizer.decode(answer), "n_anchors": len(found)}
        if len(found) < anchor:
            base["skipped"] = f"the answer has {len(found)} anchor tokens, fewer than anchor={anchor}"
        else:
            position = found[anchor - 1]
            forced = prompt.extend(answer[:position], model.tokenizer, num_open_tokens=num_open_tokens)
            embedded = model.embed(forced)
            if runner is not None:
                trace = runner.trace(embedded)
                probs = last_position_probs(trace.logits[None, None])[0]
            else:
                with attention.reference_attention():
                    probs = last_position_probs(model(embedded, logits_to_keep=1))[0]
            target = int(answer[position])
            base.update(anchor_index=position, anchor_token=target, anchor_text=tokens[position],
                        p_base=float(probs[target]), base_argmax=int(probs.argmax()))  # fmt: skip
        if sample_id not in done_base and store is not None:
            store.add("baseline", [base])
        baselines.append(base)
        if "skipped" in base:
            continue
        edges = {(p.target, p.condition): resolved[p.target][p.condition](forced.token_map) for p in todo}
        if runner is not None:
            results = run_passes_with_engine(runner, trace, todo, edges, batch_size * forced.n_positions)
        else:
            results = run_passes_with_hooks(model, embedded, todo, edges, n_layers, batch_size)
        for chunk, chunk_probs in results:
            new = [_row(base, p, probs_p, model.tokenizer) for p, probs_p in zip(chunk, chunk_probs)]
            if store is not None:
                store.add("rows", new)
            rows.extend(new)
    return rows, baselines


def _row(base: dict, p, probs: torch.Tensor, tokenizer) -> dict:
    target = base["anchor_token"]
    new = int(probs.argmax())
    return {"sample_id": base["sample_id"], "task": base["task"], "target": p.target, "condition": p.condition,
            "layer": p.layer, "window_start": min(p.blocked, default=-1), "window_end": max(p.blocked, default=-1),
            "anchor_token": target, "p_base": base["p_base"], "p_knockout": float(probs[target]),
            "rel_change": relative_change(float(probs[target]), base["p_base"]), "new_answer_token": new,
            "new_answer": tokenizer.decode([new])}  # fmt: skip
