"""How well an attribution ranks what exact knockouts measure, row for row.

For each sample (and target): the Spearman rank correlation of estimate and exact relative change
over all (condition, layer) rows, the overlap of their 10 largest drops, and the share of rows
whose exact change exceeds 5 percentage points where the estimate has the same sign.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

KEY = ["sample_id", "target", "condition", "layer"]


def spearman(x, y) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN when either side is constant."""
    rx, ry = pd.Series(x, dtype=float).rank(), pd.Series(y, dtype=float).rank()
    if rx.nunique() < 2 or ry.nunique() < 2:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def top_overlap(estimate, exact, k: int = 10) -> float:
    """Share of the ``k`` most negative exact rows that are among the ``k`` most negative estimates."""
    k = min(k, len(exact))
    worst = set(np.argsort(np.asarray(exact, float), kind="stable")[:k])
    guessed = set(np.argsort(np.asarray(estimate, float), kind="stable")[:k])
    return len(worst & guessed) / k if k else float("nan")


def sign_agreement(estimate, exact, threshold: float = 5.0) -> float:
    """Share of rows with |exact| > ``threshold`` whose estimate has the exact change's sign."""
    estimate, exact = np.asarray(estimate, float), np.asarray(exact, float)
    big = np.abs(exact) > threshold
    return float((np.sign(estimate[big]) == np.sign(exact[big])).mean()) if big.any() else float("nan")


def compare(estimates: pd.DataFrame, exact: pd.DataFrame, by_target: bool = False) -> pd.DataFrame:
    """Per sample (and target with ``by_target``): spearman, top10, sign_agreement, n_rows, n_big
    (rows with |exact| > 5). Rows are matched on sample, target, condition and layer (all heads),
    and on ``head_index`` too where the exact rows have one (knockouts of single heads)."""
    matched_on = KEY + ["head_index"] if "head_index" in exact else KEY
    if "head_index" in estimates and "head_index" not in exact:
        estimates = estimates[estimates.head_index == -1]
    merged = estimates[matched_on + ["estimate"]].merge(exact[matched_on + ["rel_change"]], on=matched_on, how="inner")
    if merged.empty:
        raise ValueError("no row of the estimates matches a row of the exact sweep: compare the same samples, targets, "
                         "window and layers")  # fmt: skip
    groups = ["sample_id", "target"] if by_target else ["sample_id"]
    records = []
    for key, group in merged.groupby(groups, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        records.append({**dict(zip(groups, key)), "spearman": spearman(group.estimate, group.rel_change),
                        "top10": top_overlap(group.estimate, group.rel_change),
                        "sign_agreement": sign_agreement(group.estimate, group.rel_change), "n_rows": len(group),
                        "n_big": int((group.rel_change.abs() > 5).sum())})  # fmt: skip
    return pd.DataFrame(records)
