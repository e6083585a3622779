"""The ``hooked-video`` command.

    hooked-video build-tiny ARCH DIR        write a small random-weight model to try things offline
    hooked-video info [MODEL]               installed versions against the tested window; with MODEL,
                                            its architecture, sizes and hook points
    hooked-video tokens MODEL VIDEO -q Q -o A -o B [--answer 1]
                                            the token map of a prompt: roles, frames, spans
    hooked-video flow --model M --data D --target T [--target T2] --out DIR
                                            attention-knockout sweep (rows.jsonl, summary.json)
    hooked-video attribute --model M --data D [--method atp|ig] [--granularity G] --out DIR
                                            the sweep's rows estimated from gradients
    hooked-video lens --model M --data D --variant V --out DIR [--keywords K.json]
                                            logit lens, keyword frequencies, answer probability
    hooked-video prune --model M --data D --preset P|--from-sweep DIR --out DIR
                                            effective pathways vs full vs random pruning
    hooked-video discover --model M --data D --out DIR [--by task] [--seeds 3]
                                            the smallest faithful pathway, found from data, and its
                                            faithfulness-size curve against random pruning
    hooked-video reproduce --model M [--image-model I] --data TVBench/ --out DIR
                                            the paper's pipeline and report, per task
    hooked-video demo [--samples 8] [--out DIR]
                                            the paper's pipeline on the bundled toy models
    hooked-video doctor                     versions, devices, a timed toy forward, suggested --threads

D is a TVBench folder (json/, video/), a TOMATO folder (jsons/, videos/) or a JSON file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

from hooked_video.app.precheck import OPEN_ENDED_TARGET_NAMES, TARGET_NAMES, check_arguments  # noqa: F401 (tests)

#: Architectures ``build-tiny`` writes (the keys of ``zoo.tiny.BUILDERS``, listed here so that
#: ``--help`` needs no heavy import; a test keeps the two equal).
TINY_ARCHITECTURES = ["internvl", "internvl_chat", "llava_next_image", "llava_next_video", "llava_onevision", "pllava",
                      "qwen2_5_vl", "qwen2_vl", "qwen3_vl", "video_llama_3", "videollama3_official"]  # fmt: skip


#: ``flow.ENGINES``, listed here for the same reason (a test keeps the two equal).
ENGINES = ["auto", "fast", "compiled", "hooks"]


def _engine_argument(p) -> None:
    p.add_argument("--engine", choices=ENGINES, default="auto",
                   help="knockout passes: auto (the sweep engine unless hooks are involved), fast (the engine), "
                        "compiled (the engine through torch.compile: faster on a GPU for long runs, after tens of "
                        "seconds of compilation), hooks (TransformerLens hooks, the reference)")


def _overwrite_argument(p) -> None:
    p.add_argument("--overwrite", action="store_true",
                   help="replace report and summary files in --out that hooked-video did not write (default: refuse)")


#: Examples shown under each command's --help (all run offline on the bundled toys, except where a
#: path names your own data).
EXAMPLES = {
    None: """examples:
  hooked-video demo                                  the paper's pipeline on the bundled toys, offline
  hooked-video info toy-video-ft                     versions, then the model's sizes and hook points
  hooked-video flow --model toy-video-ft --data TVBench/ --out runs/flow
  hooked-video reproduce --model byminji/LLaVA-NeXT-7B-Video-FT --data TVBench/ --out runs/paper
Each command's --help lists its options and examples. HOOKED_VIDEO_DEBUG=1 shows tracebacks;
--threads or HOOKED_VIDEO_THREADS sets torch's CPU threads; HF_HUB_OFFLINE=1 never asks the hub.""",
    "build-tiny": "example:\n  hooked-video build-tiny qwen2_5_vl /tmp/tiny-qwen    then: hooked-video info /tmp/tiny-qwen",
    "info": "examples:\n  hooked-video info                 installed versions against the tested window\n"
            "  hooked-video info toy-video-ft    also its architecture, sizes and hook points",
    "tokens": "example:\n  hooked-video tokens toy-video-ft clip.mp4 -q 'Which way does the ball move?' -o left -o right --answer 1",
    "flow": "examples:\n  hooked-video flow --model toy-video-ft --data TVBench/ --out runs/flow\n"
            "  hooked-video flow --model M --data TVBench/ --task 'Action Sequence' --target cross-frame --window 5 --out runs/cf\n"
            "  hooked-video flow --model M --data answers.json --open-ended --verb-anchors --out runs/open\n"
            "A rerun with the same --out resumes; --fresh starts over.",
    "attribute": "examples:\n  hooked-video attribute --model toy-video-ft --data TVBench/ --window 3 --out runs/atp\n"
                 "  hooked-video attribute --model M --data TVBench/ --granularity frame-pairs --window 1 --head --out runs/pairs\n"
                 "Compare with exact rows: hooked_video.attribution.compare(load_results('runs/atp'), flow.load('runs/flow')).",
    "lens": "examples:\n  hooked-video lens --model toy-video-ft --data TVBench/ --variant unembed --norm final --out runs/lens\n"
            "  hooked-video lens --model M --data TVBench/ --variant embed --norm released --keywords words.json --out runs/lens",
    "prune": "examples:\n  hooked-video prune --model M --data TOMATO/ --preset llava-next-7b-video-ft --out runs/prune\n"
             "  hooked-video prune --model M --data TVBench/ --from-sweep runs/flow --out runs/prune\n"
             "  hooked-video prune --model toy-planted --data syn/ --preset toy-planted --faithfulness --out runs/planted",
    "discover": "examples:\n  hooked-video discover --model toy-planted --data syn/ --out runs/discover\n"
                "  hooked-video discover --model M --data TVBench/ --samples 32 --preset llava-next-7b-video-ft --out runs/d\n"
                "  hooked-video discover --model M --data TVBench/ --by task --seeds 0 --out runs/per-task\n"
                "  hooked-video discover --model toy16-video-ft --data syn/ --size-curve --out runs/curve\n"
                "A rerun with the same --out reuses every stored forward (also at another --tolerance); --fresh starts over.",
    "reproduce": "example:\n  hooked-video reproduce --model byminji/LLaVA-NeXT-7B-Video-FT \\\n"
                 "      --image-model llava-hf/llava-v1.6-vicuna-7b-hf --data TVBench/ --tomato TOMATO/ --out runs/paper",
    "doctor": "example:\n  hooked-video doctor    then pass the suggested --threads to the commands you run",
    "demo": "examples:\n  hooked-video demo                        8 questions per task, about a minute on 2 idle cores\n"
            "  hooked-video demo --samples 32 --out demo32",
}


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Examples as written; every option's default in its help unless the help says it."""

    def _get_help_string(self, action) -> str:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in text or not action.option_strings:
            return text
        return f"{text} (default: {action.default})"


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit code 2) that point at ``--help``."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _non_negative(value: str) -> float:
    """An argparse type: a number >= 0."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not number >= 0:
        raise argparse.ArgumentTypeError(f"expected a number of at least 0, got {number}")
    return number


def _share(value: str) -> float:
    """An argparse type: a number in [0, 1]."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {value!r}") from None
    if not 0 <= number <= 1:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {number}")
    return number


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


def _layer_range(value: str) -> tuple[int, int]:
    try:
        start, stop = (int(x) for x in value.split("-"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected START-STOP (e.g. 5-20), got {value!r}") from None
    if not 0 <= start < stop:
        raise argparse.ArgumentTypeError(f"expected 0 <= START < STOP (STOP excluded), got {value!r}")
    return start, stop


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


def _json_or_name(value: str):
    """--device-map: a strategy name ("auto", "balanced", "sequential", ...) or a JSON object."""
    if value.strip().startswith("{"):
        try:
            return json.loads(value)
        except json.JSONDecodeError as err:
            raise argparse.ArgumentTypeError(f"not a JSON object: {err}") from None
    return value


def _max_memory(value: str) -> dict:
    """--max-memory: "0=70GiB,1=70GiB,cpu=0" -> {0: "70GiB", 1: "70GiB", "cpu": "0"}."""
    budget = {}
    for part in value.split(","):
        key, sep, amount = part.partition("=")
        if not sep or not amount:
            raise argparse.ArgumentTypeError(f"expected DEVICE=AMOUNT pairs like 0=70GiB,1=70GiB, got {value!r}")
        budget[int(key) if key.strip().isdigit() else key.strip()] = amount.strip()
    return budget


def _placement_arguments(p) -> None:
    """How the model is placed: one device, or split over several GPUs."""
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: this process's GPU, else cpu)")
    p.add_argument("--dtype", default=None, help="float32 (default), bfloat16, float16")
    p.add_argument("--device-map", type=_json_or_name, default=None,
                   help="split the model over GPUs: auto, balanced, sequential, or a JSON {module: device}")
    p.add_argument("--max-memory", type=_max_memory, default=None, help="with --device-map: e.g. 0=40GiB,1=70GiB")
    p.add_argument("--gpus-per-process", type=_positive_int, default=None,
                   help="under torchrun / accelerate with --device-map: GPUs each process splits its model over")
    p.add_argument("--no-strict", action="store_true", help="load a checkpoint with missing or unexpected weights")
    _threads_argument(p)


def _threads_argument(p) -> None:
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="CPU threads for torch (default: $HOOKED_VIDEO_THREADS, else the cores this process may use, "
                        "shared among the processes of a launcher)")


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Library warnings as one line each (no source lines)."""
    print(f"hooked-video: warning: {' '.join(str(message).split())}", file=sys.stderr)


def _command(sub, name: str, text: str):
    """A sub-command's parser: its text as help and description, its examples as epilog."""
    return sub.add_parser(name, help=text, description=text, epilog=EXAMPLES.get(name), formatter_class=_Formatter)


def _analysis_parser(sub, name: str, text: str):
    p = _command(sub, name, text)
    p.add_argument("--model", required=True, help="local folder or hub id")
    p.add_argument("--data", required=True, help="a TVBench folder (json/, video/), a TOMATO folder "
                   "(jsons/, videos/) or a JSON file of {video, question, options, answer} entries")
    p.add_argument("--out", required=True, help="results folder (a rerun resumes)")
    _overwrite_argument(p)
    p.add_argument("--samples", type=_positive_int, default=None, help="use only the first N samples")
    p.add_argument("--task", action="append", help="only this task (repeat)")
    p.add_argument("--frames", type=_positive_int, default=8, help="frames sampled per video")
    p.add_argument("--fresh", action="store_true", help="start over instead of resuming")
    p.add_argument("--skip-invalid", action="store_true", help="skip malformed entries instead of failing")
    p.add_argument("--short-windows", choices=["error", "repeat"], default="error",
                   help="clips of --frames frames or fewer: fail, or repeat frames as the released code does")
    p.add_argument("--rule", choices=["vocab-argmax", "option-argmax"], default="vocab-argmax",
                   help="accuracy rule: full-vocabulary argmax is the true letter (the paper's), or best option letter")
    if name not in ("lens", "attribute"):
        _engine_argument(p)
    if name not in ("prune", "discover"):
        p.add_argument("--select", choices=["correct", "wrong", "all"], default="correct",
                       help="samples analysed: answered correctly (the paper's default), wrongly, or all")
    _placement_arguments(p)
    together = (" (the shards of one search go in step, reading each other's figures from --out: start them together; "
                "--by sample shares the searches out instead)") if name == "discover" else ""  # fmt: skip
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="run shard I of N (0-based) of the samples, e.g. as one job of an array; under torchrun / "
                        f"accelerate launch the shard comes from the launcher{together}")
    return p


def build_parser() -> argparse.ArgumentParser:
    """The ``hooked-video`` parser with every sub-command."""
    from hooked_video import __version__

    parser = _Parser(prog="hooked-video", description=__doc__.split("\n\n")[0], epilog=EXAMPLES[None],
                     formatter_class=_Formatter)
    parser.add_argument("--version", action="version", version=f"hooked-video {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = _command(sub, "build-tiny", "write a small random-weight model and processor")
    p.add_argument("arch", choices=TINY_ARCHITECTURES, help="which architecture")
    p.add_argument("dir", help="folder to write (config, weights, tokenizer, processor)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights")

    for name, text in [("info", "installed versions against the tested window; with MODEL, its architecture, "
                                "sizes and hook points"), ("tokens", "the token map of a video prompt")]:  # fmt: skip
        p = _command(sub, name, text)
        p.add_argument("model", nargs="?" if name == "info" else None,
                       help="local folder, hub id or bundled model (toy16-video-ft, toy-video-ft, ...)")  # fmt: skip
        _placement_arguments(p)
        if name == "tokens":
            p.add_argument("video", help="video file")
            p.add_argument("-q", "--question", required=True, help="the question text")
            p.add_argument("-o", "--option", action="append", help="an option (repeat)")
            p.add_argument("--answer", type=int, default=None, help="index of the true option (0-based; marks its span)")
            p.add_argument("--frames", type=_positive_int, default=8, help="frames sampled from the video")

    p = _analysis_parser(sub, "flow", "attention-knockout sweep over the paper's targets")
    p.add_argument("--target", action="append", help="a target name (repeat); default: all four")
    p.add_argument("--window", type=_positive_int, default=9, help="k, layers blocked per swept layer")
    p.add_argument("--window-style", choices=["center", "inverse", "top_down", "bottom_up"], default="center",
                   help="layers blocked per swept layer: k centred on it, all but those, from it to the top, or from "
                        "layer 0 up to it")
    p.add_argument("--even-window", choices=["above", "below"], default="above",
                   help="even k: extra layer above the centre (default) or below it (the released code)")
    p.add_argument("--sweep-range", type=_layer_range, default=None, help="swept layers START-STOP (STOP excluded), e.g. 5-20")
    p.add_argument("--pool-tasks", action="store_true", help="summarise all tasks together (default: per task)")
    p.add_argument("--batch-size", type=_positive_int, default=8, help="knockout passes per forward")
    p.add_argument("--open-ended", action="store_true",
                   help="free-form answers: --data is a JSON list of {video, question}; trace the --anchor-th anchor token")
    p.add_argument("--anchor", type=_positive_int, default=1, help="with --open-ended: which anchor token, 1-based")
    p.add_argument("--anchor-words", default=None, help="with --open-ended: comma-separated words that count as anchors")
    p.add_argument("--verb-anchors", action="store_true",
                   help="with --open-ended: anchors are the answer's verbs (spaCy en_core_web_lg; the released rule, "
                        "at least 3 per answer)")
    p.add_argument("--max-new-tokens", type=_positive_int, default=256, help="with --open-ended: answer length (released: 256)")
    p.add_argument("--num-open-tokens", type=_positive_int, default=1, help="response tokens before the last left open")
    p = _analysis_parser(sub, "attribute", "the knockout sweep's rows estimated from gradients (attribution patching)")
    p.add_argument("--target", action="append", help="a target name (repeat); default: all four")
    p.add_argument("--window", type=_positive_int, default=9, help="k, layers per swept layer (a window sums its layers)")
    p.add_argument("--method", choices=["atp", "ig"], default="atp",
                   help="atp: one backward per sample; ig: --steps backwards per condition along its gate path")
    p.add_argument("--steps", type=_positive_int, default=8, help="with --method ig: points of each gate path")
    p.add_argument("--granularity", choices=["conditions", "frame-pairs", "tokens", "cells"], default="conditions",
                   help="edge groups: the targets' conditions, frame i -> frame j, each question token -> last, or "
                        "each video cell -> last")
    p.add_argument("--head", action="store_true", help="also one row per attention head")
    p.add_argument("--batch-size", type=_positive_int, default=8, help="with --method ig: path points per forward")
    p.add_argument("--pool-tasks", action="store_true", help="summarise all tasks together (default: per task)")

    p = _analysis_parser(sub, "lens", "logit lens over video tokens and answer probability by layer")
    p.add_argument("--variant", choices=["unembed", "unembed-raw", "embed"], required=True,
                   help="lens projection: final norm + W_U, W_U alone, or W_E (the released code)")
    p.add_argument("--norm", choices=["released", "final", "none"], required=True,
                   help="answer probability: norm only at the last layer (released code), at every layer, or none")
    p.add_argument("--keywords", default=None, help='JSON: a word list or {"spatial": [...], "temporal": [...]}')
    p.add_argument("--min-count", type=_whole_number(0), default=100, help="drop keywords with fewer top-1 hits")
    p.add_argument("--overlapping-bins", action="store_true", help="the released code's off-by-one bins")

    p = _analysis_parser(sub, "prune", "accuracy with only the effective pathways (and random pruning)")
    p.add_argument("--preset", default=None, help="the paper's ranges for one of its models, e.g. llava-next-7b-video-ft (see pathways.PRESETS)")
    p.add_argument("--from-sweep", default=None, help="a flow results folder to derive the ranges from")
    p.add_argument("--threshold", type=float, default=10.0, help="with --from-sweep: percent drop that marks a layer")
    p.add_argument("--seed", type=int, default=0, help="seed of the random baseline's draws")
    p.add_argument("--random-fraction", type=_random_fraction, default=None,
                   help="share of each layer's edges the random baseline blocks: a number, 'run' (1 - retention of the "
                        "pathway run), 'sample' (each sample's own share) or 'preset'. Default: the preset's value "
                        "(0.58 for llava-next-7b-video-ft, as the released scripts) with --preset, else 'run'")
    p.add_argument("--no-random", action="store_true", help="skip the random baseline")
    p.add_argument("--faithfulness", action="store_true",
                   help="also knock out everything outside the pathways together, and each of their flows alone "
                        "(pathways.faithfulness, stored with the other results)")  # fmt: skip

    p = _analysis_parser(sub, "discover", "the smallest faithful pathway, found from data, and its faithfulness-size curve")
    p.add_argument("--tolerance", type=_non_negative, default=5.0,
                   help="largest mean drop (%%) of the full model's top-token probability a faithful pathway may cause")
    p.add_argument("--min-accuracy", type=_share, default=0.95, help="share of the full model's accuracy it must keep")
    p.add_argument("--method", choices=["exact", "atp", "gates"], default="exact",
                   help="exact: every closable layer scored at every step; atp: layers ranked once by attribution "
                        "patching and tried in that order (far fewer forwards; every figure still exact); gates: "
                        "the same in the order of learned gates (30 Adam steps of 8 questions first)")
    p.add_argument("--by", choices=["model", "task", "sample"], default="model",
                   help="one pathway over all samples, one per task, or one per sample")
    p.add_argument("--seeds", type=_whole_number(0), default=3,
                   help="random pruning of the same sizes, with this many seeds (0: none)")
    p.add_argument("--preset", default="auto", help="a preset to score beside (see pathways.PRESETS), 'auto' (the one "
                   "measured on this model, if any) or 'none'")
    p.add_argument("--video-to-last", action="store_true",
                   help="let video -> last open too (the paper's rule always blocks it)")
    p.add_argument("--refine", choices=["frame-pairs", "cells"], default=None,
                   help="then close the finer edge groups inside the found ranges that the model does not need: frame "
                        "pairs (frame i -> frame j, frame i -> question) or video cells (cell -> question; cell -> "
                        "last too with --video-to-last), ranked by attribution, confirmed exactly")
    p.add_argument("--refine-points", type=_whole_number(1), default=64,
                   help="the most exact points the refinement tries (each one forward per sample)")
    p.add_argument("--stop-at-faithful", action="store_true",
                   help="stop at the first unfaithful step instead of closing every layer (about half the forwards)")
    p.add_argument("--size-curve", action="store_true",
                   help="also the faithfulness-size curve over every attention edge, down to one edge per row: block "
                        "groups (prefix, each frame, question, text, last) x layers ranked by attribution and closed "
                        "least harmful first, each size exact, beside random pruning and the preset (size_curve.csv)")

    p = _command(sub, "reproduce", "the paper's pipeline on a video model (and an image model), with a report")
    p.add_argument("--model", required=True, help="the video model (e.g. byminji/LLaVA-NeXT-7B-Video-FT)")
    p.add_argument("--image-model", default=None, help="the image model to compare with (e.g. llava-hf/llava-v1.6-vicuna-7b-hf)")
    p.add_argument("--data", required=True, help="a TVBench folder (json/, video/), a TOMATO folder or a JSON file")
    p.add_argument("--tomato", default=None, help="a TOMATO folder for the pathway evaluation")
    p.add_argument("--out", required=True, help="results and report folder (a rerun resumes)")
    _overwrite_argument(p)
    p.add_argument("--task", action="append", help="only this task (repeat); default: the paper's five TVBench tasks")
    p.add_argument("--samples", type=_positive_int, default=None, help="at most N questions per task")
    p.add_argument("--window", type=_positive_int, default=9, help="k, layers blocked per swept layer")
    p.add_argument("--batch-size", type=_positive_int, default=8, help="knockout passes per forward")
    p.add_argument("--device", default=None, help="default: this process's GPU (one process per GPU under torchrun)")
    p.add_argument("--dtype", default=None, help="default: bfloat16 on a GPU, float32 on the CPU")
    p.add_argument("--select", choices=["correct", "wrong", "all"], default="correct",
                   help="samples knocked out and probed (default: those answered correctly, as the paper)")
    p.add_argument("--keyword-lens", choices=["embed", "unembed"], default="embed",
                   help="lens of the keyword figure: embed (W_E, the released analysis) or unembed (final norm, W_U)")
    p.add_argument("--keyword-min-count", type=_positive_int, default=100, help="drop keywords with fewer hits (released: 100)")
    p.add_argument("--overlapping-bins", action="store_true", help="the released figure's off-by-one layer bins")
    p.add_argument("--discover-samples", type=_whole_number(0), default=32,
                   help="questions the pathway search runs on, every task in turn (0: no search)")
    p.add_argument("--no-size-curve", action="store_true",
                   help="skip the faithfulness-size curve over every attention edge on those questions")
    _engine_argument(p)
    _threads_argument(p)

    p = _command(sub, "doctor", "is this machine ready: versions, devices, a timed toy forward, suggested --threads, caches")
    p.add_argument("--device", default=None, help="where to time the toy forward (default: cpu)")

    p = _command(sub, "demo", "the whole analysis on the bundled toy models, offline")
    p.add_argument("--model", default="toy16-video-ft", help="the video model (default: toy16-video-ft)")
    p.add_argument("--image-model", default="toy16-image", help="the image model to compare with")
    p.add_argument("--data", default=None, help="synthetic benchmark folder (default: ~/.cache/hooked_video/synthetic)")
    p.add_argument("--samples", type=_positive_int, default=8, help="questions per task")
    p.add_argument("--out", default="hooked_video_demo", help="report folder")
    _overwrite_argument(p)
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: a GPU if there is one, else cpu)")
    _threads_argument(p)

    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.showwarning = _show_warning
    try:
        check_arguments(args)
        from hooked_video.app import commands

        getattr(commands, "run_" + args.command.replace("-", "_"))(args)
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
