"""What each ``hooked-video`` command does (``cli.py`` parses the arguments; heavy libraries are
imported here, when a command runs, so ``hooked-video --help`` answers at once)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from hooked_video.app.outputs import write_text
from hooked_video.app.precheck import read_keywords
from hooked_video.runtime.distributed import Shard, barrier, local_rank, max_memory_for, process_gpus, set_threads


def run_build_tiny(args) -> None:
    from hooked_video.zoo.tiny import build_tiny

    print(build_tiny(args.arch, args.dir, seed=args.seed))


def _write_summary(args, summary: dict) -> Path:
    return write_text(Path(args.out, "summary.json"), json.dumps({"written_by": "hooked-video", **summary}, indent=1),
                      getattr(args, "overwrite", False))  # fmt: skip


def _load(args):
    """The model, on this process's GPU(s) under a launcher, split by ``--device-map``."""
    from hooked_video.model.hooked import HookedVideoLLM

    set_threads(getattr(args, "threads", None))
    kwargs, device = {}, getattr(args, "device", None)
    device_map = getattr(args, "device_map", None)
    if device_map:
        kwargs["device_map"] = device_map
        per_process = getattr(args, "gpus_per_process", None)
        if getattr(args, "max_memory", None):
            kwargs["max_memory"] = args.max_memory
        elif per_process and Shard.from_environment() is not None:  # this process's group of GPUs only
            kwargs["max_memory"] = max_memory_for(process_gpus(per_process))
    elif device is None and Shard.from_environment() is not None:
        import torch

        device = f"cuda:{local_rank()}" if torch.cuda.is_available() else None
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one line per error: no bars from transformers
    return HookedVideoLLM.from_pretrained(args.model, device=device, dtype=args.dtype, strict=not args.no_strict, **kwargs)


def _shard(args):
    """``--shard i/n``, else the launcher's (torchrun / accelerate), else None."""
    return Shard.parse(args.shard) if getattr(args, "shard", None) else Shard.from_environment()


def _sharded(args, call, merge: str = "nothing is computed again", pooled: bool = False):
    """``call(shard)`` for this process's samples. Returns the results of all samples where this
    process writes the summary: alone, or as process 0 of a launcher once all are done (read
    from the stores, nothing recomputed); otherwise None (a job-array shard says what to do,
    ``merge`` how much a merge computes). ``pooled``: every shard's result is already the whole
    run's (a search whose shards go in step), so shard 0 returns its own."""
    shard = _shard(args)
    result = call(shard)
    if shard is None:
        return result
    if pooled:
        if shard.index == 0:
            return result
        print(f"shard {shard} done: shard 0 holds the same results and writes the summary.")
        return None
    if barrier():
        return call(None) if shard.index == 0 else None
    print(f"shard {shard} done. Once every shard is done, run the same command without --shard to merge the "
          f"shards and write the summary ({merge}).")  # fmt: skip
    return None


def run_info(args) -> None:
    from hooked_video.core.versions import report

    print(report())
    if args.model is None:
        return
    model = _load(args)
    print(model)
    names = sorted(model.hook_dict)
    groups = Counter(n.split(".")[0] if not n.startswith("blocks.") else "blocks.{l}" for n in names)
    print(f"{len(names)} hook points:", ", ".join(f"{g} ({c})" for g, c in sorted(groups.items())))
    print("video hook: hook_video_embeds (batch, n_video_tokens, d_model)")


def run_tokens(args) -> None:
    model = _load(args)
    prompt = model.prepare(
        args.video, args.question, args.option or None, answer=args.answer, num_frames=args.frames
    )
    tm = prompt.token_map
    print(prompt)
    t, h, w = tm.grid_shape
    print(f"video: {len(tm.video)} tokens = {t} frames x {h} x {w} (input frames {tm.n_input_frames})")
    shown = set()
    for i, (role, token) in enumerate(zip(tm.role, prompt.str_tokens)):
        frame = int(tm.frame_of[i])
        if role == "video" and frame in shown:
            continue  # one line per frame
        shown.add(frame) if role == "video" else None
        where = f" frame {frame}" if frame >= 0 else ""
        print(f"{i:6d}  {role:15s}{where:9s} {token!r}")



def _dataset(args):
    from hooked_video.data import open_dataset

    data = open_dataset(args.data, tasks=args.task or None, skip_invalid=args.skip_invalid, short_windows=args.short_windows)
    return data.samples[: args.samples] if args.samples else data.samples


def run_open_ended(args) -> None:
    from hooked_video.analysis import flow
    from hooked_video.data.mcqa import open_questions

    questions = open_questions(args.data)
    if args.task:
        found = sorted({q["task"] for q in questions})
        missing = [t for t in args.task if t not in found]
        if missing:
            raise ValueError(f"{args.data}: no question has task {missing}; tasks in the file: {found}")
        questions = [q for q in questions if q["task"] in args.task]
    questions = questions[: args.samples]
    flow.resolve_targets(args.target or ["vqrl-to-qrl"], flow.OPEN_ENDED_TARGETS)
    model = _load(args)
    if args.verb_anchors and args.anchor_words:
        raise ValueError("give either --verb-anchors or --anchor-words, not both")
    words = "verbs" if args.verb_anchors else args.anchor_words.split(",") if args.anchor_words else None
    df = _sharded(args, lambda shard: flow.sweep_open_ended(
        model, questions, anchor=args.anchor, anchors=words, targets=args.target or ["vqrl-to-qrl"], window=args.window,
        layers=range(*args.sweep_range) if args.sweep_range else None, max_new_tokens=args.max_new_tokens,
        num_open_tokens=args.num_open_tokens, out=args.out, resume=not args.fresh, batch_size=args.batch_size,
        num_frames=args.frames, window_style=args.window_style, even_window=args.even_window, engine=args.engine,
        shard=shard))  # fmt: skip
    if df is None:
        return
    kept = [b for b in df.attrs["baseline"] if "skipped" not in b]
    summary = {"n_samples": len(df.attrs["baseline"]), "n_traced": len(kept), "anchor": args.anchor,
               "rel_change": flow.summarize(df, pool_tasks=args.pool_tasks).to_dict("records") if len(df) else []}  # fmt: skip
    _write_summary(args, summary)
    print(f"{len(df.attrs['baseline'])} questions, {len(kept)} with an anchor {args.anchor} traced")
    if len(df):
        print(df.groupby(["target", "condition"]).rel_change.agg(["mean", "min"]).round(2).to_string())
    print(f"results: {args.out}")


def run_flow(args) -> None:
    from hooked_video.analysis import flow

    if args.open_ended:
        return run_open_ended(args)
    samples = _dataset(args)
    flow.resolve_targets(args.target or list(flow.TARGETS))
    model = _load(args)
    swept = range(*args.sweep_range) if args.sweep_range else None
    df = _sharded(args, lambda shard: flow.sweep(
        model, samples, targets=args.target or list(flow.TARGETS), window=args.window, layers=swept, select=args.select,
        out=args.out, resume=not args.fresh, batch_size=args.batch_size, num_frames=args.frames,
        window_style=args.window_style, even_window=args.even_window, rule=args.rule, engine=args.engine,
        shard=shard))  # fmt: skip
    if df is None:
        return
    baseline = df.attrs["baseline"]
    by_task = {}
    for b in baseline:
        by_task.setdefault(b["task"], []).append(bool(b["correct"]))
    summary = {
        "n_samples": len(baseline), "rule": args.rule,
        "baseline_accuracy": {task: sum(c) / len(c) for task, c in sorted(by_task.items())},
        "knocked_out_samples": int(df.sample_id.nunique()),
        "rel_change": flow.summarize(df, pool_tasks=args.pool_tasks).to_dict("records") if len(df) else [],
        "accuracy_under_knockout": flow.accuracy_under_knockout(df, pool_tasks=args.pool_tasks).to_dict("records") if len(df) else [],
    }  # fmt: skip
    _write_summary(args, summary)
    accuracy = ", ".join(f"{t} {a:.3f}" for t, a in summary["baseline_accuracy"].items())
    print(f"{len(baseline)} samples; baseline accuracy ({args.rule}): {accuracy}; "
          f"{summary['knocked_out_samples']} knocked out ({args.select})")  # fmt: skip
    if len(df):
        keys = ["target", "condition"] if args.pool_tasks else ["task", "target", "condition"]
        print(df.groupby(keys).rel_change.agg(["mean", "min"]).round(2).to_string())
    print(f"results: {args.out}  summary: {Path(args.out, 'summary.json')}")


def run_attribute(args) -> None:
    from hooked_video.analysis import attribution, flow

    samples = _dataset(args)
    model = _load(args)
    df = _sharded(args, lambda shard: attribution.attribute(
        model, samples, targets=args.target or list(flow.TARGETS), window=args.window, method=args.method,
        steps=args.steps, granularity=args.granularity, head=args.head, select=args.select, out=args.out,
        resume=not args.fresh, batch_size=args.batch_size, num_frames=args.frames, rule=args.rule, shard=shard))  # fmt: skip
    if df is None:
        return
    rows = df[df.head_index == -1] if len(df) else df
    summary = {"n_samples": len(df.attrs["baseline"]), "method": args.method, "granularity": args.granularity,
               "estimated_samples": int(df.sample_id.nunique()) if len(df) else 0,
               "rel_change": flow.summarize(rows, pool_tasks=args.pool_tasks).to_dict("records") if len(rows) else []}  # fmt: skip
    _write_summary(args, summary)
    print(f"{summary['n_samples']} samples, {summary['estimated_samples']} estimated ({args.method}, {args.granularity})")
    if len(rows):
        print(rows.groupby(["target", "condition"]).rel_change.agg(["mean", "min"]).round(2).head(40).to_string())
    print(f"results: {args.out}")


def run_lens(args) -> None:
    from hooked_video.analysis import lens

    samples, keywords = _dataset(args), read_keywords(args.keywords)
    model = _load(args)
    run = _sharded(args, lambda shard: lens.run(model, samples, variant=args.variant, norm=args.norm, select=args.select,
                                                rule=args.rule, out=args.out, resume=not args.fresh,
                                                num_frames=args.frames, shard=shard))  # fmt: skip
    if run is None:
        return
    answer = run.answer_probability
    summary = {"variant": args.variant, "norm": args.norm, "select": args.select, "rule": args.rule,
               "n_samples": len(run.baseline), "n_selected": int(answer.sample_id.nunique()) if len(answer) else 0}  # fmt: skip
    if len(answer):
        summary["answer_probability"] = answer.groupby(["task", "layer", "is_true"]).prob.mean().reset_index().to_dict("records")
    print(f"{len(run.baseline)} samples, {summary['n_selected']} selected ({args.select}, rule {args.rule})")
    if len(run.baseline) and not summary["n_selected"]:
        print(f"nothing to read: no sample was answered {'correctly' if args.select == 'correct' else 'wrongly'}; use "
              "--select all, or a model that answers some correctly (e.g. toy-video-ft)")  # fmt: skip
    if keywords and len(run.top1):
        tables = run.keyword_frequencies(keywords, model.tokenizer, min_count=args.min_count,
                                         overlapping_bins=args.overlapping_bins)  # fmt: skip
        tables = tables if isinstance(tables, dict) else {"keywords": tables}
        summary["keywords"] = {g: {"raw": t.raw.to_dict("index"), "average": t.average.to_dict(), "dropped": t.dropped}
                               for g, t in tables.items()}  # fmt: skip
        for group, table in tables.items():
            if table.average.empty or table.average.isna().all():
                print(f"{group}: no keyword reached --min-count {args.min_count} hits (dropped: {', '.join(table.dropped)})")
            else:
                shown = table.average.dropna().round(3)  # a Series: the mean over keywords, per layer bin
                print(f"{group}: normalised keyword frequency per layer bin\n{shown.to_string()}")
    _write_summary(args, summary)
    if len(answer):
        last = answer[answer.layer == answer.layer.max()]
        print(f"last-layer P(true letter) (norm {args.norm}): {last[last.is_true].prob.mean():.3f}")
    print(f"results: {args.out}")



def run_prune(args) -> None:
    from hooked_video.analysis import flow, pathways

    samples = _dataset(args)
    if args.preset:
        spec = pathways.PathwaySpec.preset(args.preset)
    else:
        spec = pathways.PathwaySpec.from_sweep(flow.load(args.from_sweep), threshold=args.threshold)
    fraction = args.random_fraction
    if fraction == "preset":  # with --preset (checked): the preset's own fraction
        fraction = None
    model = _load(args)
    report = _sharded(args, lambda shard: pathways.evaluate(
        model, samples, spec, random_baseline=not args.no_random, seed=args.seed, random_fraction=fraction,
        num_frames=args.frames, out=args.out, resume=not args.fresh, rule=args.rule, engine=args.engine,
        shard=shard, faithfulness=args.faithfulness))  # fmt: skip
    if report is None:
        return
    summary = {"spec": spec.__dict__, "rule": args.rule, "accuracy": report.accuracy.to_dict("index"),
               "retention": report.retention.to_dict("index"), "n_samples": len(report.rows)}  # fmt: skip
    if report.faithfulness is not None:
        means = report.faithfulness.groupby("setting")[["rel_change", "flipped", "correct"]].mean()
        summary["faithfulness"] = means.to_dict("index")
    _write_summary(args, summary)
    print(f"pathways: {spec.describe()} (0-based)")
    print(f"accuracy ({args.rule}):\n{report.accuracy.round(3).to_string()}")
    print(report.retention.round(3).to_string())
    if report.faithfulness is not None:
        print(f"faithfulness (outside: every edge the pathways block, together; cut: one flow alone):\n"
              f"{means.round(3).to_string()}")
    print(f"results: {args.out}")


def run_discover(args) -> None:
    from hooked_video.analysis import discovery
    from hooked_video.app.outputs import save_figure
    from hooked_video.viz.pathways import faithfulness_curve

    samples = _dataset(args)
    model = _load(args)
    flows = discovery.PAPER_FLOWS + (("v2l",) if args.video_to_last else ())
    kwargs = dict(tolerance=args.tolerance, min_accuracy=args.min_accuracy, full_curve=not args.stop_at_faithful,
                  flows=flows, method=args.method, seeds=args.seeds, preset=None if args.preset == "none" else args.preset,
                  num_frames=args.frames, engine=args.engine, rule=args.rule, out=args.out, resume=not args.fresh)  # fmt: skip

    def search(shard):
        found = (discovery.discover(model, samples, shard=shard, **kwargs) if args.by == "model"
                 else discovery.discover_each(model, samples, by=args.by, shard=shard, **kwargs))  # fmt: skip
        found = {"all samples": found} if args.by == "model" else found
        finer = curve = None
        if args.refine:
            finer = discovery.refine(model, samples, found["all samples"], granularity=args.refine,
                                     tolerance=args.tolerance, min_accuracy=args.min_accuracy, num_frames=args.frames,
                                     engine=args.engine, rule=args.rule, out=args.out, resume=not args.fresh,
                                     max_points=args.refine_points, shard=shard)  # fmt: skip
        if args.size_curve:
            curve = discovery.size_curve(model, samples, seeds=args.seeds, preset=kwargs["preset"],
                                         min_accuracy=args.min_accuracy, num_frames=args.frames, engine=args.engine,
                                         rule=args.rule, out=args.out, resume=not args.fresh, shard=shard)  # fmt: skip
        return found, finer, curve

    result = _sharded(args, search, "the searches are read back: one traced forward per sample", pooled=args.by != "sample")
    if result is None:
        return
    found, finer, curve = result
    table = discovery.table(found)
    summary = {"by": args.by, "method": args.method, "tolerance": args.tolerance, "min_accuracy": args.min_accuracy, "flows": list(flows),
               "rule": args.rule, "found": json.loads(table.to_json(orient="index")),
               "path": {k: json.loads(f.path.to_json(orient="records")) for k, f in found.items()},
               "curve": {k: json.loads(f.curve.to_json(orient="records")) for k, f in found.items() if f.curve is not None}}  # fmt: skip
    if finer is not None:
        summary["refine"] = {"granularity": args.refine, "candidates": finer.candidates, "untried": finer.untried,
                             "pathway": finer.pathway.settings(),
                             "closed": json.loads(finer.closed.to_json(orient="records")),
                             "path": json.loads(finer.path.to_json(orient="records"))}  # fmt: skip
    if curve is not None:
        write_text(Path(args.out, "size_curve.csv"), curve.table.to_csv(index=False), overwrite=args.overwrite)
        summary["size_curve"] = {"smallest": curve.smallest and curve.smallest.settings(),
                                 "points": json.loads(curve.table.to_json(orient="records"))}  # fmt: skip
    _write_summary(args, summary)
    for name, one in found.items():
        print(f"{name}: {one}")
    if args.refine:
        print(finer)
    if curve is not None:
        print(curve)
    if args.by == "model":
        one = found["all samples"]
        figure = faithfulness_curve(one, title=f"{args.model}: pathway search", refined=[finer] if args.refine else (),
                                    ranked=curve)  # fmt: skip
        save_figure(figure, Path(args.out, "curve.png"), overwrite=args.overwrite, dpi=120)
        if one.curve is not None:
            print(one.curve.groupby("pathway")[["retention", "rel_change", "accuracy"]].agg(["min", "max"]).round(3).to_string())
        print(f"curve: {Path(args.out, 'curve.png')}")
    elif curve is not None:  # one search per task or sample: the size curve, over all of them, drawn alone
        save_figure(faithfulness_curve(curve, title=f"{args.model}: every edge"), Path(args.out, "size_curve.png"),
                    overwrite=args.overwrite, dpi=120)  # fmt: skip
        print(f"curve: {Path(args.out, 'size_curve.png')}")
    print(f"results: {args.out}")


def run_doctor(args) -> None:
    from hooked_video.app import doctor

    print(doctor.run(args.device))


def run_demo(args) -> None:
    from hooked_video.app import demo

    set_threads(args.threads)
    data = args.data or Path.home() / ".cache" / "hooked_video" / "synthetic"
    summary = demo.run(args.out, data=data, samples=args.samples, models=(args.image_model, args.model), device=args.device,
                       overwrite=args.overwrite)  # fmt: skip
    print("accuracy per task:")
    for task, row in summary["accuracy"].items():
        print(f"  {task:18s} " + "  ".join(f"{m} {v:.3f}" for m, v in row.items()))
    for finding in ("finding1", "finding2", "finding3", "finding4"):
        print(f"{finding}: {summary[finding]['verdict']}")
    print(f"report: {Path(args.out, 'index.html').resolve()}  ({summary['seconds']} s)")


def run_reproduce(args) -> None:
    from hooked_video.app.reproduce import reproduce

    set_threads(args.threads)
    device = args.device
    if device is None and Shard.from_environment() is not None:
        import torch

        device = f"cuda:{local_rank()}" if torch.cuda.is_available() else None
    result = reproduce(args.model, args.data, out=args.out, image_model=args.image_model, tomato=args.tomato,
                       tasks=args.task, samples=args.samples, window=args.window, select=args.select, device=device,
                       dtype=args.dtype, batch_size=args.batch_size, engine=args.engine, overwrite=args.overwrite,
                       lens_variant=args.keyword_lens, keyword_min_count=args.keyword_min_count,
                       overlapping_bins=args.overlapping_bins, discover_samples=args.discover_samples,
                       size_curve=not args.no_size_curve)  # fmt: skip
    if Shard.from_environment() is not None and Shard.from_environment().index != 0:
        return
    print(f"accuracy ({result.accuracy.attrs.get('rule')}):\n{result.accuracy.round(3).to_string()}")
    print(f"pathways ({result.spec_source}):\n{result.pathways.accuracy.round(3).to_string()}")
    print(f"report: {Path(args.out, 'index.html').resolve()}  ({result.seconds} s)")


