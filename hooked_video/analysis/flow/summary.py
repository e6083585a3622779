"""Summaries of sweep rows: mean relative change per layer with bootstrap CIs, and accuracy under
knockout. Both are per task by default, as the paper never pools its tasks."""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import pandas as pd

PER_TASK = ("task", "target", "condition", "layer")
POOLED = ("target", "condition", "layer")


def bootstrap_ci(values: np.ndarray, n_boot: int = 1000, ci: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean."""
    values = np.asarray(values, dtype=float)
    if len(values) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (n_boot, len(values)))].mean(1)
    alpha = (1 - ci) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def _grouping(df: pd.DataFrame, by: Sequence[str] | None, pool_tasks: bool) -> list[str]:
    if by is not None:
        return list(by)
    return list(POOLED if pool_tasks or "task" not in df else PER_TASK)


def summarize(df: pd.DataFrame, value: str = "rel_change", by: Sequence[str] | None = None, pool_tasks: bool = False,
              n_boot: int = 1000, ci: float = 0.95, seed: int = 0) -> pd.DataFrame:  # fmt: skip
    """Mean of ``value`` per group with a bootstrap CI (columns mean, ci_low, ci_high, n).

    Groups are (task, target, condition, layer): one curve per task, as in the paper.
    ``pool_tasks=True`` pools the tasks (so does a table without a task column); ``by`` sets
    the grouping columns explicitly. Each group's interval is ``bootstrap_ci`` of its values
    (the same numbers), computed for all groups of one size at once.
    """
    by = _grouping(df, by, pool_tasks)
    columns = [*by, "mean", "ci_low", "ci_high", "n"]
    grouped = df.groupby(by, sort=False)
    table = grouped[value].agg(["mean", "size"]).reset_index().rename(columns={"size": "n"})
    if table.empty:
        return pd.DataFrame(columns=columns)
    codes = grouped.ngroup().to_numpy()
    kept = codes >= 0  # rows of a key with a missing value belong to no group
    order = np.argsort(codes[kept], kind="stable")  # each group's rows in their original order
    values = df[value].to_numpy(dtype=float)[kept][order]
    sizes = table.n.to_numpy()
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    low, high = np.empty(len(table)), np.empty(len(table))
    for size in np.unique(sizes):
        groups = np.flatnonzero(sizes == size)
        rows = values[starts[groups, None] + np.arange(size)]  # (groups, size)
        low[groups], high[groups] = _bootstrap_rows(rows, n_boot, ci, seed)
    table["ci_low"], table["ci_high"] = low, high
    return by_layer(table[columns], by)


#: Bootstrap means computed at once (groups x resamples x values) for ``summarize``.
_BOOTSTRAP_BLOCK = 1 << 22


def _bootstrap_rows(rows: np.ndarray, n_boot: int, ci: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``bootstrap_ci`` of every row of ``rows`` (groups, size): the same resamples for each
    row, as each group's own call draws them from a fresh generator of ``seed``."""
    size = rows.shape[1]
    picks = np.random.default_rng(seed).integers(0, size, (n_boot, size))
    alpha = (1 - ci) / 2
    step = max(1, _BOOTSTRAP_BLOCK // (n_boot * size))
    low, high = np.empty(len(rows)), np.empty(len(rows))
    for start in range(0, len(rows), step):
        means = rows[start : start + step][:, picks].mean(-1)  # (groups, n_boot)
        low[start : start + step], high[start : start + step] = np.quantile(means, [alpha, 1 - alpha], axis=1)
    return low, high


def by_layer(table: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """The rows of each group (the ``keys`` other than layer, in order of first appearance) in
    layer order: sweeps record layers in the order they ran (an inverse window runs its lowest
    layers last)."""
    if "layer" not in keys or table.empty:
        return table
    rest = [k for k in keys if k != "layer"]
    group = table.groupby(rest, sort=False, dropna=False).ngroup() if rest else 0
    ordered = table.assign(_group=group).sort_values(["_group", "layer"], kind="stable")
    return ordered.drop(columns="_group").reset_index(drop=True)


def accuracy_under_knockout(df: pd.DataFrame, baseline: Sequence[dict] | pd.DataFrame | None = None,
                            by: Sequence[str] = ("target", "condition", "layer"), pool_tasks: bool = False) -> pd.DataFrame:  # fmt: skip
    """Accuracy over ALL samples, per task (or pooled), condition and layer.

    A sample counts as correct only if its baseline was correct and its knocked-out answer is
    still the ground truth, so accuracy under knockout never exceeds the baseline accuracy.
    Samples without a knockout row (not selected) count with their baseline correctness.
    """
    base = pd.DataFrame(df.attrs.get("baseline", []) if baseline is None else baseline)
    if base.empty:
        raise ValueError("no baseline records: pass baseline=... or a DataFrame from sweep()/load()")
    base = base.set_index("sample_id")
    base_correct = base["correct"].astype(bool)
    records = []
    for key, group in df.groupby(list(by), sort=False):
        key = key if isinstance(key, tuple) else (key,)
        knocked = group.set_index("sample_id")["correct"].astype(bool)
        missing = base.index[base_correct].difference(knocked.index)
        if len(missing) and len(knocked):
            warnings.warn(f"{dict(zip(by, key))}: {len(missing)} correct samples have no knockout row "
                          "(an unfinished sweep?); they count with their baseline answer.", stacklevel=2)  # fmt: skip
        correct = base_correct.copy()
        correct.loc[knocked.index] = knocked & base_correct.loc[knocked.index]
        groups = [("all", correct)] if pool_tasks else correct.groupby(base["task"])
        for task, task_correct in groups:
            records.append({**dict(zip(by, key)), "task": task, "accuracy": float(task_correct.mean()),
                            "baseline_accuracy": float(base_correct.loc[task_correct.index].mean()),
                            "n_samples": len(task_correct)})  # fmt: skip
    return by_layer(pd.DataFrame(records), [*by, "task"])
