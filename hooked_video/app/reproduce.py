"""The paper's pipeline on any supported model pair, per task, with a report.

    result = reproduce("byminji/LLaVA-NeXT-7B-Video-FT", "TVBench/", out="runs/paper",
                       image_model="llava-hf/llava-v1.6-vicuna-7b-hf")

Runs, each resumable in its own folder under ``out``: the four knockout targets on the video
model (Figs. 2-3), whose baselines give the accuracy per task (the paper's rule); cross-frame knockout on the image model
(Fig. 2); the logit lens over video tokens with keyword frequencies (Fig. 4) and answer
probability by layer (Fig. 3, right) on correctly answered samples; the effective pathways
against random pruning (Table 1), with the model's preset when it is one of the paper's models,
else with ranges derived from the sweep; a pathway discovered from a subset of the questions
(``discovery.discover``, attribution-ranked, exact figures), side by side with those ranges and
random pruning of the same sizes, and on the same questions the faithfulness-size curve over every
attention edge (``discovery.size_curve``). Then ``out/index.html`` with one figure per task.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from hooked_video import viz
from hooked_video.analysis import discovery, flow, lens, pathways
from hooked_video.analysis.accuracy import PAPER_RULE
from hooked_video.runtime.distributed import barrier, resolve_shard
from hooked_video.data.benchmarks import PAPER_TVBENCH_TASKS
from hooked_video.app.outputs import REPORT_FILES, check_folder, save_figure, write_text
from hooked_video.app.report import Section, write_report
from hooked_video.core.checks import InvalidInputError


@dataclass
class Reproduction:
    """What ``reproduce`` measured (also written under ``out``)."""

    models: dict[str, str]
    accuracy: pd.DataFrame
    sweep: pd.DataFrame
    image_cross_frame: pd.DataFrame | None
    lens: lens.LensRun
    keywords: dict | None
    spec: pathways.PathwaySpec
    spec_source: str
    pathways: pathways.PathwayReport
    pathways_tomato: pathways.PathwayReport | None
    figures: dict = field(default_factory=dict)
    seconds: float = 0.0
    settings: dict = field(default_factory=dict)
    discovery: discovery.Discovery | None = None
    size_curve: discovery.SizeCurve | None = None
    size_curve_note: str = ""  # why no size curve was drawn, if one was asked for


def default_dtype(device) -> str:
    """bfloat16 on a GPU (as the paper ran), float32 on the CPU."""
    import torch

    on_gpu = str(device).startswith("cuda") if device is not None else torch.cuda.is_available()
    return "bfloat16" if on_gpu else "float32"


def load_models(video_model, image_model=None, device=None, dtype=None):
    """HookedVideoLLMs from names (instances pass through). An image-only LLaVA checkpoint is
    loaded on the video model's pooled path when the video model is PLLaVA-format."""
    from hooked_video.model.hooked import HookedVideoLLM
    from hooked_video.model.errors import UnsupportedArchitectureError

    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else None
    dtype = dtype or default_dtype(device)
    if isinstance(video_model, (str, Path)):
        video_model = HookedVideoLLM.from_pretrained(video_model, device=device, dtype=dtype)
    if isinstance(image_model, (str, Path)):
        try:
            image_model = HookedVideoLLM.from_pretrained(image_model, device=device, dtype=dtype)
        except UnsupportedArchitectureError:
            pooling = getattr(video_model.hf_model.config, "pooling_shape", None)
            if pooling is None:
                raise
            image_model = HookedVideoLLM.from_pretrained(image_model, device=device, dtype=dtype, video_pooling=pooling)
    return video_model, image_model


def load_benchmark(data, tasks: Sequence[str] | None, samples: int | None):
    """The benchmark with the released loader's windows (bound tasks, short windows repeated);
    the paper's five TVBench tasks when present; at most ``samples`` questions per task."""
    from hooked_video.data import open_dataset

    if data is None or isinstance(data, Sequence) and not isinstance(data, (str, Path)):
        items = list(data or [])
    else:
        items = list(open_dataset(data, short_windows="repeat"))
    present = {s.task for s in items}
    wanted = list(tasks) if tasks else ([t for t in PAPER_TVBENCH_TASKS if t in present] or sorted(present))
    chosen = []
    for task in wanted:
        of_task = [s for s in items if s.task == task]
        if not of_task:
            raise ValueError(f"task {task!r} has no samples in {data}; tasks there: {sorted(present)}")
        chosen += of_task[:samples] if samples else of_task
    return chosen


def reproduce(video_model, data, out: str | Path = "runs/paper", image_model=None, tomato=None, tasks: Sequence[str] | None = None,
              samples: int | None = None, window: int = 9, select: str = "correct", keywords: Mapping | None = None,
              spec: pathways.PathwaySpec | None = None, device=None, dtype=None, batch_size: int = 8,
              progress: bool = True, shard="auto", engine: str = "auto", overwrite: bool = False,
              lens_variant: str = "embed", keyword_min_count: int | None = 100,
              overlapping_bins: bool = False, discover_samples: int = 32, size_curve: bool = True) -> Reproduction:  # fmt: skip
    """Run the paper's analyses and write ``out/index.html`` (see the module docstring).

    Args:
        video_model, image_model: names/folders or loaded HookedVideoLLMs; the image model is
            optional (Fig. 2's comparison).
        data: a TVBench folder (or any benchmark folder / JSON file / list of Samples).
        tomato: an optional TOMATO folder for the pathway evaluation (Table 1).
        tasks, samples: which tasks (default: the paper's five when present) and how many
            questions per task (default: all).
        window: k of the knockout window. select: samples knocked out / probed.
        keywords: ``{task: {"spatial": [...], "temporal": [...]}}`` for the lens keyword
            figure (default: the paper's bags, for the tasks that have them).
        lens_variant: the lens of the keyword figure: "embed" (default: the released analysis
            projects video positions on the input embedding W_E), or "unembed" (TransformerLens'
            final norm and W_U). Answer probabilities use W_U either way.
        keyword_min_count: keywords with fewer top-1 hits are dropped (released: 100); None:
            half the selected samples of the task (for small runs).
        overlapping_bins: the released figure's off-by-one 5-layer bins (each bin also counts
            the next bin's first layer); default: disjoint bins.
        spec: pathway ranges (default: the model's preset if it is one of the paper's models,
            else derived from the sweep).
        dtype: default bfloat16 on a GPU, float32 on the CPU.
        shard: "auto" (default): under ``torchrun`` / ``accelerate launch`` each process runs its
            share of every analysis and process 0 writes the report; None: all samples here.
        engine: how knockout passes run, as in ``flow.sweep`` ("compiled" for long GPU runs).
        discover_samples: questions the pathway search runs on (taken from every task in turn;
            0: no search). Under a launcher every process scores its share of them, in step with
            the others; stored under ``out/discovery``.
        size_curve: also draw the faithfulness-size curve over every attention edge on those
            questions (``discovery.size_curve``, 3 random seeds, the ranges above as the preset).
        overwrite: replace ``index.html``, ``summary.json`` and figures in ``out`` that hooked-video did
            not write (default: refuse them, before any work; see ``outputs``).
    """
    start = time.perf_counter()
    out = check_folder(out, REPORT_FILES, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    shard = resolve_shard(shard)
    video_model, image_model = load_models(video_model, image_model, device, dtype)
    items = load_benchmark(data, tasks, samples)
    names = {"video": str(video_model.cfg.model_name)} | ({"image": str(image_model.cfg.model_name)} if image_model else {})
    common = dict(window=window, select=select, batch_size=batch_size, progress=progress, engine=engine)
    sweep = _merged(lambda part: flow.sweep(video_model, items, out=out / "video_flow", shard=part, **common), shard)
    image_cf = None
    if image_model is not None:
        image_cf = _merged(lambda part: flow.sweep(image_model, items, targets=["cross-frame"], out=out / "image_flow",
                                                   shard=part, **common), shard)  # fmt: skip
    norm = released_norm(video_model)
    answered = {b["sample_id"]: bool(b["correct"]) for b in sweep.attrs["baseline"]}  # no second forward to find out
    lens_run = _merged(lambda part: lens.run(video_model, items, variant=lens_variant, norm=norm, select=select,
                                             out=out / "lens", progress=progress, shard=part, known_correct=answered),
                       shard)  # fmt: skip
    acc = pd.concat({"video": baseline_accuracy(sweep).accuracy}
                    | ({"image": baseline_accuracy(image_cf).accuracy} if image_model else {}), axis=1)  # fmt: skip
    acc.attrs["rule"] = PAPER_RULE
    keyword_tables = _keywords(lens_run, video_model, keywords, keyword_min_count, overlapping_bins)
    spec, source = _pathway_spec(video_model, sweep, spec)
    report = _merged(lambda part: pathways.evaluate(video_model, items, spec, out=out / "pathways", progress=progress,
                                                    engine=engine, shard=part), shard)  # fmt: skip
    report_tomato = None
    if tomato is not None:
        tomato_items = load_benchmark(tomato, None, samples)
        report_tomato = _merged(lambda part: pathways.evaluate(video_model, tomato_items, spec, out=out / "pathways_tomato",
                                                               progress=progress, engine=engine, shard=part), shard)  # fmt: skip
    result = Reproduction(names, acc, sweep, image_cf, lens_run, keyword_tables, spec, source, report, report_tomato)
    result.settings = _settings(video_model, window, select, engine, norm, lens_variant, keyword_min_count, overlapping_bins)
    if discover_samples:  # every process searches its share of the questions, in step with the others
        searched = interleaved(items, discover_samples)
        shown = progress and (shard is None or shard.index == 0)
        result.discovery = discovery.discover(video_model, searched, method="atp", seeds=3, preset=spec, engine=engine,
                                              out=out / "discovery", progress=shown, shard=shard)  # fmt: skip
        if size_curve:
            try:
                result.size_curve = discovery.size_curve(video_model, searched, seeds=3, preset=spec, engine=engine,
                                                         out=out / "discovery", progress=shown, shard=shard)  # fmt: skip
            except InvalidInputError as error:  # e.g. questions of different numbers of frames: said in the report
                result.size_curve_note = str(error)
    if shard is not None and shard.index != 0:
        return result  # process 0 writes the figures and the report
    result.figures = _figures(result)
    for name, figure in result.figures.items():
        save_figure(figure, out / f"{name}.png", overwrite, dpi=90)
    result.seconds = round(time.perf_counter() - start, 1)
    _write_summary(out, result, overwrite)
    write_report(out, "Map the Flow: the paper's analyses", _intro(result), report_sections(result), overwrite=overwrite)
    return result


def interleaved(items: list, n: int) -> list:
    """At most ``n`` of ``items``, taking each task's questions in turn (every task represented)."""
    by_task: dict[str, list] = {}
    for item in items:
        by_task.setdefault(item.task, []).append(item)
    queues = list(by_task.values())
    chosen = []
    while len(chosen) < n and any(queues):
        for queue in queues:
            if queue and len(chosen) < n:
                chosen.append(queue.pop(0))
    return chosen


def released_norm(model) -> str:
    """The answer-probability norm of the released analysis of this model's family: the final
    norm at every layer for VideoLLaMA3, only at the last layer for the LLaVA and InternVL runs."""
    return "final" if model.family.name == "video_llama_3" else "released"


def _merged(call, shard):
    """``call(shard)`` (this process's share), then, once every process is done, ``call(None)``:
    the results of all samples, read from the stores (nothing is computed twice)."""
    result = call(shard)
    if shard is None:
        return result
    if not barrier():
        raise ValueError(f"reproduce() runs shards only under torchrun / accelerate launch (got shard {shard} "
                         "without a launcher); for job arrays run flow, lens and prune with --shard")  # fmt: skip
    return call(None)


def baseline_accuracy(sweep: pd.DataFrame) -> pd.DataFrame:
    """Accuracy per task plus "overall" (columns accuracy, n) from a sweep's baseline records,
    which hold every sample's unmodified answer under the sweep's rule."""
    df = pd.DataFrame(sweep.attrs["baseline"], columns=["task", "correct"])
    table = df.groupby("task").correct.agg(accuracy="mean", n="size")
    table.loc["overall"] = [df.correct.mean(), len(df)]
    return table


def _keywords(run: lens.LensRun, model, keywords: Mapping | None, min_count: int | None,
              overlapping_bins: bool) -> dict | None:  # fmt: skip
    """Keyword frequencies per task with a keyword bag (selected samples of that task only)."""
    bags = dict(keywords) if keywords is not None else lens.PAPER_KEYWORDS
    tables = {}
    for task, groups in bags.items():
        ids = set(run.baseline[run.baseline.task == task].sample_id)
        rows = run.top1[run.top1.sample_id.isin(ids)]
        if len(rows):
            counts = lens.LensRun(run.baseline, rows, run.answer_probability, run.variant, run.norm, run.select,
                                  run.rule, run.n_layers).counts()  # fmt: skip
            threshold = max(1, len(ids) // 2) if min_count is None else min_count
            tables[task] = lens.keyword_table(counts, groups, model.tokenizer, overlapping_bins=overlapping_bins,
                                              min_count=threshold)  # fmt: skip
    return tables or None


def _pathway_spec(model, sweep: pd.DataFrame, spec) -> tuple[pathways.PathwaySpec, str]:
    if spec is not None:
        return spec, "given"
    preset = pathways.preset_for(model)
    if preset is not None and preset not in pathways.SWEEP_READ_PRESETS:
        return pathways.PathwaySpec.preset(preset), f"the preset {preset!r}"
    if sweep.empty:
        return pathways.PathwaySpec(None, None, None, n_layers=model.cfg.n_layers), "no correctly answered sample to derive ranges"
    return pathways.PathwaySpec.from_sweep(sweep), "derived from this sweep (mean drop > 10%)"


def _figures(r: Reproduction) -> dict:
    figures = {}
    if len(r.sweep):
        figures["knockout"] = viz.knockout_curves(r.sweep)
        figures["blueprint"] = viz.flow_blueprint(r.sweep)
    if r.image_cross_frame is not None and (len(r.image_cross_frame) or len(r.sweep)):
        video_cf = r.sweep[r.sweep.target == "cross-frame"]
        figures["cross_frame"] = viz.knockout_curves({"image": r.image_cross_frame, "video": video_cf}, targets=["cross-frame"])
    if len(r.lens.answer_probability):
        figures["answer_probability"] = viz.answer_probability_plot(r.lens.answer_probability, by_task=True)
    for task, table in (r.keywords or {}).items():
        figures[f"keywords_{task.lower().replace(' ', '_')}"] = viz.keyword_bars(table, title=f"{task}: lens keywords")
    if r.discovery is not None:
        figures["discovery"] = viz.faithfulness_curve(r.discovery, title="discovered pathway vs random pruning and the ranges used")
    if r.size_curve is not None:
        figures["size_curve"] = viz.faithfulness_curve(r.size_curve, title="ranked block pathways vs random pruning and the ranges used")
    return figures


def _settings(model, window, select, engine, norm, lens_variant, keyword_min_count, overlapping_bins) -> dict:
    """What the run used, for the report and summary.json (docs/method.md lists the released ones)."""
    template = model.family.default_template or "default"
    settings = {"prompt template": template, "frames": f"8, {model.family.frame_sampling}", "knockout window": window,
                "selected samples": select, "accuracy rule": PAPER_RULE, "engine": engine,
                "answer-probability norm": norm, "keyword lens": lens_variant,
                "keyword min count": "half the selected samples" if keyword_min_count is None else keyword_min_count,
                "keyword bins": "overlapping (released)" if overlapping_bins else "disjoint"}  # fmt: skip
    budget = getattr(model.family, "max_visual_tokens", None)
    if budget is not None:
        settings["video token budget"] = budget
    return settings


def _intro(r: Reproduction) -> str:
    models = ", ".join(f"{role}: {name}" for role, name in r.models.items())
    return (f"{models}. {len(r.lens.baseline)} questions; accuracy rule {r.accuracy.attrs.get('rule')}; "
            f"{r.seconds} s. Layers are numbered from 1 in figures and from 0 in the raw results. Settings: "
            + "; ".join(f"{k} {v}" for k, v in r.settings.items()) + ".")  # fmt: skip


def report_sections(r: Reproduction) -> list[Section]:
    """The report's sections: accuracy, knockout figures per task, lens, pathways."""
    kept = r.sweep.sample_id.nunique() if len(r.sweep) else 0
    k = int(r.sweep.n_blocked_layers.max()) if len(r.sweep) else 0
    sections = [Section("Accuracy per task", table=r.accuracy)]
    sections.append(Section("The four knockout targets (video model)", f"{kept} correctly answered questions knocked out, "
                            f"window of {k} layers around each swept layer; one row of panels per task.", "knockout.png"))  # fmt: skip
    if "cross_frame" in r.figures:
        sections.append(Section("Cross-frame knockout: image model vs video model", "", "cross_frame.png"))
    sections.append(Section("Flow blueprint", "Critical layer ranges per pathway, from the sweep.", "blueprint.png"))
    norm = r.lens.norm
    text = "Norm only at the last layer (the released analysis)." if norm == "released" else f"Norm: {norm}."
    sections.append(Section("Answer probability by layer", text, "answer_probability.png"))
    for name in r.figures:
        if name.startswith("keywords_"):
            sections.append(Section(f"Logit-lens keywords ({name[9:].replace('_', ' ')})", "", f"{name}.png"))
    table = r.pathways.accuracy.copy()
    table["retention (pathways)"] = r.pathways.retention.retention.get("pathways")
    sections.append(Section("Effective pathways (TVBench)", f"Ranges ({r.spec_source}): INTER {r.spec.inter}, V2Q {r.spec.v2q}, "
                            f"Q2L {r.spec.q2l} (0-based).", table=table))  # fmt: skip
    if r.pathways_tomato is not None:
        sections.append(Section("Effective pathways (TOMATO)", table=r.pathways_tomato.accuracy))
    if r.discovery is not None:
        found = r.discovery
        text = (f"Searched on {found.samples} questions (every task in turn): {found!r}. Compared on the same questions "
                f"with the ranges above ({r.spec_source}) and random pruning of the found pathway's size (3 seeds).")
        sections.append(Section("Discovered pathway vs the ranges above", text, "discovery.png", table=discovery_table(found)))
    if r.size_curve is not None:
        text = (f"{r.size_curve!r}. Every attention edge in block groups (text before the video, each frame, question, "
                "other text, last), closed in the order of their attribution estimates, each size exact; random pruning "
                "(3 seeds) where the paper's rule reaches the size.")  # fmt: skip
        sections.append(Section("Every attention edge: ranked pathways vs the ranges above", text, "size_curve.png",
                                table=size_curve_table(r.size_curve)))  # fmt: skip
    elif r.size_curve_note:
        sections.append(Section("Every attention edge: not drawn", r.size_curve_note))
    return sections


def size_curve_table(curve: discovery.SizeCurve) -> pd.DataFrame:
    """At the preset's size: the ranked pathway, the preset and random pruning (mean over seeds);
    and the smallest ranked pathway keeping the accuracy: edges kept, change (%), accuracy."""
    columns = ["retention", "rel_change", "accuracy"]
    table, rows = curve.table, {}
    preset = table[table.pathway == "preset"]
    if len(preset):
        size = round(float(preset.retention.iloc[0]), 6)
        rows["ranked, the ranges' size"] = table[(table.pathway == "ranked") & (table["size"] == size)][columns].iloc[0]
        rows["ranges above"] = preset[columns].iloc[0]
        random = table[(table.pathway == "random") & (table["size"] == size)]
        if len(random):
            rows["random, same size"] = random[columns].astype(float).mean()
    if curve.smallest is not None:
        ranked = table[(table.pathway == "ranked") & (table.n_closed == len(curve.smallest.closed))]
        rows["smallest ranked keeping the accuracy"] = ranked[columns].iloc[0]
    return pd.DataFrame(rows).T.astype(float).round(4)


def discovery_table(found: discovery.Discovery) -> pd.DataFrame:
    """The found pathway, the ranges it was compared with, and random pruning of the found size
    (mean over seeds): edges kept, mean change of the top token's probability (%), accuracy."""
    columns = ["retention", "rel_change", "accuracy"]
    rows = {}
    if found.step is not None:
        rows["discovered"] = found.path.loc[found.step, columns]
    curve = found.curve if found.curve is not None else pd.DataFrame(columns=["pathway", "step", *columns])
    for name, part in (("ranges above", curve[curve.pathway == "preset"]),
                       ("random, same size", curve[(curve.pathway == "random") & (curve.step == found.step)])):
        if len(part):
            rows[name] = part[columns].astype(float).mean()
    return pd.DataFrame(rows).T.astype(float).round(4)


def _write_summary(out: Path, r: Reproduction, overwrite: bool = False) -> None:
    summary = {
        "models": r.models, "seconds": r.seconds, "rule": PAPER_RULE,
        "accuracy": r.accuracy.round(4).to_dict("index"),
        "spec": {"inter": r.spec.inter, "v2q": r.spec.v2q, "q2l": r.spec.q2l, "source": r.spec_source},
        "pathways": {"accuracy": r.pathways.accuracy.round(4).to_dict("index"),
                     "retention": r.pathways.retention.retention.round(4).to_dict()},
        "knocked_out_samples": int(r.sweep.sample_id.nunique()) if len(r.sweep) else 0,
        "discovery": None if r.discovery is None else {
            **{k: v for k, v in r.discovery.summary().items()}, "compared": discovery_table(r.discovery).to_dict("index")},
        "size_curve": None if r.size_curve is None else {
            "smallest": r.size_curve.smallest and r.size_curve.smallest.settings(),
            "compared": size_curve_table(r.size_curve).to_dict("index")},
        "size_curve_note": r.size_curve_note or None,
        "settings": r.settings,
    }  # fmt: skip
    write_text(out / "summary.json", json.dumps(summary, indent=1, default=str), overwrite)
