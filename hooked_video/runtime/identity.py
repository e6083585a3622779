"""What a result is a result of, by content: samples (their video by a hash of the file's ends or
of the pixels, question, options, answer, windows) and models (config and sampled weights)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from hooked_video.runtime.store_format import _json

__all__ = ["fingerprint", "model_identity", "sample_fingerprint"]


def _sample_record(item, index: int) -> list:
    get = item.get if isinstance(item, Mapping) else (lambda name, default=None: getattr(item, name, default))
    options = get("options", get("candidates"))
    options = list(options) if options is not None else None
    answer = get("answer")
    if isinstance(answer, str) and options and answer in options:
        answer = options.index(answer)
    video = get("video", get("frames"))
    record = [str(get("id", index)), get("task", ""), _video_identity(video), get("start"), get("end"),
              get("question"), options, answer]  # fmt: skip
    short = get("short", "error")
    return record if short == "error" else [*record, {"short_windows": short}]  # other frames for short windows


def sample_fingerprint(item, index: int = 0) -> str:
    """A stable hash of one sample: its id (default: ``index``), task, video (by content: a file's
    size and a hash of its first and last MiB, wherever it lies; a hash of the pixels of in-memory
    frames), start/end, short-window handling, question, options and answer (an option's text
    counts as its index). Accepts ``Sample``s, objects with those attributes (a VideoPrompt's
    ``frames`` stand for its video) and dicts."""
    return hashlib.sha256(_json(_sample_record(item, index)).encode()).hexdigest()


def fingerprint(items: Iterable) -> str:
    """A stable hash of all the samples (see ``sample_fingerprint``), in order."""
    digest = hashlib.sha256()
    for index, item in enumerate(items):
        digest.update(_json(_sample_record(item, index)).encode() + b"\n")
    return digest.hexdigest()


def _video_identity(video):
    if video is None:
        return None
    if isinstance(video, (str, os.PathLike)):
        return _file_identity(Path(video))
    if hasattr(video, "detach"):  # a torch tensor
        video = video.detach().cpu().numpy()
    if hasattr(video, "tobytes") and hasattr(video, "dtype"):  # a numpy array
        import numpy as np

        video = np.ascontiguousarray(video)
        return {"array": hashlib.sha256(video.tobytes()).hexdigest(), "shape": list(video.shape),
                "dtype": str(video.dtype)}  # fmt: skip
    if hasattr(video, "tobytes") and hasattr(video, "mode"):  # a PIL image
        return {"image": hashlib.sha256(video.tobytes()).hexdigest(), "size": list(video.size), "mode": video.mode}
    if isinstance(video, (list, tuple)):
        return [_video_identity(v) for v in video]
    raise TypeError(f"cannot fingerprint a video given as {type(video).__name__}")


_ENDS = 1 << 20  # bytes hashed at each end of a file


def _file_identity(path: Path) -> dict:
    """A file by content: its size and a hash of its first and last MiB (a moved, copied or touched
    file is the same file; a re-encoded or edited one is not). A missing file: its name."""
    try:
        size = path.stat().st_size
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            digest.update(f.read(_ENDS))
            if size > 2 * _ENDS:
                f.seek(size - _ENDS)
            digest.update(f.read(_ENDS))
    except OSError:
        return {"missing": path.name}
    return {"size": size, "ends": digest.hexdigest()}


def model_identity(model) -> str:
    """What a model computes with, by content (its name and folder do not count): a hash of its
    config and of every parameter's name, shape, dtype and a strided sample of its values (the
    first, last and about a thousand values in between). Weights rebuilt or fine-tuned under the
    same name differ; the same weights under another name or path are the same model."""
    import torch

    hf = getattr(model, "hf_model", model)
    config = {k: v for k, v in hf.config.to_dict().items()
              if k not in ("_name_or_path", "name_or_path", "transformers_version", "_commit_hash")}  # fmt: skip
    digest = hashlib.sha256(_json(config).encode())
    for name, param in hf.named_parameters():
        flat = param.detach().reshape(-1)
        sample = torch.cat([flat[:64], flat[:: max(1, flat.numel() // 1024)], flat[-64:]]).float().cpu()
        digest.update(f"{name}{tuple(param.shape)}{param.dtype}".encode() + sample.numpy().tobytes())
    return "weights " + digest.hexdigest()[:24]
