"""The ``hooked-video`` command.

    hooked-video build-tiny ARCH DIR        write a small random-weight model to try things offline
    hooked-video info MODEL                 architecture, sizes and hook points of a model
    hooked-video tokens MODEL VIDEO -q Q -o A -o B [--answer 1]
                                            the token map of a prompt: roles, frames, spans
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter


def _build_tiny(args) -> None:
    from hooked_video.zoo.tiny import build_tiny

    print(build_tiny(args.arch, args.dir, seed=args.seed))


def _load(args):
    from hooked_video import HookedVideoLLM

    return HookedVideoLLM.from_pretrained(args.model, device=args.device, dtype=args.dtype)


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
    for i, (role, token) in enumerate(zip(tm.role, prompt.str_tokens)):
        if role == "video" and tm.cell[i, 1:].tolist() != [0, 0]:
            continue  # one line per frame
        where = f" frame {int(tm.frame_of[i])}" if role == "video" else ""
        print(f"{i:6d}  {role:15s}{where:9s} {token!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hooked-video", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

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
        if name == "tokens":
            p.add_argument("video", help="video file")
            p.add_argument("-q", "--question", required=True)
            p.add_argument("-o", "--option", action="append", help="an option (repeat)")
            p.add_argument("--answer", type=int, default=None)
            p.add_argument("--frames", type=int, default=8)
        p.set_defaults(run=run)

    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        args.run(args)
    except (ValueError, OSError) as exc:  # our errors say what to do; no traceback for users
        print(f"hooked-video: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
