"""``hooked-video demo``: the paper's pipeline on the bundled toy models, offline, on a laptop.

Builds the synthetic benchmark, then runs ``reproduce`` with ``toy16-video-ft`` as the video model
and ``toy16-image`` as the image model on the five temporal tasks (window scaled to the toy depth),
and writes ``index.html`` with the figures and a reading of each of the paper's four findings,
computed from the numbers, with the evidence it rests on: a finding measured on too few samples
or keywords says so instead of claiming a result.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd

from hooked_video import viz
from hooked_video.analysis import lens
from hooked_video.analysis.accuracy import accuracy
from hooked_video.data import TVBench, synthetic
from hooked_video.app.outputs import DEMO_FILES, check_folder, save_figure, write_text
from hooked_video.app.report import Section, write_report
from hooked_video.app.reproduce import Reproduction, report_sections, reproduce

SPATIAL_WORDS = [*synthetic.COLOURS, *synthetic.SHAPES]
TEMPORAL_WORDS = ["growing", "shrinking", "flashes", "first", *synthetic.DIRECTIONS, "move", "change", "from", "to"]
MIN_SAMPLES = 5  # fewer knocked-out / probed samples than this: too little evidence for a reading
MIN_KEYWORDS = 2  # keywords per group that must reach the count filter for Finding 2
MIN_BIN_GAP = 0.25  # temporal keywords must peak at least this many bins after spatial ones (else: a tie)


def _window(n_layers: int) -> int:
    """The paper's k = 9 of 32 layers, scaled to the model's depth (odd, at least 3)."""
    k = max(3, round(9 * n_layers / 32))
    return k if k % 2 else k + 1


def run(out: str | Path = "hooked_video_demo", data: str | Path | None = None, samples: int = 8,
        models: tuple[str, str] = ("toy16-image", "toy16-video-ft"), device=None, progress: bool = True,
        overwrite: bool = False) -> dict:  # fmt: skip
    """Run the whole demo; returns the summary (also written to ``out/summary.json``). Files in ``out``
    that hooked-video did not write are refused before any work, unless ``overwrite``."""
    start = time.perf_counter()
    out = check_folder(out, DEMO_FILES, overwrite)
    root = Path(data) if data else out / "synthetic"
    benchmark = TVBench(synthetic.generate(root, per_task=samples, seed=0, progress=progress))
    temporal_names = sorted({s.task for s in benchmark if s.id.split("/")[0] in synthetic.TEMPORAL_TASKS})
    from hooked_video.app.reproduce import load_models

    video_model, image_model = load_models(models[1], models[0], device, "float32")
    keywords = {task: {"spatial": SPATIAL_WORDS, "temporal": TEMPORAL_WORDS} for task in temporal_names}
    result = reproduce(video_model, list(benchmark), out / "results", image_model=image_model, tasks=temporal_names,
                       window=_window(video_model.cfg.n_layers), keywords=keywords, progress=progress,
                       overwrite=overwrite, lens_variant="unembed", keyword_min_count=None, discover_samples=0)  # fmt: skip
    # the toys' readings use TransformerLens' lens (W_U) and a count threshold scaled to a few samples
    static = [s for s in benchmark if s.id.split("/")[0] in synthetic.SINGLE_FRAME_TASKS]
    static_acc = pd.concat({name: accuracy(m, static, progress=False).accuracy
                            for name, m in zip(models, (image_model, video_model))}, axis=1)  # fmt: skip
    readings, summary = _readings(result, video_model, models)
    summary.update(models=list(models), samples_per_task=samples, seconds=round(time.perf_counter() - start, 1),
                   accuracy=result.accuracy.rename(columns={"video": models[1], "image": models[0]}).round(4).to_dict("index"),
                   accuracy_single_frame=static_acc.round(4).to_dict("index"))  # fmt: skip
    figure = _keyword_overlay(result, video_model, benchmark)
    if figure is not None:
        save_figure(figure, out / "results" / "finding2_frames.png", overwrite, dpi=90)
    write_text(out / "summary.json", json.dumps(summary, indent=1, default=str), overwrite)
    _write_page(out, result, readings, summary, static_acc, overwrite)
    return summary


# ----- readings: computed from the numbers, with their evidence ----------------------------------
def _drop_curve(df: pd.DataFrame, condition: str) -> pd.Series:
    return -df[df.condition == condition].groupby("layer").rel_change.mean()


def _evidence(n: int, what: str) -> str | None:
    return None if n >= MIN_SAMPLES else f"Too little evidence: {n} {what} (fewer than {MIN_SAMPLES}); read this as anecdotal."


#: A finding's verdict, in the same words in the terminal, summary.json and the report.
VERDICTS = {True: "reproduces", False: "does not reproduce", None: "too little evidence"}


def _readings(r: Reproduction, model, models) -> tuple[dict, dict]:
    readings, summary = {}, {}
    video_cf = r.sweep[r.sweep.target == "cross-frame"]
    image_cf = r.image_cross_frame if r.image_cross_frame is not None else pd.DataFrame(columns=r.sweep.columns)
    readings["finding1"], summary["finding1"] = _finding1(image_cf, video_cf, models)
    freq = _pooled_keywords(r, model)
    readings["finding2"], summary["finding2"] = _finding2(freq)
    readings["finding3"], summary["finding3"] = _finding3(r.lens.answer_probability, r.sweep)
    readings["finding4"], summary["finding4"] = _finding4(r)
    for key, (text, verdict, caution) in readings.items():  # one verdict, the same words in terminal, JSON and page
        summary[key]["verdict"] = VERDICTS[summary[key]["reproduces"]]
        if summary[key]["reproduces"] is None:
            verdict = f"Finding {key[-1]}: {VERDICTS[None]} to say whether it reproduces."
        readings[key] = (text, verdict, caution)
    return readings, summary


def _finding1(image: pd.DataFrame, video: pd.DataFrame, models) -> tuple[tuple, dict]:
    n_image, n_video = image.sample_id.nunique(), video.sample_id.nunique()
    if not n_video:
        return ("No correctly answered temporal question: nothing was knocked out.", None, None), {"reproduces": None}
    image_drop = _drop_curve(image, "cross-frame").max() if n_image else float("nan")
    video_drop = _drop_curve(video, "cross-frame")
    numbers = {"image_max_drop": round(float(image_drop), 2), "video_max_drop": round(float(video_drop.max()), 2),
               "video_peak_layer": int(video_drop.idxmax()) + 1, "n_image": int(n_image), "n_video": int(n_video)}  # fmt: skip
    reproduces = numbers["video_max_drop"] >= 10 and numbers["video_max_drop"] > 2 * max(numbers["image_max_drop"], 0)
    text = (f"On correctly answered questions, blocking cross-frame attention lowers P(answer) of {models[1]} by up to "
            f"{numbers['video_max_drop']:.1f}% (around layer {numbers['video_peak_layer']}, {n_video} questions), and of "
            f"{models[0]} by up to {numbers['image_max_drop']:.1f}% ({n_image} questions).")  # fmt: skip
    verdict = ("Finding 1 reproduces: the video-trained model relies on cross-frame interactions, the image model does not."
               if reproduces else "Finding 1 does not reproduce here (criterion: video drop >= 10% and more than twice "
               "the image model's).")  # fmt: skip
    caution = _evidence(min(n_image, n_video), "knocked-out questions for one of the models")
    return (text, verdict, caution), {**numbers, "reproduces": reproduces if caution is None else None}


def _pooled_keywords(r: Reproduction, model):
    if r.lens.top1.empty:
        return None
    selected = r.lens.top1.sample_id.nunique()
    bin_size = max(1, round(5 * model.cfg.n_layers / 32))
    return r.lens.keyword_frequencies({"spatial": SPATIAL_WORDS, "temporal": TEMPORAL_WORDS}, model.tokenizer,
                                      bin_size=bin_size, min_count=max(5, selected))  # fmt: skip


def _mean_bin(kf) -> float | None:
    average = kf.average.dropna()
    if average.empty or average.sum() == 0:
        return None
    return float(sum(i * v for i, v in enumerate(average.to_numpy())) / average.sum())


def _finding2(freq) -> tuple[tuple, dict]:
    if freq is None:
        return ("No correctly answered question: no lens result to count.", None, None), {"reproduces": None}
    counts = {group: len(table.raw) - 1 for group, table in freq.items()}
    spatial, temporal = _mean_bin(freq["spatial"]), _mean_bin(freq["temporal"])
    numbers = {"spatial_mean_bin": spatial, "temporal_mean_bin": temporal, "spatial_words": counts["spatial"],
               "temporal_words": counts["temporal"]}  # fmt: skip
    if spatial is None or temporal is None or min(counts.values()) < MIN_KEYWORDS:
        text = (f"Keywords reaching the count filter: {counts['spatial']} spatial, {counts['temporal']} temporal "
                f"(at least {MIN_KEYWORDS} of each are needed).")  # fmt: skip
        return (text, None, "Too little evidence to compare spatial and temporal concepts."), {**numbers, "reproduces": None}
    reproduces = temporal - spatial >= MIN_BIN_GAP
    text = (f"Spatial keywords ({counts['spatial']}) peak on average at bin {spatial:.2f}, temporal keywords "
            f"({counts['temporal']}) at bin {temporal:.2f} (0 = first bin).")  # fmt: skip
    verdict = ("Finding 2 reproduces: temporal concepts emerge in video tokens later than spatial ones." if reproduces
               else f"Finding 2 does not reproduce here: temporal words do not appear later than spatial words "
               f"(criterion: at least {MIN_BIN_GAP} bins later on average).")  # fmt: skip
    return (text, verdict, None), {**numbers, "reproduces": reproduces}


def _finding3(probs: pd.DataFrame, sweep: pd.DataFrame) -> tuple[tuple, dict]:
    if probs.empty:
        return ("No sample was selected for the answer probability.", None, None), {"reproduces": None}
    n = probs.sample_id.nunique()
    true = probs[probs.is_true].groupby("layer").prob.mean()
    false = probs[~probs.is_true].groupby("layer").prob.mean()
    rise = next((int(l) + 1 for l, p in true.items() if p > 0.5), None)
    v2q = _drop_curve(sweep, "video->question").dropna() if not sweep.empty else pd.Series(dtype=float)
    v2q_layer = int(v2q.idxmax()) + 1 if len(v2q) else None
    numbers = {"true_exceeds_half_at_layer": rise, "final_true": round(float(true.iloc[-1]), 4), "n": int(n),
               "final_false_mean": round(float(false.iloc[-1]), 4), "video_to_question_peak_layer": v2q_layer}  # fmt: skip
    if rise is None:
        return ("P(true option) never exceeds 0.5 on average.", None, None), {**numbers, "reproduces": None}
    reproduces = v2q_layer is not None and rise >= v2q_layer
    text = (f"P(true option) first exceeds 0.5 at layer {rise} (final {numbers['final_true']:.2f}; false options "
            f"{numbers['final_false_mean']:.2f}; {n} questions); video->question knockout hurts most around layer {v2q_layer}.")  # fmt: skip
    verdict = ("Finding 3 reproduces: the answer emerges after video->question integration." if reproduces
               else "Finding 3 does not reproduce here: the answer rises before the video->question flow peaks.")  # fmt: skip
    caution = _evidence(n, "questions")
    return (text, verdict, caution), {**numbers, "reproduces": reproduces if caution is None else None}


def _finding4(r: Reproduction) -> tuple[tuple, dict]:
    acc, ret = r.pathways.accuracy.loc["overall"], r.pathways.retention.retention
    spec = r.spec
    reproduces = bool(acc["pathways"] >= acc["full"] - 0.05 and acc["pathways"] > acc.get("random", 0))
    text = (f"Pathways (INTER {spec.inter}, V2Q {spec.v2q}, Q2L {spec.q2l}, 0-based, {r.spec_source}) keep "
            f"{ret['pathways']:.0%} of attention edges: accuracy {acc['full']:.2f} full, {acc['pathways']:.2f} pathways, "
            f"{acc.get('random', float('nan')):.2f} random with the same pruned share.")  # fmt: skip
    verdict = ("Finding 4 reproduces: the few critical pathways suffice, random pruning does not." if reproduces
               else "Finding 4 does not reproduce here.")  # fmt: skip
    caution = _evidence(len(r.pathways.rows), "questions")
    numbers = {"spec": {"inter": spec.inter, "v2q": spec.v2q, "q2l": spec.q2l}, "accuracy": acc.round(4).to_dict(),
               "retention": ret.round(4).to_dict(), "reproduces": reproduces if caution is None else None}  # fmt: skip
    return (text, verdict, caution), numbers


def _keyword_overlay(r: Reproduction, model, benchmark):
    """Keywords over the frames of one correctly answered question, at the lens entry where
    keywords are most frequent (so the figure shows markers if any exist)."""
    if r.lens.top1.empty:
        return None
    sample_id = r.lens.top1.sample_id.iloc[0]
    sample = next(s for s in benchmark if s.id == sample_id)
    prompt = sample.prepare(model)
    result = lens.logit_lens(model, prompt, variant="unembed", top_k=1)
    words = lens.first_subtokens(model.tokenizer, SPATIAL_WORDS + TEMPORAL_WORDS)
    hits = {h for group in words.values() for h in group}
    per_layer = [sum(t.replace("\u2581", "").strip() in hits for t in result.tokens(l)) for l in range(result.n_layers)]
    layer = max(range(result.n_layers), key=lambda l: per_layer[l])
    return viz.keywords_on_frames(result, prompt.frames, {"spatial": SPATIAL_WORDS, "temporal": TEMPORAL_WORDS},
                                  model.tokenizer, layer=layer)  # fmt: skip


def findings_markdown(summary: dict) -> str:
    """The demo's measured findings as a short Markdown list (for model cards)."""
    yes = {**VERDICTS, None: f"cannot be assessed ({VERDICTS[None]})"}
    f1, f2, f3, f4 = (summary[f"finding{i}"] for i in range(1, 5))
    return "\n".join([
        f"Measured by `hooked-video demo` ({summary['samples_per_task']} questions per task, seed 0, {summary['seconds']} s):",
        "",
        f"- Finding 1 (cross-frame interactions) {yes[f1.get('reproduces')]}.",
        f"- Finding 2 (temporal concepts emerge later in video tokens) {yes[f2.get('reproduces')]}.",
        f"- Finding 3 (answer after video->question integration) {yes[f3.get('reproduces')]}.",
        f"- Finding 4 (effective pathways) {yes[f4.get('reproduces')]}: accuracy {f4.get('accuracy')}.",
    ])  # fmt: skip


def _write_page(out: Path, r: Reproduction, readings: dict, summary: dict, static_acc: pd.DataFrame,
                overwrite: bool = False) -> None:  # fmt: skip
    results = out / "results"
    sections = []
    titles = {"finding1": "Finding 1: cross-frame interactions (image vs video model)",
              "finding2": "Finding 2: temporal concepts in video tokens (logit lens)",
              "finding3": "Finding 3: answer probability by layer", "finding4": "Finding 4: effective pathways"}  # fmt: skip
    for key, title in titles.items():
        text, verdict, caution = readings[key]
        sections.append(Section(title, text, verdict=verdict, caution=caution))
    sections.append(Section("Single-frame tasks (accuracy)", "The image model was trained on these.", table=static_acc))
    for section in report_sections(r):
        if section.figure:
            section.figure = f"results/{section.figure}"
        sections.append(section)
    if (results / "finding2_frames.png").exists():
        sections.append(Section("Keywords over frames", "Video positions whose lens top-1 is a keyword, drawn at their "
                                "cells, at the lens entry with the most keyword hits.", "results/finding2_frames.png"))  # fmt: skip
    intro = (f"{summary['models'][1]} (video) and {summary['models'][0]} (image) on {summary['samples_per_task']} synthetic "
             f"questions per task; {summary['seconds']} s. Layers are numbered from 1 in figures and text, from 0 in "
             "raw results and pathway ranges.")  # fmt: skip
    write_report(out, "Map the Flow on toy VideoLLMs", intro, sections, overwrite=overwrite)
