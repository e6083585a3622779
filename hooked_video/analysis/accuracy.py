"""Multiple-choice accuracy under an explicitly named rule, per task and overall.

Two rules decide whether the model's answer at the last position is right:

- ``"vocab-argmax"`` (the paper's rule, the default): the argmax over the FULL vocabulary,
  decoded, is the ground-truth option letter (compared without surrounding spaces and case, as
  the released code compares decoded strings). A model that puts most mass on any other token
  (a space, a word, another letter) is wrong.
- ``"option-argmax"``: the option letter with the highest logit is the ground truth. More
  lenient: it never lets the model answer outside the options.
"""

from __future__ import annotations

from typing import Iterable

import pandas as pd
import torch
from jaxtyping import Float
from tqdm.auto import tqdm

from hooked_video.model.prompt import LETTERS

#: Rule name -> what it checks.
RULES = {
    "vocab-argmax": "argmax over the full vocabulary, decoded, is the ground-truth letter (the paper's rule)",
    "option-argmax": "the ground-truth letter has the highest logit among the option letters",
}
PAPER_RULE = "vocab-argmax"


def check_rule(rule: str) -> str:
    """``rule`` if it is one of ``RULES``; a ValueError naming the choices otherwise."""
    if rule not in RULES:
        raise ValueError(f"rule must be one of {sorted(RULES)}, got {rule!r}")
    return rule


def decoded_letter(tokenizer, token_id: int) -> str:
    """A token's text as an answer letter: decoded, stripped, case-folded."""
    return tokenizer.decode([int(token_id)]).strip().casefold()


def predicted_option(last_logits: Float[torch.Tensor, "vocab"], prompt, tokenizer, rule: str = PAPER_RULE) -> int | None:
    """Index of the option the model picks at the last position, or None (``"vocab-argmax"``
    only) when its top token is not one of the option letters."""
    check_rule(rule)
    if not prompt.option_token_ids:
        raise ValueError("accuracy needs a multiple-choice prompt (options=[...])")
    if rule == "option-argmax":
        letters = torch.tensor(prompt.option_token_ids, device=last_logits.device)
        return int(last_logits[letters].argmax())
    return option_of_token(int(last_logits.argmax()), prompt, tokenizer)


def option_of_token(token_id: int, prompt, tokenizer) -> int | None:
    """Index of the option whose letter the token decodes to (the paper's rule on a top token), or None."""
    top = decoded_letter(tokenizer, token_id)
    return next((i for i, letter in enumerate(LETTERS[: len(prompt.options)]) if letter.casefold() == top), None)


def option_prediction(logits: Float[torch.Tensor, "batch pos vocab"], prompt, tokenizer=None, rule: str = PAPER_RULE) -> int | None:
    """``predicted_option`` of the last position of batch item 0 of ``logits``, by the paper's rule
    unless ``rule="option-argmax"`` (which needs no tokenizer)."""
    if tokenizer is None and check_rule(rule) == "vocab-argmax":
        raise ValueError("the paper's rule (vocab-argmax) decodes the top token: pass the tokenizer (model.tokenizer), "
                         "or rule='option-argmax' to pick the best option letter")  # fmt: skip
    return predicted_option(logits[0, -1], prompt, tokenizer, rule)


@torch.no_grad()
def accuracy(model, samples: Iterable, num_frames: int | None = 8, rule: str = PAPER_RULE, progress: bool = True) -> pd.DataFrame:
    """Accuracy per task plus an "overall" row (columns accuracy, n) over data ``Sample``s.

    ``rule``: ``"vocab-argmax"`` (the paper's, default) or ``"option-argmax"``; the table's
    ``attrs["rule"]`` records which one was used.
    """
    check_rule(rule)
    rows = []
    for sample in tqdm(list(samples), desc="accuracy", disable=not progress):
        prompt = sample.prepare(model, num_frames=num_frames)
        pred = option_prediction(model(prompt, logits_to_keep=1), prompt, model.tokenizer, rule)
        rows.append({"task": sample.task, "correct": pred == prompt.answer})
    df = pd.DataFrame(rows, columns=["task", "correct"])
    table = df.groupby("task").correct.agg(accuracy="mean", n="size")
    table.loc["overall"] = [df.correct.mean(), len(df)]
    table.attrs["rule"] = rule
    return table
