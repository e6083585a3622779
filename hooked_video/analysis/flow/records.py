"""What one baseline and one knockout pass record (the metric of the paper's knockout analysis)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Sequence

import torch
from jaxtyping import Float

from hooked_video.analysis.accuracy import PAPER_RULE, check_rule, option_of_token, predicted_option
from hooked_video.model.prompt import VideoPrompt

SELECTIONS = ("correct", "wrong", "all")


def check_selection(select: str) -> str:
    """``select`` if it is one of ``SELECTIONS``; a ValueError naming the choices otherwise."""
    if select not in SELECTIONS:
        raise ValueError(f"select must be one of {SELECTIONS}, got {select!r}")
    return select


def last_position_probs(logits: torch.Tensor) -> torch.Tensor:
    """(batch, vocab) softmax over the full vocabulary at the last position, in float64: a
    confident model's P(answer) sits next to 1, where float32 steps by 6e-8 and would round a
    knockout's small relative changes to multiples of 6e-6 %."""
    return logits[:, -1].double().softmax(-1)


def relative_change(new: float, base: float) -> float:
    """(new - base) / base x 100 (NaN when base is 0)."""
    return (new - base) / base * 100.0 if base > 0 else float("nan")


def baseline_record(model, sample_id: str, task: str, prompt: VideoPrompt, probs: torch.Tensor, rule: str = PAPER_RULE) -> dict:
    """What the unmodified model does on one sample (``correct`` under ``rule``)."""
    gt = prompt.answer_token_id
    pred = int(probs.argmax())
    option = predicted_option(probs, prompt, model.tokenizer, rule)  # probabilities order as log-probabilities do
    return {
        "sample_id": sample_id, "task": task, "n_positions": prompt.n_positions,
        "gt_token": gt, "pred_token": pred, "pred": model.tokenizer.decode([pred]),
        "p_pred": float(probs[pred]), "p_gt": float(probs[gt]), "correct": option == prompt.answer,
    }  # fmt: skip


def knockout_record(model, base: dict, probs: torch.Tensor, target: str, condition: str, layers: list[int], layer: int,
                    prompt: VideoPrompt, rule: str = PAPER_RULE) -> dict:  # fmt: skip
    """One pass's metrics relative to the baseline: the baseline answer's probability, the
    ground-truth letter's, and the new answer (``correct`` under ``rule``)."""
    labels = SimpleNamespace(target=target, condition=condition, layer=layer, blocked=layers)
    return knockout_records(model, base, probs[None], [labels], prompt, rule)[0]


def knockout_records(model, base: dict, probs: Float[torch.Tensor, "batch vocab"], passes: Sequence, prompt: VideoPrompt,
                     rule: str = PAPER_RULE) -> list[dict]:  # fmt: skip
    """``knockout_record`` of every pass of a chunk (``passes[i]``, with ``target``, ``condition``,
    ``layer`` and ``blocked``, ran with ``probs[i]``): the vocabulary is reduced where ``probs``
    lives (a GPU) and only a few numbers per pass are copied back."""
    answer, gt = base["pred_token"], base["gt_token"]
    columns = [probs.argmax(-1).to(probs.dtype), probs[:, answer], probs[:, gt]]
    if check_rule(rule) == "option-argmax":
        letters = torch.tensor(prompt.option_token_ids, device=probs.device)
        columns.append(probs[:, letters].argmax(-1).to(probs.dtype))
    values = torch.stack(columns, 1).cpu().tolist()
    decoded: dict[int, str] = {}
    chosen: dict[int, int | None] = {}
    rows = []
    for p, (new, p_answer, p_gt, *letter) in zip(passes, values):
        new = int(new)
        if new not in decoded:
            decoded[new] = model.tokenizer.decode([new])
            chosen[new] = option_of_token(new, prompt, model.tokenizer)
        option = int(letter[0]) if letter else chosen[new]
        layers = list(p.blocked)
        rows.append({
            "sample_id": base["sample_id"], "task": base["task"], "target": p.target, "condition": p.condition,
            "layer": p.layer, "window_start": min(layers, default=-1), "window_end": max(layers, default=-1),
            "n_blocked_layers": len(layers),
            "p_base": base["p_pred"], "p_knockout": p_answer, "rel_change": relative_change(p_answer, base["p_pred"]),
            "p_gt_base": base["p_gt"], "p_gt_knockout": p_gt, "rel_change_gt": relative_change(p_gt, base["p_gt"]),
            "answer_token": answer, "new_answer_token": new, "new_answer": decoded[new],
            "correct": option == prompt.answer,
        })  # fmt: skip
    return rows


def is_selected(record: dict, select: str) -> bool:
    """Whether a baseline record's sample is analysed under ``select``."""
    return select == "all" or bool(record["correct"]) == (select == "correct")
