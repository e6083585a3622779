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

import dataclasses
import functools
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

AnchorRule = Sequence[str] | Callable[[list[str]], list[int]] | str | None
#: Anchors the released analysis needs in an answer before it traces one (with ``anchors="verbs"``).
RELEASED_MIN_ANCHORS = 3


def anchor_positions(tokens: list[str], rule: AnchorRule = None, text: str | None = None) -> list[int]:
    """Indices of the generated tokens that count as anchors.

    ``rule``: None (default: every token with a letter or digit, i.e. not punctuation or
    whitespace); ``"verbs"`` (the released analysis: the words spaCy's ``en_core_web_lg`` tags
    VERB in the answer ``text``, found as one token or two adjacent tokens, each anchor at its
    first token); a list of words (found the same way); or a function of the decoded tokens
    returning indices.
    """
    if callable(rule):
        return list(rule(tokens))
    if rule is None:
        return [i for i, t in enumerate(tokens) if any(c.isalnum() for c in t)]
    if isinstance(rule, str):
        if rule != "verbs":
            raise ValueError(f"anchors must be None, 'verbs', a list of words or a function, got {rule!r}")
        rule = spacy_verbs("".join(tokens) if text is None else text)
    return _word_positions(tokens, set(rule))


def _word_positions(tokens: list[str], words: set[str]) -> list[int]:
    """First token of each occurrence of a word, as one token or two adjacent ones (left to right,
    a two-token match consuming both), comparing the decoded tokens without surrounding spaces."""
    text = [t.strip() for t in tokens]
    found, i = [], 0
    while i < len(text):
        if text[i] in words:
            found.append(i)
            i += 1
        elif i + 1 < len(text) and text[i] + text[i + 1] in words:
            found.append(i)
            i += 2
        else:
            i += 1
    return found


@functools.lru_cache(maxsize=1)
def _spacy_model():
    """spaCy's ``en_core_web_lg``, loaded once (it takes seconds)."""
    try:
        import spacy

        return spacy.load("en_core_web_lg")
    except (ImportError, OSError) as err:
        raise ImportError("anchors='verbs' tags the answer with spaCy's en_core_web_lg, which is not installed "
                          f"({err}); run `pip install spacy && python -m spacy download en_core_web_lg`, or give "
                          "the anchor words as a list") from None  # fmt: skip


def spacy_verbs(text: str) -> set[str]:
    """The words spaCy's ``en_core_web_lg`` tags VERB in ``text`` (the released anchor rule)."""
    return {token.text for token in _spacy_model()(text) if token.pos_ == "VERB"}


def free_form_prompt(model, item, num_frames: int | None, template: PromptTemplate | None):
    """A VideoPrompt as is, or a free-form prompt of a Sample's or dict's video and question (the
    family's open-ended template, e.g. the released VCGBench conversation for PLLaVA-format models,
    else ``PromptTemplate.free_form()``)."""
    if hasattr(item, "token_map"):
        return item
    named = model.family.open_ended_template
    template = template or (PromptTemplate.named(named) if named else PromptTemplate.free_form())
    if isinstance(item, dict):
        return model.prepare(item["video"], item["question"], template=template, num_frames=num_frames)
    frames, times = item.frames_for(model, num_frames)
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
    max_new_tokens: int = 256,
    num_open_tokens: int = 1,
    min_anchors: int | None = None,
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
            order"). As released, a question is skipped (recorded in the baseline with
            ``skipped``) when its answer has fewer than ``min_anchors`` anchors, when the anchor
            is one of the first two answer tokens (no response before the last position), or
            when the teacher-forced argmax is not the anchor token.
        anchors: which generated tokens are anchors (see ``anchor_positions``; ``"verbs"`` is
            the released rule).
        min_anchors: default 3 with ``anchors="verbs"`` (the released rule), else ``anchor``.
        targets: ``OPEN_ENDED_TARGETS`` names or custom ``{target: {condition: fn}}``.
        max_new_tokens: length limit of the greedy answer (released: 256).
        num_open_tokens: response tokens right before the last position left untyped (an
            earlier anchor among them stays typed, as released).
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
    if min_anchors is None:
        min_anchors = RELEASED_MIN_ANCHORS if anchors == "verbs" else anchor
    check_count(min_anchors, "min_anchors")
    shard = resolve_shard(shard)
    items = [(*_identify(item, index), item) for index, item in enumerate(samples)]
    check_unique_ids([sample_id for sample_id, _, _ in items])
    items = shard.take(items) if shard is not None else items
    store = None
    if out is not None:
        settings = {"open_ended": True, "anchor": anchor, "anchors": None if callable(anchors) else anchors,
                    "targets": {t: list(c) for t, c in resolved.items()}, "window": window, "layers": swept,
                    "window_style": window_style, "even_window": even_window, "max_new_tokens": max_new_tokens,
                    "num_open_tokens": num_open_tokens, "num_frames": num_frames, "min_anchors": min_anchors,
                    "template": dataclasses.asdict(template) if template is not None else "family default",
                    "model": model_identity(model), "n_layers": n_layers}  # fmt: skip
        store = open_store(out, "flow.sweep_open_ended", settings, [(i, item) for i, _, item in items], key=ROW_KEY,
                           keys={"baseline": ("sample_id",)}, resume=resume, shard=shard)  # fmt: skip
    try:
        rows, baselines = _open_ended_items(model, items, passes, resolved, store, runner, (anchor, anchors, min_anchors),
                                            template, max_new_tokens, num_open_tokens, batch_size, num_frames,
                                            progress)  # fmt: skip
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


def _open_ended_items(model, items, passes, resolved, store, runner, anchoring, template, max_new_tokens,
                      num_open_tokens, batch_size, num_frames, progress) -> tuple[list[dict], list[dict]]:  # fmt: skip
    """The loop over questions: (knockout rows computed now, baselines of all questions)."""
    anchor, anchors, min_anchors = anchoring
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
        found = anchor_positions(tokens, anchors, text=model.tokenizer.decode(answer))
        base = {"sample_id": sample_id, "task": task, "answer": model.tokenizer.decode(answer), "n_anchors": len(found)}
        needed = max(anchor, min_anchors)
        if len(found) < needed:
            base["skipped"] = f"the answer has {len(found)} anchor tokens, fewer than {needed} (anchor, min_anchors)"
        elif found[anchor - 1] < 2:
            base["skipped"] = (f"anchor {anchor} is answer token {found[anchor - 1]}: no response before the last "
                               "position (the released analysis skips it too)")  # fmt: skip
        else:
            position = found[anchor - 1]
            opened = _open_tokens(position, found[: anchor - 1], num_open_tokens)
            forced = prompt.extend(answer[:position], model.tokenizer, num_open_tokens=opened)
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
            if base["base_argmax"] != target:
                base["skipped"] = ("the teacher-forced argmax is not the anchor token the greedy answer generated "
                                   "(a numerical near-tie); skipped as the released analysis does")  # fmt: skip
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
            new = [_row(base, p, probs_p, model.tokenizer) for p, probs_p in zip(chunk, chunk_probs.cpu())]
            if store is not None:
                store.add("rows", new)
            rows.extend(new)
    return rows, baselines


def _open_tokens(position: int, earlier: list[int], num_open_tokens: int) -> int:
    """Response tokens before the last position that stay untyped: the ``num_open_tokens`` right
    before it, less any up to the latest earlier anchor (which stays typed), at least one typed."""
    n_response = position - 1  # answer tokens before the last position (answer[position - 1])
    kept = [i + 1 for i in earlier if i < n_response]
    return n_response - max(1, n_response - num_open_tokens, *kept)


def _row(base: dict, p, probs: torch.Tensor, tokenizer) -> dict:
    target = base["anchor_token"]
    new = int(probs.argmax())
    return {"sample_id": base["sample_id"], "task": base["task"], "target": p.target, "condition": p.condition,
            "layer": p.layer, "window_start": min(p.blocked, default=-1), "window_end": max(p.blocked, default=-1),
            "anchor_token": target, "p_base": base["p_base"], "p_knockout": float(probs[target]),
            "rel_change": relative_change(float(probs[target]), base["p_base"]), "new_answer_token": new,
            "new_answer": tokenizer.decode([new])}  # fmt: skip
