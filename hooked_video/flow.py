"""Information-flow sweeps (METHOD.md section 3): knock out edge families layer by layer.

For every sample the vision pathway runs once (``model.embed``), the baseline runs once, and
each (condition, swept layer) pass blocks the condition's edges in the window of layers around
the swept layer. Several passes share one batched forward (each batch item carries its own edge
set and window); this changes results only by floating-point rounding of batched matrix
products (``batch_size=1`` reproduces one-by-one passes bit for bit).

    df = flow.sweep(model, samples, targets=["cross-frame", "vql-to-ql"], window=9, out="runs/a")
    flow.summarize(df)                      # mean relative change and bootstrap 95% CI per layer
    flow.accuracy_under_knockout(df)        # accuracy over all samples, per condition and layer

Rows are written to ``out/rows.jsonl`` as they are computed (baselines to ``baseline.jsonl``);
running the same call again resumes where it stopped, without losing or duplicating a row.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from hooked_video import knockout as ko
from hooked_video.data.mcqa import identify, to_prompt
from hooked_video.prompt import VideoPrompt
from hooked_video.results import JsonlRows, check_config
from hooked_video.tokens import TokenMap

Condition = Callable[[TokenMap], ko.EdgeSet]

#: The paper's four targets: name -> {condition name -> edges to block}. "question" is the
#: question block with its options; "question-text" the question without options.
TARGETS: dict[str, dict[str, Condition]] = {
    "cross-frame": {"cross-frame": ko.cross_frame},
    "vql-to-ql": {
        "video->question": lambda tm: ko.between(tm.video, tm.question, tm),
        "video->last": lambda tm: ko.between(tm.video, tm.last, tm),
        "question->last": lambda tm: ko.between(tm.question, tm.last, tm),
        "last->last": lambda tm: ko.self_edges(tm.last, tm),
    },
    "question-and-options-to-last": {
        "question-text->last": lambda tm: ko.between(tm.question_without_options, tm.last, tm),
        "true-option->last": lambda tm: ko.between(tm.true_option, tm.last, tm),
        "false-options->last": lambda tm: ko.between(tm.false_options, tm.last, tm),
    },
    "vq-to-true-opt": {
        "video->question-text": lambda tm: ko.between(tm.video, tm.question_without_options, tm),
        "question-text->true-option": lambda tm: ko.between(tm.question_without_options, tm.true_option, tm),
        "video->true-option": lambda tm: ko.between(tm.video, tm.true_option, tm),
    },
}
SELECTIONS = ("correct", "wrong", "all")
ROW_KEY = ("sample_id", "target", "condition", "layer")


def resolve_targets(targets) -> dict[str, dict[str, Condition]]:
    """Target names and/or ``{target: {condition: fn}}`` dicts -> one ordered mapping."""
    if isinstance(targets, (str, Mapping)):
        targets = [targets]
    resolved: dict[str, dict[str, Condition]] = {}
    for target in targets:
        if isinstance(target, Mapping):
            resolved.update({name: dict(conds) for name, conds in target.items()})
        elif target in TARGETS:
            resolved[target] = TARGETS[target]
        else:
            raise KeyError(f"unknown target {target!r}; known: {sorted(TARGETS)}, or pass {{name: {{condition: fn}}}}")
    return resolved


def last_position_probs(logits: torch.Tensor) -> torch.Tensor:
    """(batch, vocab) float32 softmax over the full vocabulary at the last position."""
    return logits[:, -1].float().softmax(-1)


def _rel(new: float, base: float) -> float:
    return (new - base) / base * 100.0 if base > 0 else float("nan")


def baseline_record(model, sample_id: str, task: str, prompt: VideoPrompt, probs: torch.Tensor) -> dict:
    """What the unmodified model does on one sample."""
    gt = prompt.answer_token_id
    pred = int(probs.argmax())
    return {
        "sample_id": sample_id, "task": task, "n_positions": prompt.n_positions,
        "gt_token": gt, "pred_token": pred, "pred": model.tokenizer.decode([pred]),
        "p_pred": float(probs[pred]), "p_gt": float(probs[gt]), "correct": pred == gt,
    }  # fmt: skip


def knockout_record(model, base: dict, probs: torch.Tensor, target: str, condition: str, layers: list[int], layer: int) -> dict:  # fmt: skip
    """One pass's metrics relative to the baseline (METHOD.md section 3)."""
    answer, gt = base["pred_token"], base["gt_token"]
    new = int(probs.argmax())
    p_answer, p_gt = float(probs[answer]), float(probs[gt])
    return {
        "sample_id": base["sample_id"], "task": base["task"], "target": target, "condition": condition,
        "layer": layer, "window_start": layers[0], "window_end": layers[-1],
        "p_base": base["p_pred"], "p_knockout": p_answer, "rel_change": _rel(p_answer, base["p_pred"]),
        "p_gt_base": base["p_gt"], "p_gt_knockout": p_gt, "rel_change_gt": _rel(p_gt, base["p_gt"]),
        "answer_token": answer, "new_answer_token": new, "new_answer": model.tokenizer.decode([new]),
        "correct": new == gt,
    }  # fmt: skip


def _is_selected(record: dict, select: str) -> bool:
    return select == "all" or record["correct"] == (select == "correct")


@torch.no_grad()
def sweep(
    model,
    samples: Iterable,
    targets: Sequence[str | Mapping] | str = tuple(TARGETS),
    window: int = 9,
    layers: Sequence[int] | None = None,
    select: str = "correct",
    out: str | Path | None = None,
    resume: bool = True,
    batch_size: int = 8,
    num_frames: int | None = 8,
    progress: bool = True,
) -> pd.DataFrame:
    """Knock out each target's conditions around each swept layer, for every sample.

    Args:
        model: a HookedVideoLLM.
        samples: data ``Sample``s or dicts (video, question, options, answer, id), or
            VideoPrompts (identified by their index in ``samples``: keep the order to resume).
        targets: paper target names (``TARGETS``) and/or ``{target: {condition: fn(tm) -> EdgeSet}}``.
        window: k, the number of layers blocked around each swept layer (clipped at the ends).
        layers: swept layers (default: all).
        select: which samples are knocked out: "correct" (baseline answer = ground truth),
            "wrong", or "all". Baselines are recorded for every sample.
        out: folder for ``rows.jsonl``, ``baseline.jsonl`` and ``config.json``; a second call
            with the same settings resumes.
        resume: False starts over in ``out``.
        batch_size: knockout passes per forward.
        num_frames: frames sampled per video for samples given as files.

    Returns:
        One row per sample x condition x swept layer (``layer`` is 0-based; the paper plots it
        at layer + 1), with p_base, p_knockout, rel_change, the same for the ground-truth letter
        (``*_gt``), the new argmax and whether it is correct. ``df.attrs["baseline"]`` holds
        the baseline records of all samples.
    """
    if select not in SELECTIONS:
        raise ValueError(f"select must be one of {SELECTIONS}, got {select!r}")
    resolved = resolve_targets(targets)
    n_layers = model.cfg.n_layers
    swept = list(range(n_layers)) if layers is None else [int(l) for l in layers]
    windows = {l: ko.window(l, window, n_layers) for l in swept}
    passes = [(t, c, l) for t, conds in resolved.items() for c in conds for l in swept]

    if out is not None:
        config = {"targets": {t: list(c) for t, c in resolved.items()}, "window": window,
                  "layers": swept, "select": select, "num_frames": num_frames,
                  "model": str(getattr(model.cfg, "model_name", "")), "n_layers": n_layers,
                  "dtype": str(next(model.hf_model.parameters()).dtype)}  # fmt: skip
        check_config(out, config, resume)
        rows_file, base_file = JsonlRows(Path(out) / "rows.jsonl"), JsonlRows(Path(out) / "baseline.jsonl")
    else:
        rows_file = base_file = None
    done_rows = rows_file.keys(ROW_KEY) if rows_file else set()
    done_base = {r["sample_id"]: r for r in base_file.rows} if base_file else {}
    rows, baselines, seen = [], [], set()

    samples = list(samples) if not isinstance(samples, Sequence) else samples
    bar = tqdm(total=len(samples) * len(passes), desc="knockout passes", disable=not progress)
    for index, item in enumerate(samples):
        sample_id, task, item = identify(item, index)
        if sample_id in seen:
            raise ValueError(f"sample id {sample_id!r} appears twice; ids must be unique")
        seen.add(sample_id)
        todo = [p for p in passes if (sample_id, *p) not in done_rows]
        base = done_base.get(sample_id)
        if base is not None and (not todo or not _is_selected(base, select)):
            baselines.append(base)
            bar.update(len(passes))
            continue
        prompt = to_prompt(model, item, num_frames)
        if prompt.answer is None:
            raise ValueError(f"sample {sample_id!r} has no answer; sweeps need multiple-choice prompts with answer=...")
        embedded = model.embed(prompt)
        probs = last_position_probs(model(embedded, logits_to_keep=1))[0]
        fresh = baseline_record(model, sample_id, task, prompt, probs)
        base = base or fresh
        if sample_id not in done_base and base_file is not None:
            base_file.append([base])
        baselines.append(base)
        if not _is_selected(base, select):
            bar.update(len(passes))
            continue
        bar.update(len(passes) - len(todo))
        conditions = {(t, c): resolved[t][c](prompt.token_map) for t, c, _ in todo}
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            edges = ko.EdgeSet.stack([conditions[(t, c)] for t, c, _ in chunk])
            active = torch.zeros(len(chunk), n_layers, dtype=torch.bool)
            for i, (_, _, layer) in enumerate(chunk):
                active[i, windows[layer]] = True
            logits = model.run_with_hooks(
                embedded.expand(len(chunk)), fwd_hooks=ko.hooks(edges, active), logits_to_keep=1
            )
            chunk_probs = last_position_probs(logits)
            new_rows = [knockout_record(model, base, p, t, c, windows[l], l)
                        for (t, c, l), p in zip(chunk, chunk_probs)]  # fmt: skip
            if rows_file is not None:
                rows_file.append(new_rows)
            rows.extend(new_rows)
            bar.update(len(chunk))
    bar.close()

    if rows_file is not None:
        ids = set(seen)
        rows = [r for r in rows_file.rows if r["sample_id"] in ids]
    return _frame(rows, baselines, n_layers)


def _frame(rows: list[dict], baselines: list[dict], n_layers: int | None = None) -> pd.DataFrame:
    columns = ["sample_id", "task", "target", "condition", "layer", "window_start", "window_end",
               "p_base", "p_knockout", "rel_change", "p_gt_base", "p_gt_knockout", "rel_change_gt",
               "answer_token", "new_answer_token", "new_answer", "correct"]  # fmt: skip
    df = pd.DataFrame(rows, columns=columns)
    df.attrs["baseline"] = baselines
    df.attrs["n_layers"] = n_layers  # the model's depth (a sweep may cover fewer layers)
    return df


def load(out: str | Path) -> pd.DataFrame:
    """The rows of a sweep folder (complete or not), with ``attrs["baseline"]``."""
    out = Path(out)
    if not (out / "rows.jsonl").exists() and not (out / "baseline.jsonl").exists():
        raise FileNotFoundError(f"{out} holds no sweep results (rows.jsonl / baseline.jsonl)")
    config = json.loads((out / "config.json").read_text()) if (out / "config.json").exists() else {}
    return _frame(JsonlRows(out / "rows.jsonl").rows, JsonlRows(out / "baseline.jsonl").rows, config.get("n_layers"))


# ----- summaries -------------------------------------------------------------------------------
def bootstrap_ci(values: np.ndarray, n_boot: int = 1000, ci: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean."""
    values = np.asarray(values, dtype=float)
    if len(values) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (n_boot, len(values)))].mean(1)
    alpha = (1 - ci) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def summarize(df: pd.DataFrame, value: str = "rel_change", by: Sequence[str] = ("target", "condition", "layer"),
              n_boot: int = 1000, ci: float = 0.95, seed: int = 0) -> pd.DataFrame:  # fmt: skip
    """Mean of ``value`` per group with a bootstrap CI (columns mean, ci_low, ci_high, n)."""
    records = []
    for key, group in df.groupby(list(by), sort=False):
        low, high = bootstrap_ci(group[value].to_numpy(), n_boot, ci, seed)
        key = key if isinstance(key, tuple) else (key,)
        records.append({**dict(zip(by, key)), "mean": group[value].mean(), "ci_low": low, "ci_high": high, "n": len(group)})
    return pd.DataFrame(records)


def accuracy_under_knockout(df: pd.DataFrame, baseline: Sequence[dict] | pd.DataFrame | None = None,
                            by: Sequence[str] = ("target", "condition", "layer")) -> pd.DataFrame:  # fmt: skip
    """Accuracy over ALL samples (per task), per condition and layer (METHOD.md section 3).

    A sample counts as correct only if its baseline was correct and its knocked-out answer is
    still the ground truth, so accuracy under knockout never exceeds the baseline accuracy.
    Samples without a knockout row (not selected) count with their baseline correctness.
    """
    base = pd.DataFrame(df.attrs.get("baseline", []) if baseline is None else baseline)
    if base.empty:
        raise ValueError("no baseline records: pass baseline=... or a DataFrame from sweep()/load()")
    base = base.set_index("sample_id")
    records = []
    for key, group in df.groupby(list(by), sort=False):
        key = key if isinstance(key, tuple) else (key,)
        knocked = group.set_index("sample_id")["correct"].astype(bool)
        missing = base.index[base["correct"].astype(bool)].difference(knocked.index)
        if len(missing) and len(knocked):
            warnings.warn(f"{dict(zip(by, key))}: {len(missing)} correct samples have no knockout row "
                          "(an unfinished sweep?); they count with their baseline answer.", stacklevel=2)  # fmt: skip
        correct = base["correct"].astype(bool).copy()
        correct.loc[knocked.index] = knocked & base.loc[knocked.index, "correct"].astype(bool)
        for task, task_correct in correct.groupby(base["task"]):
            records.append({**dict(zip(by, key)), "task": task, "accuracy": float(task_correct.mean()),
                            "baseline_accuracy": float(base.loc[task_correct.index, "correct"].mean()),
                            "n_samples": len(task_correct)})  # fmt: skip
    return pd.DataFrame(records)
