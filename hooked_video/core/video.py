"""Video input: read a clip and sample frames at segment midpoints (the TVBench rule).

`load_video` accepts a path (decord, with PyAV as fallback), a (T, H, W, 3) uint8 array or
tensor, or a list of PIL images, and always returns a (num_frames, H, W, 3) uint8 numpy array.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Callable, Sequence, Union

import numpy as np
import torch
from jaxtyping import UInt8

VideoSource = Union[str, os.PathLike, np.ndarray, torch.Tensor, Sequence["PIL.Image.Image"]]  # noqa: F821
Frames = UInt8[np.ndarray, "frames height width 3"]


class VideoError(ValueError):
    """A video could not be used: missing, undecodable, too short, or badly shaped."""


SHORT_WINDOWS = ("error", "repeat")


def _bounds(n_total: int, fps: float | None, start, end) -> tuple[int, int]:
    """(first, last) frame of the window [start, end] in seconds, clipped to the clip."""
    first = 0 if start is None else max(0, round(start * fps))
    last = n_total - 1 if end is None else min(round(end * fps), n_total - 1)
    return first, last


def _window(n_total: int, num_frames: int, fps: float | None, start, end, short: str) -> tuple[int, int]:
    """(first, last) frame of the window [start, end] in seconds (the whole clip without one),
    checked to hold enough frames (see ``segment_midpoints`` for ``short``)."""
    if isinstance(num_frames, bool) or not isinstance(num_frames, (int, np.integer)) or num_frames < 1:
        raise VideoError(f"num_frames must be an integer >= 1, got {num_frames!r}.")
    if short not in SHORT_WINDOWS:
        raise VideoError(f"short must be one of {SHORT_WINDOWS}, got {short!r}.")
    if n_total < 1:
        raise VideoError("the video has no frames.")
    if (start is not None or end is not None) and not fps:
        raise VideoError("start/end are in seconds and need the clip's frame rate (fps).")
    first, last = _bounds(n_total, fps, start, end)
    available = last - first + 1
    window = "" if start is None and end is None else f" between {start}s and {end}s"
    if available < 1 or (available < num_frames and short == "error"):
        raise VideoError(
            f"the video has {max(available, 0)} frames{window}, fewer than the {num_frames} "
            f"asked for; ask for fewer frames (num_frames=...), widen the window, or pass "
            f"short='repeat' to repeat frames as the paper's released code does."
        )
    return first, last


def segment_midpoints(
    n_total: int,
    num_frames: int,
    fps: float | None = None,
    start: float | None = None,
    end: float | None = None,
    short: str = "error",
) -> np.ndarray:
    """Indices of the midpoints of `num_frames` equal segments of a clip of `n_total` frames.

    The window is [start, end] in seconds (needs `fps`), else the whole clip. With
    first = round(start * fps) (>= 0) and last = round(end * fps) (<= n_total - 1),
    seg = (last - first) / num_frames and index_i = int(first + seg / 2 + round(seg * i)),
    the rule of the TVBench evaluation code.

    Windows of ``num_frames`` frames or fewer: with ``short="error"`` (default) a window of
    exactly ``num_frames`` frames gives every frame once and a shorter one raises VideoError;
    with ``short="repeat"`` the rule above applies as the released code applies it, repeating
    frames (8 frames for 8 give [0, 1, 2, 3, 4, 4, 5, 6]).
    """
    first, last = _window(n_total, num_frames, fps, start, end, short)
    if last - first + 1 == num_frames and short == "error":
        return np.arange(first, last + 1)
    seg = (last - first) / num_frames
    return np.array([int(first + seg / 2 + np.round(seg * i)) for i in range(num_frames)])


def uniform_indices(
    n_total: int,
    num_frames: int,
    fps: float | None = None,
    start: float | None = None,
    end: float | None = None,
    short: str = "error",
) -> np.ndarray:
    """Indices ``first + int(linspace(0, n - 1, num_frames))`` of the n frames of the window: the
    first and the last frame included (the released VideoLLaMA3 loader's rule). Window and
    ``short`` as in ``segment_midpoints``."""
    first, last = _window(n_total, num_frames, fps, start, end, short)
    return first + np.linspace(0, last - first, num_frames).astype(int)


#: Frame sampling rules by name: "midpoints" (TVBench's evaluation code; the paper's LLaVA and
#: InternVL runs) and "uniform" (the released VideoLLaMA3 loader).
SAMPLINGS = {"midpoints": segment_midpoints, "uniform": uniform_indices}


def frame_times(indices: np.ndarray, n_total: int, fps: float, start: float | None = None,
                end: float | None = None) -> list[float]:  # fmt: skip
    """Seconds of each sampled frame as the released VideoLLaMA3 loader writes them: the window's
    n frames spread evenly over [t0, t1] (``linspace(t0, t1, n)``), t0 = start (or 0), t1 = end
    (or the clip's end, n_total / fps)."""
    first, last = _bounds(n_total, fps, start, end)
    t0 = 0.0 if start is None else float(start)
    t1 = n_total / fps if end is None else min(float(end), n_total / fps)
    step = (t1 - t0) / (last - first) if last > first else 0.0
    return [round(t0 + (int(i) - first) * step, 6) for i in indices]


#: pick(n_total, fps) -> the indices of the frames to keep
Picker = Callable[[int, "float | None"], np.ndarray]


def _read_decord(path: str, pick: Picker) -> Frames:
    import decord

    reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
    indices = pick(len(reader), float(reader.get_avg_fps()))
    return reader.get_batch(indices.tolist()).asnumpy()  # only these frames are decoded to RGB and kept


def _read_pyav(path: str, pick: Picker) -> Frames:
    """Stream the clip, converting and keeping only the sampled frames.

    The indices come from the decoded frame count. When the container states a count
    (``stream.frames``, e.g. mp4), one pass decodes and keeps the frames at the indices that count
    gives, and a second pass is needed only if the decoded count turns out different; without it
    (e.g. mkv, webm), a first pass counts the frames without converting any.
    """
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate) if stream.average_rate else None
        stated = stream.frames  # 0 when the container does not say

    if stated > 0:
        try:
            indices = pick(stated, fps)
        except VideoError:  # the stated count may be short of the decodable frames: count them
            indices = np.array([], dtype=int)
        count, frames = _pyav_frames(path, indices)
        if count == stated and len(indices):
            return frames
    else:
        count, _ = _pyav_frames(path, [])
    if count == 0:
        raise VideoError(f"no video frames could be decoded from {path}.")
    return _pyav_frames(path, pick(count, fps))[1]


def _pyav_frames(path: str, indices) -> tuple[int, Frames | None]:
    """Decode every frame of the first video stream once; return the number of frames and the
    rgb24 frames at ``indices`` (None if none are asked or the clip has fewer frames). Only those
    frames are converted, each copied straight into the output array."""
    import av

    positions: dict[int, list[int]] = {}  # frame index -> its places in the output
    for place, index in enumerate(indices):
        positions.setdefault(int(index), []).append(place)
    out, count = None, 0
    with av.open(path) as container:
        for count, frame in enumerate(container.decode(container.streams.video[0]), start=1):
            if count - 1 in positions:
                array = frame.to_ndarray(format="rgb24")
                if out is None:
                    out = np.empty((len(indices), *array.shape), dtype=np.uint8)
                out[positions[count - 1]] = array
    if not positions or count <= max(positions):
        return count, None
    return count, out


def _decoders(backend: str):
    if backend == "decord":
        return [_read_decord]
    if backend == "pyav":
        return [_read_pyav]
    if backend != "auto":
        raise ValueError(f"backend must be 'auto', 'decord' or 'pyav', got {backend!r}.")
    try:
        import decord  # noqa: F401

        return [_read_decord, _read_pyav]
    except ImportError:
        return [_read_pyav]


def _read_file(path: Path, pick: Picker, backend: str) -> Frames:
    if path.is_dir():
        raise VideoError(f"video path {path} is a folder, not a video file")
    if not path.is_file():
        raise VideoError(f"video file not found: {path}")
    errors, out_of_memory = [], False
    for read in _decoders(backend):
        try:
            return read(str(path), pick)
        except VideoError:
            raise
        except Exception as exc:  # decoders raise their own, unrelated error types
            errors.append(f"{read.__name__[6:]}: {type(exc).__name__}: {exc}")
            out_of_memory |= _is_out_of_memory(exc, str(path))
    if out_of_memory:
        raise VideoError(
            f"memory ran out while decoding video {path} ({'; '.join(errors)}); ask for fewer frames "
            "(num_frames=...), or use shorter or lower-resolution videos."
        )
    raise VideoError(f"could not decode video {path} ({'; '.join(errors)}); is it a video file?")


def _is_out_of_memory(exc: BaseException, path: str) -> bool:
    """MemoryError (numpy's and PyAV's included), ENOMEM, or a decoder error that mentions memory
    (in its message, not in the file's path)."""
    return (isinstance(exc, MemoryError) or getattr(exc, "errno", None) == errno.ENOMEM
            or "memory" in str(exc).replace(path, "").lower())  # fmt: skip


def _as_array(source) -> Frames:
    if isinstance(source, torch.Tensor):
        source = source.detach().cpu().numpy()
    if isinstance(source, np.ndarray):
        array = source
    else:
        try:
            images = [np.asarray(image.convert("RGB")) for image in source]
        except (AttributeError, TypeError) as exc:
            raise VideoError(
                f"cannot read frames from {type(source).__name__}: give a path, a (T, H, W, 3) "
                "uint8 array or tensor, or a list of PIL images."
            ) from exc
        sizes = sorted({image.shape[:2] for image in images})
        if len(sizes) > 1:
            raise VideoError(f"the PIL frames differ in size ((H, W) {sizes[0]} and {sizes[-1]}); resize them to one "
                             "size first, e.g. [image.resize((W, H)) for image in frames]")  # fmt: skip
        array = np.stack(images) if images else np.zeros((0, 1, 1, 3), np.uint8)
    if array.ndim != 4 or array.shape[-1] != 3:
        raise VideoError(f"frames must have shape (T, H, W, 3), got {tuple(array.shape)}.")
    if len(array) and 0 in array.shape[1:3]:
        raise VideoError(f"frames of {array.shape[1]} x {array.shape[2]} pixels hold no image; give frames of at least "
                         "1 x 1 pixels (the model's processor resizes them)")  # fmt: skip
    if array.dtype != np.uint8:
        raise VideoError(f"frames must be uint8 in 0..255, got dtype {array.dtype}.")
    return array


def load_video(
    source: VideoSource,
    num_frames: int | None = 8,
    start: float | None = None,
    end: float | None = None,
    fps: float | None = None,
    backend: str = "auto",
    short: str = "error",
    sampling: str = "midpoints",
    with_times: bool = False,
):
    """Read a video and sample `num_frames` frames.

    Args:
        source: a video file path, a (T, H, W, 3) uint8 array/tensor, or a list of PIL images.
        num_frames: frames to return; None keeps every frame of an in-memory clip.
        start, end: optional window in seconds (for arrays, give `fps`).
        fps: frame rate of an in-memory clip (files carry their own).
        backend: "auto" (decord, then PyAV), "decord" or "pyav".
        short: windows of ``num_frames`` frames or fewer: "error" or "repeat" (the released
            code's rule; see ``segment_midpoints``).
        sampling: "midpoints" of equal segments (``segment_midpoints``, default) or "uniform"
            (``uniform_indices``: first and last frame included, the released VideoLLaMA3 rule).
        with_times: also return each frame's time in seconds (``frame_times``; None for
            in-memory frames without ``fps`` or kept whole).

    Returns:
        (num_frames, H, W, 3) uint8 array; with ``with_times``, (frames, times).
    """
    if num_frames is not None and (isinstance(num_frames, bool) or not isinstance(num_frames, (int, np.integer))
                                   or num_frames < 1):  # fmt: skip
        raise VideoError(f"num_frames must be an integer >= 1, got {num_frames!r} (None keeps every in-memory frame).")
    if sampling not in SAMPLINGS:
        raise VideoError(f"sampling must be one of {sorted(SAMPLINGS)}, got {sampling!r}.")
    seen: dict = {}

    def pick(n_total: int, clip_fps: float | None) -> np.ndarray:
        indices = SAMPLINGS[sampling](n_total, num_frames, clip_fps, start, end, short)
        seen.update(n_total=n_total, fps=clip_fps, indices=indices)
        return indices

    if isinstance(source, (str, os.PathLike)):
        if num_frames is None:
            raise VideoError("num_frames=None is only for in-memory frames; give a number.")
        frames = _read_file(Path(source), pick, backend)
    else:
        frames = _as_array(source)
        if len(frames) == 0:
            raise VideoError(f"the video has no frames: frames of shape {tuple(frames.shape)}.")
        whole = num_frames is None or (len(frames) == num_frames and start is None and end is None and short == "error")
        if not whole:
            frames = frames[pick(len(frames), fps)]
    if not with_times:
        return frames
    if not seen or not seen["fps"]:
        return frames, None
    return frames, frame_times(seen["indices"], seen["n_total"], seen["fps"], start, end)


def save_video(frames: Frames, path: str | os.PathLike, fps: int = 8, codec: str = "libx264", crf: int = 10) -> Path:
    """Write (T, H, W, 3) uint8 frames as an H.264 mp4 (PyAV). H and W must be even.

    ``crf=0`` is lossless in luma and chroma (only the yuv420p chroma subsampling remains), so
    the decoded frames do not depend on the encoder's rate-control decisions."""
    import av

    frames = _as_array(frames)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf), "threads": "1"}
        stream.codec_context.thread_count = 1  # single-threaded: equal frames give equal bytes
        stream.codec_context.thread_type = "NONE"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path
