"""Multiple-choice accuracy by option-letter logits, per task and overall."""

from __future__ import annotations

from typing import Iterable

import pandas as pd
import torch
from tqdm.auto import tqdm


def option_prediction(logits: torch.Tensor, prompt) -> int:
    """Index of the option whose letter has the highest next-token logit (last position)."""
    letters = torch.tensor(prompt.option_token_ids, device=logits.device)
    return int(logits[0, -1, letters].argmax())


@torch.no_grad()
def accuracy(model, samples: Iterable, num_frames: int | None = 8, progress: bool = True) -> pd.DataFrame:
    """Accuracy per task plus an "overall" row (columns accuracy, n) over data ``Sample``s."""
    rows = []
    for sample in tqdm(list(samples), desc="accuracy", disable=not progress):
        prompt = sample.prepare(model, num_frames=num_frames)
        rows.append({"task": sample.task, "correct": option_prediction(model(prompt, logits_to_keep=1), prompt) == prompt.answer})
    df = pd.DataFrame(rows)
    table = df.groupby("task").correct.agg(accuracy="mean", n="size")
    table.loc["overall"] = [df.correct.mean(), len(df)]
    return table
