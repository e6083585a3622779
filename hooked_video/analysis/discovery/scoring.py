"""Exact figures of pruned edge sets over fixed prompts, cached and stored row by row.

Every candidate a pathway search tries, and every random-pruning point of its curve, is one
*setting*: a name and, per prompt, the edges it blocks in each layer. ``Scorer`` keeps one
trace per prompt (the engine recomputes only the rows and layers a setting changes), scores
each (setting, sample) pair once, and with a results store writes each sample's rows as they
are computed, so a search that is interrupted resumes where it stopped: its steps replay from
the stored rows without candidate forwards.
"""

from __future__ import annotations

from typing import Callable

import pandas as pd
import torch
from tqdm.auto import tqdm

from hooked_video.analysis import knockout as ko
from hooked_video.analysis.accuracy import PAPER_RULE, option_prediction
from hooked_video.analysis.flow.records import last_position_probs
from hooked_video.analysis.flow.sweep import choose_engine
from hooked_video.analysis.pathways import _Runner, count_edges
from hooked_video.core.checks import InvalidInputError
from hooked_video.data.prefetch import PromptPreparer
from hooked_video.runtime.distributed import Shard, wait_for
from hooked_video.runtime.store_format import _normal

#: The store table of per-sample values a search pools (the full model's answers, rankings), keyed by (name, sample id).
PER_SAMPLE = "per_sample"
_WHY = ("a pooled search needs every sample's figures at each step, so its shards go in step; start the other shards "
        "with the same command and their --shard i/n")

#: A setting's edges for one prompt: (index of the prompt, the prompt) -> {layer: blocked edges}.
EdgesOf = Callable[[int, object], dict[int, ko.EdgeSet]]


class Scorer:
    """Exact figures of settings over ``items`` ((sample id, task, sample) triples).

    ``score({name: edges_of, ...})`` -> {name: figures}: over the samples, the retention (edges
    kept / causal edges, summed over samples and layers), the mean relative change (%) of the
    full model's top-token probability, the share of changed top tokens, and accuracy (``rule``,
    by default the paper's). ``rows(name)`` gives a setting's per-sample rows.
    """

    def __init__(self, model, items: list, num_frames: int | None, engine: str, store=None, progress: bool = False,
                 rule: str = PAPER_RULE, stored: list[dict] | None = None, shard: Shard | None = None,
                 positions: list[int] | None = None) -> None:  # fmt: skip
        if shard is not None and store is None:
            raise InvalidInputError("shards of a search meet in its results folder: give out= (the same on every shard)")
        self.model, self.store, self.n_layers, self.rule, self.shard = model, store, model.cfg.n_layers, rule, shard
        self.ids = [sample_id for sample_id, _, _ in items]
        self.tasks = [task for _, task, _ in items]
        with PromptPreparer(model, items, num_frames) as preparer:
            self.prompts = [preparer.prompt(sample_id) for sample_id, _, _ in tqdm(items, desc="preparing", disable=not progress)]
        #: The samples this process computes: every sample, or a shard's, by the samples' ``positions`` in the whole
        #: run (default: their order here), as ``Shard.take`` shares a run out (a group of a run is shared alike).
        positions = list(range(len(items))) if positions is None else positions
        self.mine = [i for i, at in enumerate(positions) if shard is None or at % shard.count == shard.index]
        self.runners = {i: _Runner(model, model.embed(self.prompts[i]), choose_engine(model, engine, ())) for i in self.mine}
        self.top, self.p_top, own = {}, {}, {}
        for i, runner in self.runners.items():
            logits = runner.full()
            probs = last_position_probs(logits)[0]
            self.top[i] = int(probs.argmax())
            self.p_top[i] = float(probs[self.top[i]])
            own[i] = option_prediction(logits, self.prompts[i], model.tokenizer, rule) == self.prompts[i].answer
        self.full_correct = self.per_sample("full model correct", own.__getitem__) if shard is not None else [own[i] for i in self.mine]
        mine = {self.ids[i] for i in self.mine}
        if stored is None:  # the store's rows (a caller scoring several groups reads them once)
            stored = store.rows("rows") if store is not None else []
        self.done = {(r["setting"], r["sample_id"]): r for r in stored if shard is not None or r["sample_id"] in mine}
        self.figures: dict[str, dict] = {}

    @property
    def full_accuracy(self) -> float:
        return sum(self.full_correct) / len(self.full_correct)

    @torch.no_grad()
    def score(self, settings: dict[str, EdgesOf]) -> dict[str, dict]:
        """The figures of each setting (see the class docstring); new ones computed, candidates of
        one prompt side by side in the engine."""
        todo = {name: edges_of for name, edges_of in settings.items() if name not in self.figures}
        for i in self.mine:
            sample_id, prompt = self.ids[i], self.prompts[i]
            names = [name for name in todo if (name, sample_id) not in self.done]
            if not names:
                continue
            edge_sets = [todo[name](i, prompt) for name in names]
            rows = [self._row(i, name, edges, logits)
                    for name, edges, logits in zip(names, edge_sets, self.runners[i].knocked_out_many(edge_sets))]  # fmt: skip
            if self.store is not None:
                self.store.add("rows", rows)
            self.done.update({(name, sample_id): row for name, row in zip(names, rows)})
        missing = {(name, sample_id) for name in todo for sample_id in self.ids} - set(self.done)
        if missing:  # the other shards' samples: read setting by setting (the store's index), not the whole table
            rows = wait_for(self.store, "rows", missing, lambda r: (r["setting"], r["sample_id"]), _WHY,
                            [{"setting": name} for name in sorted({name for name, _ in missing})])  # fmt: skip
            self.done.update({(r["setting"], r["sample_id"]): r for r in rows})
        for name in todo:
            table = self.rows(name)
            self.figures[name] = {"retention": table.retained.sum() / table.baseline.sum(),
                                  "rel_change": table.rel_change.mean(), "flipped": table.flipped.mean(),
                                  "accuracy": table.correct.mean()}  # fmt: skip
        return {name: self.figures[name] for name in settings}

    def score_pathway(self, name: str, pathway) -> dict:
        """The figures of one pathway (anything with ``layer_edges``: a spec, a refined or block
        pathway), stored under ``name``, which must identify it."""
        return self.score({name: lambda i, prompt: pathway.layer_edges(prompt.token_map, self.n_layers)})[name]

    def per_sample(self, name: str, compute: Callable[[int], object], desc: str | None = None) -> list:
        """``compute(i)`` (JSON-able) for every sample, in order: this process's samples computed
        (each stored as it is, and read back instead on a rerun), the other shards' read from the
        results folder once they are there. ``desc``: a progress bar's label (None: no bar)."""
        stored = {}
        if self.store is not None:
            stored = {r["sample_id"]: r["value"] for r in self.store.rows(PER_SAMPLE, {"name": name})}
        todo = [i for i in self.mine if self.ids[i] not in stored]
        for i in tqdm(todo, desc=desc, disable=desc is None or not todo):
            stored[self.ids[i]] = _normal(compute(i))
            if self.store is not None:
                self.store.add(PER_SAMPLE, [{"name": name, "sample_id": self.ids[i], "value": stored[self.ids[i]]}])
        missing = {(name, sample_id) for sample_id in self.ids if sample_id not in stored}
        if missing:
            rows = wait_for(self.store, PER_SAMPLE, missing, lambda r: (r["name"], r["sample_id"]), _WHY, {"name": name})
            stored.update({r["sample_id"]: r["value"] for r in rows})
        return [stored[sample_id] for sample_id in self.ids]

    def mean_per_sample(self, name: str, compute: Callable[[int], dict[tuple, float]], desc: str | None = None,
                        absent_is_zero: bool = False) -> dict[tuple, float]:  # fmt: skip
        """key -> the mean over the samples of ``compute(i)[key]`` (keys: tuples of strings and
        numbers), pooled across shards as ``per_sample``: over the samples that have the key, or
        with ``absent_is_zero`` over every sample (a sample without the key adds 0)."""
        values = self.per_sample(name, lambda i: [[*key, value] for key, value in compute(i).items()], desc)
        totals: dict[tuple, list] = {}
        for entries in values:
            for *key, value in entries:
                total = totals.setdefault(tuple(key), [0.0, 0])
                total[0] += value
                total[1] += 1
        return {key: total / (len(values) if absent_is_zero else count) for key, (total, count) in totals.items()}

    def rows(self, name: str) -> pd.DataFrame:
        """One row per sample of a scored setting: sample_id, task, rel_change, flipped, correct, retained, baseline."""
        return pd.DataFrame([{**self.done[(name, sample_id)], "task": task} for sample_id, task in zip(self.ids, self.tasks)])

    def _row(self, i: int, name: str, edges: dict[int, ko.EdgeSet], logits: torch.Tensor) -> dict:
        probs = last_position_probs(logits[None, None])[0]
        counts = count_edges(edges, self.prompts[i].n_positions)
        prediction = option_prediction(logits[None, None], self.prompts[i], self.model.tokenizer, self.rule)
        return {"setting": name, "sample_id": self.ids[i],
                "rel_change": (float(probs[self.top[i]]) - self.p_top[i]) / self.p_top[i] * 100,
                "flipped": int(probs.argmax()) != self.top[i], "correct": prediction == self.prompts[i].answer,
                "retained": counts.retained, "baseline": counts.baseline}  # fmt: skip
