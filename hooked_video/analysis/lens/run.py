"""The lens analyses over a dataset: logit-lens top-1 tokens of video positions and answer
probability by layer, for the samples a selection keeps, in one forward per sample, resumable.

    run = lens.run(model, samples, variant="unembed", norm="released")   # select="correct" by default
    run.keyword_frequencies({"spatial": [...], "temporal": [...]}, model.tokenizer)
    run.answer_probability          # rows per sample, layer and option
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import pandas as pd
import torch
from tqdm.auto import tqdm

from hooked_video.analysis.accuracy import PAPER_RULE, check_rule
from hooked_video.runtime.capture import capture
from hooked_video.data.mcqa import identify_all
from hooked_video.data.prefetch import PromptPreparer
from hooked_video.runtime.distributed import Shard, resolve_shard
from hooked_video.analysis.flow.records import check_selection, is_selected
from hooked_video.analysis.lens.answer import answer_names, answer_rows, check_norm
from hooked_video.analysis.lens.core import VARIANTS, is_correct, lens_names, lens_residuals, top_tokens
from hooked_video.analysis.lens.keywords import keyword_table
from hooked_video.runtime.store import model_identity, open_store


@dataclass
class LensRun:
    """Lens results of a dataset.

    Attributes:
        baseline: one row per sample (sample_id, task, correct), selected or not.
        top1: one row per (selected sample, lens entry): the top-1 token and its probability at
            every video position (``positions``).
        answer_probability: ``answer_probability_by_layer`` rows of the selected samples.
        variant, norm, select, rule: the settings of the run.
    """

    baseline: pd.DataFrame
    top1: pd.DataFrame
    answer_probability: pd.DataFrame
    variant: str
    norm: str
    select: str
    rule: str = PAPER_RULE
    n_layers: int = field(default=0)

    def counts(self) -> list[Counter]:
        """Per lens entry, how often each top-1 token string occurs over the selected samples."""
        counters = [Counter() for _ in range(self.n_layers)]
        for layer, tokens in zip(self.top1.layer, self.top1.top1):
            counters[int(layer)].update(tokens)
        return counters

    def keyword_frequencies(self, keywords: Sequence[str] | Mapping[str, Sequence[str]], tokenizer, bin_size: int = 5,
                            overlapping_bins: bool = False, min_count: int = 100):  # fmt: skip
        """``lens.keyword_frequencies`` over the selected samples of this run."""
        if self.top1.empty:
            raise ValueError(f"no sample is selected by select={self.select!r}: there are no lens results to count; "
                             "try select='all'")  # fmt: skip
        return keyword_table(self.counts(), keywords, tokenizer, bin_size, overlapping_bins, min_count)

    def __repr__(self) -> str:
        n = len(self.baseline)
        kept = self.top1.sample_id.nunique() if len(self.top1) else 0
        return f"LensRun(variant={self.variant!r}, norm={self.norm!r}, select={self.select!r}: {kept} of {n} samples)"


def _probe(model, prompt, variant: str, norm: str, top_k: int, rule: str, keep,
           known: bool | None = None) -> tuple[bool | None, dict | None]:  # fmt: skip
    """One forward: correctness (``known`` if given), and (if ``keep(correct)``) the lens tokens
    and answer rows."""
    n_layers = model.cfg.n_layers
    tm = prompt.token_map
    video, last = tm.video, tm.last
    lens, answer = lens_names(n_layers), answer_names(n_layers)
    wanted = {name: video for name in lens}
    for name in answer:
        wanted[name] = torch.cat([wanted[name], last]) if name in wanted else last
    reduce = {name: (lambda act, pos=pos: act[pos.to(act.device)]) for name, pos in wanted.items()}
    acts, logits = capture(model, prompt, list(wanted), reduce)
    correct = is_correct(model, prompt, logits[0, -1], rule) if known is None else known
    if not keep(correct):
        return correct, None
    n_video = len(video)
    lens_acts = {name: acts[name][:n_video] for name in lens}
    answer_acts = {name: acts[name][-1:] for name in answer}
    top_ids, top_probs, str_vocab = top_tokens(model, lens_residuals(model, lens_acts), variant, top_k)
    tokens = [[str_vocab[i] for i in layer] for layer in top_ids[:, :, 0].tolist()]
    return correct, {"tokens": tokens, "probs": top_probs[:, :, 0], "positions": video.tolist(),
                     "answer": answer_rows(model, prompt, answer_acts, norm, correct)}  # fmt: skip


@torch.no_grad()
def run(model, samples: Iterable, *, variant: str, norm: str, select: str = "correct", rule: str = PAPER_RULE,
        out: str | Path | None = None, resume: bool = True, num_frames: int | None = 8, progress: bool = True,
        shard: Shard | str | None = None, known_correct: Mapping[str, bool] | None = None) -> LensRun:  # fmt: skip
    """Logit lens (top-1 of every video position, per entry) and answer probability by layer
    over ``samples``, for the samples ``select`` keeps.

    Args:
        variant: the lens projection ("unembed", "unembed-raw", "embed"), required.
        norm: the answer-probability norm ("released", "final", "none"), required.
        select: "correct" (the released analyses' default), "wrong" or "all".
        rule: the accuracy rule that decides "correct".
        out: results folder (tables "baseline", "lens", "answer_probability" of its
            ``results.sqlite``; ``store.load_results(out, table)``); a rerun with the same
            settings resumes.
        shard: a share of a data-parallel run (see ``flow.sweep``).
        known_correct: whether each sample (by id) is answered correctly under ``rule``, where
            that is known already (a sweep's baseline records of the same samples and frames:
            ``{r["sample_id"]: r["correct"] for r in df.attrs["baseline"]}``). Those samples are
            selected by it, and one that ``select`` drops is not run at all.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    check_norm(norm)
    check_selection(select)
    check_rule(rule)
    shard = resolve_shard(shard)
    items = identify_all(samples)
    items = shard.take(items) if shard is not None else items
    store = None
    if out is not None:
        settings = {"variant": variant, "norm": norm, "select": select, "rule": rule, "num_frames": num_frames,
                    "model": model_identity(model)}  # fmt: skip
        store = open_store(out, "lens.run", settings, [(i, item) for i, _, item in items], key=("sample_id",),
                           keys={"lens": ("sample_id", "layer"), "answer_probability": ("sample_id", "layer", "option")},
                           resume=resume, shard=shard)  # fmt: skip
    try:
        baseline, top1, answers = _lens_items(model, items, variant, norm, select, rule, store, num_frames, progress,
                                              known_correct or {})  # fmt: skip
    finally:
        if store is not None:
            store.close()
    ids = {b["sample_id"] for b in baseline}
    top1 = [r for r in top1 if r["sample_id"] in ids]
    answers = [r for r in answers if r["sample_id"] in ids]
    return LensRun(pd.DataFrame(baseline, columns=["sample_id", "task", "correct"]),
                   pd.DataFrame(top1, columns=["sample_id", "task", "layer", "positions", "top1", "top1_prob"]),
                   pd.DataFrame(answers), variant, norm, select, rule, model.cfg.n_layers)  # fmt: skip


def _lens_items(model, items, variant, norm, select, rule, store, num_frames, progress, known: Mapping[str, bool]):
    """The loop over samples: (baselines, lens rows, answer-probability rows) of all samples,
    those stored by an earlier run included; a sample ``known`` to be dropped is not run."""
    base_rows = {r["sample_id"]: r for r in store.rows("baseline")} if store is not None else {}
    top1 = store.rows("lens") if store is not None else []
    answers = store.rows("answer_probability") if store is not None else []
    # keys stored before this run (a killed run's rows of a sample without its baseline row), read once
    stored = {table: store.done(table) for table in ("lens", "answer_probability")} if store is not None else {}
    keep = lambda correct: is_selected({"correct": correct}, select)  # noqa: E731
    baseline = []
    runs = lambda sample_id: known.get(sample_id) is None or keep(known[sample_id])  # noqa: E731  (a forward)
    wanted = lambda sample_id: sample_id not in base_rows and runs(sample_id)  # noqa: E731
    with PromptPreparer(model, items, num_frames, wanted=wanted) as preparer:
        for sample_id, task, _ in tqdm(items, desc="logit lens", disable=not progress):
            if sample_id in base_rows:
                baseline.append(base_rows[sample_id])
                continue
            correct, probe = known.get(sample_id), None
            if runs(sample_id):
                correct, probe = _probe(model, preparer.prompt(sample_id), variant, norm, 1, rule, keep, correct)
            if probe is not None:
                new_top1 = [{"sample_id": sample_id, "task": task, "layer": layer, "positions": probe["positions"],
                             "top1": probe["tokens"][layer], "top1_prob": probe["probs"][layer].tolist()}
                            for layer in range(model.cfg.n_layers)]  # fmt: skip
                new_answers = [{"sample_id": sample_id, "task": task, **r} for r in probe["answer"]]
                if store is not None:  # rows a killed run stored already are skipped by key
                    new_top1 = _only_new(store, "lens", new_top1, stored["lens"])
                    new_answers = _only_new(store, "answer_probability", new_answers, stored["answer_probability"])
                top1 += new_top1
                answers += new_answers
            row = {"sample_id": sample_id, "task": task, "correct": correct}
            if store is not None:  # written last: a sample counts as done only once its lens rows are stored
                store.add("baseline", [row])
            baseline.append(row)
    return baseline, top1, answers


def _only_new(store, table: str, rows: list[dict], stored: set[tuple]) -> list[dict]:
    """Store ``rows``; returns those whose key is not in ``stored`` (the keys the store held when
    the run began: a resumed sample's rows appear once; a run stores each sample once)."""
    fresh = [r for r in rows if tuple(r[f] for f in store.key(table)) not in stored]
    store.add(table, fresh)
    return fresh
