"""The ``hooked-video`` command.

    hooked-video build-tiny ARCH DIR        write a small random-weight model to try things offline
    hooked-video info MODEL                 architecture, sizes and hook points of a model
    hooked-video tokens MODEL VIDEO -q Q -o A -o B [--answer 1]
                                            the token map of a prompt: roles, frames, spans
    hooked-video flow --model M --data D --target T [--target T2] --out DIR
                                            attention-knockout sweep (rows.jsonl, summary.json)
    hooked-video lens --model M --data D --variant V --out DIR [--keywords K.json]
                                            logit lens, keyword frequencies, answer probability
    hooked-video prune --model M --data D --preset P|--from-sweep DIR --out DIR
                                            effective pathways vs full vs random pruning
    hooked-video reproduce --model M [--image-model I] --data TVBench/ --out DIR
                                            the paper's pipeline and report, per task
    hooked-video demo [--samples 8] [--out DIR]
                                            the paper's pipeline on the bundled toy models

D is a TVBench folder (json/, video/), a TOMATO folder (jsons/, videos/) or a JSON file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from pathlib import Path


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit code 2) that point at ``--help``."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _whole_number(minimum: int):
    """An argparse type: a whole number >= ``minimum``."""

    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
        if number < minimum:
            raise argparse.ArgumentTypeError(f"expected a number of at least {minimum}, got {number}")
        return number

    return parse


_positive_int = _whole_number(1)


def _build_tiny(args) -> None:
    from hooked_video.zoo.tiny import build_tiny

    print(build_tiny(args.arch, args.dir, seed=args.seed))


def _load(args):
    from hooked_video import HookedVideoLLM

    return HookedVideoLLM.from_pretrained(args.model, device=args.device, dtype=args.dtype, strict=not args.no_strict)


def _info(args) -> None:
    model = _load(args)
    print(model)
    names = sorted(model.hook_dict)
    groups = Counter(n.split(".")[0] if not n.startswith("blocks.") else "blocks.{l}" for n in names)
    print(f"{len(names)} hook points:", ", ".join(f"{g} ({c})" for g, c in sorted(groups.items())))
    print("video hook: hook_video_embeds (batch, n_video_tokens, d_model)")


def _tokens(args) -> None:
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


def _layer_range(value: str) -> tuple[int, int]:
    try:
        start, stop = (int(x) for x in value.split("-"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected START-STOP (e.g. 5-20), got {value!r}") from None
    return start, stop


def _dataset(args):
    from hooked_video.data import open_dataset

    data = open_dataset(args.data, tasks=args.task or None, skip_invalid=args.skip_invalid, short_windows=args.short_windows)
    return data.samples[: args.samples] if args.samples else data.samples


def _open_ended(args) -> None:
    from hooked_video import flow
    from hooked_video.data.mcqa import open_questions

    questions = open_questions(args.data)
    questions = [q for q in questions if not args.task or q["task"] in args.task][: args.samples]
    model = _load(args)
    words = args.anchor_words.split(",") if args.anchor_words else None
    df = flow.sweep_open_ended(model, questions, anchor=args.anchor, anchors=words, targets=args.target or ["vqrl-to-qrl"],
                               window=args.window, layers=range(*args.sweep_range) if args.sweep_range else None,
                               max_new_tokens=args.max_new_tokens, num_open_tokens=args.num_open_tokens, out=args.out,
                               resume=not args.fresh, batch_size=args.batch_size, num_frames=args.frames,
                               window_style=args.window_style, even_window=args.even_window)  # fmt: skip
    kept = [b for b in df.attrs["baseline"] if "skipped" not in b]
    summary = {"n_samples": len(df.attrs["baseline"]), "n_traced": len(kept), "anchor": args.anchor,
               "rel_change": flow.summarize(df, pool_tasks=args.pool_tasks).to_dict("records") if len(df) else []}  # fmt: skip
    Path(args.out, "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"{len(df.attrs['baseline'])} questions, {len(kept)} with an anchor {args.anchor} traced")
    if len(df):
        print(df.groupby(["target", "condition"]).rel_change.agg(["mean", "min"]).round(2).to_string())
    print(f"results: {args.out}")


def _flow(args) -> None:
    from hooked_video import flow

    if args.open_ended:
        return _open_ended(args)
    samples, model = _dataset(args), _load(args)  # data errors first, before the slow load
    swept = range(*args.sweep_range) if args.sweep_range else None
    df = flow.sweep(model, samples, targets=args.target or list(flow.TARGETS), window=args.window, layers=swept,
                    select=args.select, out=args.out, resume=not args.fresh, batch_size=args.batch_size,
                    num_frames=args.frames, window_style=args.window_style, even_window=args.even_window,
                    rule=args.rule)  # fmt: skip
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
    Path(args.out, "summary.json").write_text(json.dumps(summary, indent=1))
    accuracy = ", ".join(f"{t} {a:.3f}" for t, a in summary["baseline_accuracy"].items())
    print(f"{len(baseline)} samples; baseline accuracy ({args.rule}): {accuracy}; "
          f"{summary['knocked_out_samples']} knocked out ({args.select})")  # fmt: skip
    if len(df):
        keys = ["target", "condition"] if args.pool_tasks else ["task", "target", "condition"]
        print(df.groupby(keys).rel_change.agg(["mean", "min"]).round(2).to_string())
    print(f"results: {args.out}  summary: {Path(args.out, 'summary.json')}")


def _lens(args) -> None:
    from hooked_video import lens

    samples, model = _dataset(args), _load(args)  # data errors first, before the slow load
    run = lens.run(model, samples, variant=args.variant, norm=args.norm, select=args.select, rule=args.rule,
                   out=args.out, resume=not args.fresh, num_frames=args.frames)  # fmt: skip
    answer = run.answer_probability
    summary = {"variant": args.variant, "norm": args.norm, "select": args.select, "rule": args.rule,
               "n_samples": len(run.baseline), "n_selected": int(answer.sample_id.nunique()) if len(answer) else 0}  # fmt: skip
    if len(answer):
        summary["answer_probability"] = answer.groupby(["task", "layer", "is_true"]).prob.mean().reset_index().to_dict("records")
    print(f"{len(run.baseline)} samples, {summary['n_selected']} selected ({args.select}, rule {args.rule})")
    if args.keywords and len(run.top1):
        keywords = json.loads(Path(args.keywords).read_text())
        tables = run.keyword_frequencies(keywords, model.tokenizer, min_count=args.min_count,
                                         overlapping_bins=args.overlapping_bins)  # fmt: skip
        tables = tables if isinstance(tables, dict) else {"keywords": tables}
        summary["keywords"] = {g: {"raw": t.raw.to_dict("index"), "average": t.average.to_dict(), "dropped": t.dropped}
                               for g, t in tables.items()}  # fmt: skip
        for group, table in tables.items():
            if table.average.empty or table.average.isna().all():
                print(f"{group}: no keyword reached --min-count {args.min_count} hits (dropped: {', '.join(table.dropped)})")
            else:
                print(f"{group}: normalised keyword frequency per layer bin\n{table.average.round(3).to_string()}")
    Path(args.out, "summary.json").write_text(json.dumps(summary, indent=1))
    if len(answer):
        last = answer[answer.layer == answer.layer.max()]
        print(f"last-layer P(true letter) (norm {args.norm}): {last[last.is_true].prob.mean():.3f}")
    print(f"results: {args.out}")


def _random_fraction(value: str):
    """--random-fraction: a number, "run", "sample" or "preset"."""
    if value in ("run", "sample", "preset"):
        return value
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not 0.0 <= number < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), 'run', 'sample' or 'preset', got {value!r}")
    return number


def _prune(args) -> None:
    from hooked_video import flow, pathways

    samples = _dataset(args)
    if bool(args.preset) == bool(args.from_sweep):
        raise ValueError("give exactly one of --preset NAME or --from-sweep SWEEP_DIR")
    if args.preset:
        spec = pathways.PathwaySpec.preset(args.preset)
    else:
        spec = pathways.PathwaySpec.from_sweep(flow.load(args.from_sweep), threshold=args.threshold)
    fraction = args.random_fraction
    if fraction == "preset":
        if spec.random_fraction is None:
            raise ValueError("--random-fraction preset needs --preset (a sweep-derived spec has no fixed fraction)")
        fraction = None
    model = _load(args)
    report = pathways.evaluate(model, samples, spec, random_baseline=not args.no_random, seed=args.seed,
                               random_fraction=fraction, num_frames=args.frames, out=args.out,
                               resume=not args.fresh, rule=args.rule)  # fmt: skip
    summary = {"spec": spec.__dict__, "rule": args.rule, "accuracy": report.accuracy.to_dict("index"),
               "retention": report.retention.to_dict("index"), "n_samples": len(report.rows)}  # fmt: skip
    Path(args.out, "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"pathways: INTER {spec.inter}, V2Q {spec.v2q}, Q2L {spec.q2l} (0-based)")
    print(f"accuracy ({args.rule}):\n{report.accuracy.round(3).to_string()}")
    print(report.retention.round(3).to_string())
    print(f"results: {args.out}")


def _demo(args) -> None:
    from hooked_video import demo

    data = args.data or Path.home() / ".cache" / "hooked_video" / "synthetic"
    summary = demo.run(args.out, data=data, samples=args.samples, models=(args.image_model, args.model), device=args.device)
    print("accuracy per task:")
    for task, row in summary["accuracy"].items():
        print(f"  {task:18s} " + "  ".join(f"{m} {v:.3f}" for m, v in row.items()))
    for finding in ("finding1", "finding2", "finding3", "finding4"):
        print(f"{finding}: reproduces = {summary[finding].get('reproduces')}")
    print(f"report: {Path(args.out, 'index.html').resolve()}  ({summary['seconds']} s)")


def _reproduce(args) -> None:
    from hooked_video.reproduce import reproduce

    result = reproduce(args.model, args.data, out=args.out, image_model=args.image_model, tomato=args.tomato,
                       tasks=args.task, samples=args.samples, window=args.window, device=args.device, dtype=args.dtype,
                       batch_size=args.batch_size)  # fmt: skip
    print(f"accuracy ({result.accuracy.attrs.get('rule')}):\n{result.accuracy.round(3).to_string()}")
    print(f"pathways ({result.spec_source}):\n{result.pathways.accuracy.round(3).to_string()}")
    print(f"report: {Path(args.out, 'index.html').resolve()}  ({result.seconds} s)")


def _analysis_parser(sub, name: str, run, text: str):
    p = sub.add_parser(name, help=text)
    p.add_argument("--model", required=True, help="local folder or hub id")
    p.add_argument("--data", required=True, help="JSON file of {video, question, options, answer} entries")
    p.add_argument("--out", required=True, help="results folder (a rerun resumes)")
    p.add_argument("--samples", type=_positive_int, default=None, help="use only the first N samples")
    p.add_argument("--task", action="append", help="only this task (repeat)")
    p.add_argument("--frames", type=_positive_int, default=8)
    p.add_argument("--fresh", action="store_true", help="start over instead of resuming")
    p.add_argument("--skip-invalid", action="store_true", help="skip malformed entries instead of failing")
    p.add_argument("--short-windows", choices=["error", "repeat"], default="error",
                   help="clips of --frames frames or fewer: fail, or repeat frames as the released code does")
    p.add_argument("--rule", choices=["vocab-argmax", "option-argmax"], default="vocab-argmax",
                   help="accuracy rule: full-vocabulary argmax is the true letter (the paper's), or best option letter")
    if name != "prune":
        p.add_argument("--select", choices=["correct", "wrong", "all"], default="correct",
                       help="samples analysed: answered correctly (the paper's default), wrongly, or all")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None, help="float32 (default), bfloat16, float16")
    p.add_argument("--no-strict", action="store_true", help="load a checkpoint with missing or unexpected weights")
    p.set_defaults(run=run)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="hooked-video", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("build-tiny", help="write a small random-weight model and processor")
    p.add_argument("arch", choices=["llava_next_video", "llava_onevision", "qwen2_vl", "qwen2_5_vl"])
    p.add_argument("dir")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=_build_tiny)

    for name, run, text in [
        ("info", _info, "architecture, sizes and hook points"),
        ("tokens", _tokens, "the token map of a video prompt"),
    ]:
        p = sub.add_parser(name, help=text)
        p.add_argument("model", help="local folder or hub id")
        p.add_argument("--device", default=None)
        p.add_argument("--dtype", default=None, help="float32 (default), bfloat16, float16")
        p.add_argument("--no-strict", action="store_true", help="load a checkpoint with missing or unexpected weights")
        if name == "tokens":
            p.add_argument("video", help="video file")
            p.add_argument("-q", "--question", required=True)
            p.add_argument("-o", "--option", action="append", help="an option (repeat)")
            p.add_argument("--answer", type=int, default=None)
            p.add_argument("--frames", type=_positive_int, default=8)
        p.set_defaults(run=run)

    p = _analysis_parser(sub, "flow", _flow, "attention-knockout sweep over the paper's targets")
    p.add_argument("--target", action="append", help="a target name (repeat); default: all four")
    p.add_argument("--window", type=_positive_int, default=9, help="k, layers blocked per swept layer (default 9)")
    p.add_argument("--window-style", choices=["center", "inverse", "top_down", "bottom_up"], default="center")
    p.add_argument("--even-window", choices=["above", "below"], default="above",
                   help="even k: extra layer above the centre (default) or below it (the released code)")
    p.add_argument("--sweep-range", type=_layer_range, default=None, help="swept layers START-STOP (STOP excluded), e.g. 5-20")
    p.add_argument("--pool-tasks", action="store_true", help="summarise all tasks together (default: per task)")
    p.add_argument("--batch-size", type=_positive_int, default=8)
    p.add_argument("--open-ended", action="store_true",
                   help="free-form answers: --data is a JSON list of {video, question}; trace the --anchor-th anchor token")
    p.add_argument("--anchor", type=_positive_int, default=1, help="with --open-ended: which anchor token, 1-based")
    p.add_argument("--anchor-words", default=None, help="with --open-ended: comma-separated words that count as anchors")
    p.add_argument("--max-new-tokens", type=_positive_int, default=100)
    p.add_argument("--num-open-tokens", type=_positive_int, default=1, help="response tokens before the last left open")
    p = _analysis_parser(sub, "lens", _lens, "logit lens over video tokens and answer probability by layer")
    p.add_argument("--variant", choices=["unembed", "unembed-raw", "embed"], required=True,
                   help="lens projection: final norm + W_U, W_U alone, or W_E (the released code)")
    p.add_argument("--norm", choices=["released", "final", "none"], required=True,
                   help="answer probability: norm only at the last layer (released code), at every layer, or none")
    p.add_argument("--keywords", default=None, help='JSON: a word list or {"spatial": [...], "temporal": [...]}')
    p.add_argument("--min-count", type=_whole_number(0), default=100)
    p.add_argument("--overlapping-bins", action="store_true", help="the released code's off-by-one bins")

    p = _analysis_parser(sub, "prune", _prune, "accuracy with only the effective pathways (and random pruning)")
    p.add_argument("--preset", default=None, help="the paper's ranges for one of its models, e.g. llava-next-7b-video-ft (see pathways.PRESETS)")
    p.add_argument("--from-sweep", default=None, help="a flow results folder to derive the ranges from")
    p.add_argument("--threshold", type=float, default=10.0, help="with --from-sweep: percent drop that marks a layer")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--random-fraction", type=_random_fraction, default=None,
                   help="share of each layer's edges the random baseline blocks: a number, 'run' (1 - retention of the "
                        "pathway run), 'sample' (each sample's own share) or 'preset'. Default: the preset's value "
                        "(0.58 for llava-next-7b-video-ft, as the released scripts) with --preset, else 'run'")
    p.add_argument("--no-random", action="store_true", help="skip the random baseline")

    p = sub.add_parser("reproduce", help="the paper's pipeline on a video model (and an image model), with a report")
    p.add_argument("--model", required=True, help="the video model (e.g. byminji/LLaVA-NeXT-7B-Video-FT)")
    p.add_argument("--image-model", default=None, help="the image model to compare with (e.g. llava-hf/llava-v1.6-vicuna-7b-hf)")
    p.add_argument("--data", required=True, help="a TVBench folder (json/, video/), a TOMATO folder or a JSON file")
    p.add_argument("--tomato", default=None, help="a TOMATO folder for the pathway evaluation")
    p.add_argument("--out", required=True, help="results and report folder (a rerun resumes)")
    p.add_argument("--task", action="append", help="only this task (repeat); default: the paper's five TVBench tasks")
    p.add_argument("--samples", type=_positive_int, default=None, help="at most N questions per task")
    p.add_argument("--window", type=_positive_int, default=9)
    p.add_argument("--batch-size", type=_positive_int, default=8)
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None, help="default: bfloat16 on a GPU, float32 on the CPU")
    p.set_defaults(run=_reproduce)

    p = sub.add_parser("demo", help="the whole analysis on the bundled toy models, offline")
    p.add_argument("--model", default="toy-video-ft", help="the video model (default: toy-video-ft)")
    p.add_argument("--image-model", default="toy-image", help="the image model to compare with")
    p.add_argument("--data", default=None, help="synthetic benchmark folder (default: ~/.cache/hooked_video/synthetic)")
    p.add_argument("--samples", type=_positive_int, default=8, help="questions per task")
    p.add_argument("--out", default="hooked_video_demo", help="report folder")
    p.add_argument("--device", default=None)
    p.set_defaults(run=_demo)

    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        args.run(args)
    except KeyboardInterrupt:
        print("hooked-video: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except Exception as exc:  # one line for users; HOOKED_VIDEO_DEBUG=1 shows the traceback
        if os.environ.get("HOOKED_VIDEO_DEBUG"):
            raise
        print(f"hooked-video: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    return 0


def _one_line(exc: BaseException) -> str:
    """An exception as one line: our errors' messages as they are, others with their type."""
    message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    message = " ".join(str(message).split()) or type(exc).__name__
    if isinstance(exc, (ValueError, OSError, KeyError)):
        return message
    if isinstance(exc, MemoryError) or "out of memory" in message.lower():
        return f"out of memory ({message}); use fewer --frames, a smaller --batch-size or another device"
    return f"{type(exc).__name__}: {message} (set HOOKED_VIDEO_DEBUG=1 to see where)"


if __name__ == "__main__":
    sys.exit(main())
