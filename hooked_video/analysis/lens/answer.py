"""Answer probability by layer: how early the model prefers the true option letter.

At the last position, for every layer l: resid_post(l) -> (norm, per ``norm``) -> W_U ->
softmax over the full vocabulary; the probability of every option letter is tracked. The norm
is an explicit choice (``NORMS``):

- ``"released"``: no norm at layers 0..L-2 and the final norm at L-1 (the model's own output),
  as the released code does for the LLaVA and InternVL models.
- ``"final"``: the final norm at every layer (the TransformerLens convention, and the released
  VideoLLaMA3 runs).
- ``"none"``: no norm at any layer.
"""

from __future__ import annotations

import pandas as pd
import torch

from hooked_video.analysis.accuracy import PAPER_RULE
from hooked_video.runtime.capture import capture
from hooked_video.analysis.lens.core import apply, final_norm, is_correct, unembed
from hooked_video.runtime.capture import stacked_on_host
from hooked_video.model.prompt import LETTERS

NORMS = ("released", "final", "none")


def check_norm(norm: str) -> str:
    """``norm`` if it is one of ``NORMS``; a ValueError naming the choices otherwise."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS} (say which explicitly), got {norm!r}")
    return norm


def _normed(norm: str, layer: int, n_layers: int) -> bool:
    return norm == "final" or (norm == "released" and layer == n_layers - 1)


def answer_names(n_layers: int) -> list[str]:
    """The residual-stream hooks read by the answer probability, one per layer."""
    return [f"blocks.{l}.hook_resid_post" for l in range(n_layers)]


def answer_rows(model, prompt, acts: dict[str, torch.Tensor], norm: str, correct: bool | None) -> list[dict]:
    """Option-letter probabilities per layer from captured ``answer_names`` activations of the
    last position."""
    letters = prompt.option_token_ids
    n_layers = model.cfg.n_layers
    per_layer = []
    with torch.no_grad():
        for layer, name in enumerate(answer_names(n_layers)):
            resid = apply(final_norm(model), acts[name]) if _normed(norm, layer, n_layers) else acts[name]
            probs = apply(unembed(model), resid).float().softmax(-1).reshape(-1)
            per_layer.append(probs[list(letters)])
    return [{"layer": layer, "option": option, "letter": LETTERS[option], "is_true": option == prompt.answer,
             "prob": prob, "norm": norm, "correct": correct}
            for layer, probs in enumerate(stacked_on_host(per_layer).tolist()) for option, prob in enumerate(probs)]  # fmt: skip


def answer_probability_by_layer(model, prompt, *, norm: str, rule: str = PAPER_RULE) -> pd.DataFrame:
    """Probability of each option letter at the last position after every block.

    Args:
        norm: "released", "final" or "none" (see ``NORMS``), required.
        rule: the accuracy rule for the ``correct`` column (the model's own answer).

    Returns:
        Rows layer (0-based), option (index), letter, is_true, prob, norm, correct.
    """
    check_norm(norm)
    if not prompt.option_token_ids:
        raise ValueError("answer_probability_by_layer needs a multiple-choice prompt (options=[...])")
    last = prompt.token_map.last
    acts, logits = capture(model, prompt, answer_names(model.cfg.n_layers), lambda act: act[last.to(act.device)])
    return pd.DataFrame(answer_rows(model, prompt, acts, norm, is_correct(model, prompt, logits[0, -1], rule)))
