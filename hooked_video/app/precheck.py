"""Every ``hooked-video`` argument that can be checked without torch, checked before a model loads:
a bad argument fails within a second, not after minutes of loading. Model names near a bundled
one, targets, presets, placement options, ``--data`` and ``--task`` (layout, annotation files,
JSON syntax), files the command reads, and the output folder. The loaders check the same things
again, with the same functions where they can share them."""

from __future__ import annotations

from pathlib import Path

#: Target names, checked before torch loads (tests/test_cli.py keeps them equal to flow's).
TARGET_NAMES = ["cross-frame", "question-and-options-to-last", "vq-to-true-opt", "vql-to-ql"]
OPEN_ENDED_TARGET_NAMES = ["cross-frame", "vqrl-to-qrl"]
#: ``pathways.PRESETS`` names (a test keeps the two equal).
PRESET_NAMES = ["llava-next-13b-video-ft", "llava-next-7b-video-ft", "mini-internvl-4b-video-ft", "toy-planted",
                "toy-video-ft", "toy16-video-ft", "videollama3-7b"]


def check_arguments(args) -> None:
    """All checks below that apply to ``args.command``; the first failure raises."""
    check_placement(args)
    check_names(args)
    check_inputs(args)
    check_out(args)


def check_names(args) -> None:
    """Model names that are typos of a bundled one, unknown targets and presets."""
    from hooked_video.zoo import near_miss

    for option in ("model", "image_model"):
        name = getattr(args, option, None)
        typo_of = near_miss(name) if isinstance(name, str) else None
        if typo_of:
            raise ValueError(f"no model at {name!r}: no such local folder, and not a bundled model; did you mean "
                             f"{typo_of!r}?")  # fmt: skip
    known = OPEN_ENDED_TARGET_NAMES if getattr(args, "open_ended", False) else TARGET_NAMES
    unknown = [t for t in getattr(args, "target", None) or [] if t not in known]
    if unknown:
        raise ValueError(f"unknown target(s) {unknown}; known: {known}")
    if args.command == "discover" and args.refine and args.by != "model":
        raise ValueError(f"--refine refines the pathway found over all samples; drop --by {args.by}")
    if args.command == "discover" and not args.refine and args.refine_points != 64:
        raise ValueError("--refine-points applies only with --refine frame-pairs or --refine cells; add one, or drop it")
    if args.command == "discover" and args.preset not in ("auto", "none", *PRESET_NAMES):
        raise ValueError(f"unknown preset {args.preset!r} (--preset); presets: {PRESET_NAMES}, 'auto' or 'none'")
    if args.command == "prune":
        if bool(args.preset) == bool(args.from_sweep):
            raise ValueError("give exactly one of --preset NAME or --from-sweep SWEEP_DIR")
        if args.preset and args.preset not in PRESET_NAMES:
            raise ValueError(f"unknown preset {args.preset!r} (--preset); presets: {PRESET_NAMES}")
        if args.random_fraction == "preset" and not args.preset:
            raise ValueError("--random-fraction preset needs --preset (a sweep-derived spec has no fixed fraction)")


def check_placement(args) -> None:
    """Placement options that would be dropped are errors."""
    from hooked_video.runtime.distributed import environment_number  # light: no torch

    sharded = getattr(args, "shard", None) or environment_number("WORLD_SIZE", 1) > 1
    if sharded and getattr(args, "fresh", False):
        raise ValueError("--fresh cannot be combined with shards (one shard would delete the others' results): delete "
                         "the results folder, or use a new one, before launching the shards")  # fmt: skip
    if args.command == "discover" and sharded and args.method == "gates":
        raise ValueError("--method gates learns its gates from every sample's gradients and keeps them nowhere, so it "
                         "runs in one process: drop --shard (or torchrun / accelerate launch), or shard --method atp "
                         "or exact")  # fmt: skip
    if getattr(args, "device_map", None) is None:
        for option, value in (("--max-memory", "max_memory"), ("--gpus-per-process", "gpus_per_process")):
            if getattr(args, value, None) is not None:
                raise ValueError(f"{option} applies only to a model split with --device-map; add --device-map auto, "
                                 f"or drop {option}")  # fmt: skip
        return
    if getattr(args, "device", None) is not None:
        raise ValueError(f"give either --device {args.device} (the whole model on one device) or --device-map (a model "
                         "split over GPUs), not both")  # fmt: skip

    if getattr(args, "gpus_per_process", None) is not None and environment_number("WORLD_SIZE", 1) <= 1:
        raise ValueError("--gpus-per-process applies under torchrun / accelerate launch (several processes, each "
                         "splitting its model); alone, --device-map already uses every GPU (or set --max-memory)")  # fmt: skip


def check_inputs(args) -> None:
    """``--data`` with its ``--task``s, ``--tomato``, and the files a command reads."""
    from hooked_video.data.layout import check_dataset, check_tasks_of_file, file_tasks, layout_of, read_json

    data = getattr(args, "data", None)
    if data is not None and args.command != "demo":
        if getattr(args, "open_ended", False):
            if layout_of(data) != "file":
                raise ValueError(f"--open-ended reads a JSON file of {{video, question}} entries; {data} is a folder")
            entries = read_json(Path(data))
            found = file_tasks(data, entries)
            if args.task:
                check_tasks_of_file(data, found, args.task)
        else:
            check_dataset(data, args.task)
    if getattr(args, "tomato", None) and layout_of(args.tomato) != "TOMATO":
        raise ValueError(f"--tomato {args.tomato} is not a TOMATO folder (jsons/, videos/)")
    video = getattr(args, "video", None)
    if video and not Path(video).is_file():
        raise FileNotFoundError(f"video file {video} is a folder" if Path(video).is_dir() else f"video file not found: {video}")
    read_keywords(getattr(args, "keywords", None))
    sweep = getattr(args, "from_sweep", None)
    if sweep and not Path(sweep).is_dir():
        raise FileNotFoundError(f"--from-sweep {sweep} is not a folder: give the --out folder of a `hooked-video flow` run")


def read_keywords(path: str | None):
    """``--keywords``: a JSON word list or {group: [words]}, read and checked (None: none given)."""
    if not path:
        return None
    from hooked_video.data.layout import read_json

    if not Path(path).is_file():
        raise FileNotFoundError(f"--keywords file {path} " + ("is a folder" if Path(path).is_dir() else "does not exist"))
    keywords = read_json(Path(path))
    words = lambda v: isinstance(v, list) and all(isinstance(w, str) for w in v)  # noqa: E731
    if not (words(keywords) or isinstance(keywords, dict) and all(words(v) for v in keywords.values())):
        raise ValueError(f"--keywords {path}: expected a list of words or {{group: [words]}}")
    return keywords


def check_out(args) -> None:
    """The output folder: not a file, and holding no file of the user's that the command would write."""
    from hooked_video.app.outputs import DEMO_FILES, REPORT_FILES, check_folder

    out = getattr(args, "out", None)
    if out is None or args.command in ("tokens", "info", "build-tiny"):
        return
    names = {"demo": DEMO_FILES, "reproduce": REPORT_FILES, "discover": ("summary.json", "curve.png", "size_curve.csv", "size_curve.png")}.get(
        args.command, ("summary.json",))
    check_folder(out, names, getattr(args, "overwrite", False))
