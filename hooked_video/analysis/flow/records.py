"""What one baseline and one knockout pass record (the metric of the paper's knockout analysis)."""

from __future__ import annotations

import torch

from hooked_video.analysis.accuracy import PAPER_RULE, predicted_option
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
    option = predicted_option(probs.log(), prompt, model.tokenizer, rule)
    return {
        "sample_id": sample_id, "task": task, "n_positions": prompt.n_positions,
        "gt_token": gt, "pred_token": pred, "pred": model.tokenizer.decode([pred]),
        "p_pred": float(probs[pred]), "p_gt": float(probs[gt]), "correct": option == prompt.answer,
    }  # fmt: skip


def knockout_record(model, base: dict, probs: torch.Tensor, target: str, condition: str, layers: list[int], layer: int,
                    prompt: VideoPrompt, rule: str = PAPER_RULE) -> dict:  # fmt: skip
    """One pass's metrics relative to the baseline: the baseline answer's probability, the
    ground-truth letter's, and the new answer (``correct`` under ``rule``)."""
    answer, gt = base["pred_token"], base["gt_token"]
    new = int(probs.argmax())
    p_answer, p_gt = float(probs[answer]), float(probs[gt])
    return {
        "sample_id": base["sample_id"], "task": base["task"], "target": target, "condition": condition,
        "layer": layer, "window_start": min(layers, default=-1), "window_end": max(layers, default=-1),
        "n_blocked_layers": len(layers),
        "p_base": base["p_pred"], "p_knockout": p_answer, "rel_change": relative_change(p_answer, base["p_pred"]),
        "p_gt_base": base["p_gt"], "p_gt_knockout": p_gt, "rel_change_gt": relative_change(p_gt, base["p_gt"]),
        "answer_token": answer, "new_answer_token": new, "new_answer": model.tokenizer.decode([new]),
        "correct": predicted_option(probs.log(), prompt, model.tokenizer, rule) == prompt.answer,
    }  # fmt: skip


def is_selected(record: dict, select: str) -> bool:
    """Whether a baseline record's sample is analysed under ``select``."""
    return select == "all" or bool(record["correct"]) == (select == "correct")
