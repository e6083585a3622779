"""Reading and checking a checkpoint folder's weights: the safetensors files, their tensor names,
missing / unexpected / non-finite weights (refused unless ``strict=False``), and dtypes by name."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import torch

from hooked_video.model.errors import CheckpointError

#: Checkpoint keys that differ between versions without meaning anything (recomputed buffers).
_BENIGN_KEY = re.compile(r"rotary_emb\.inv_freq$|\.num_batches_tracked$")


def _key_report(info: dict) -> dict[str, list[str]]:
    """{"missing": [...], "unexpected": [...], "mismatched": [...]} from transformers' loading info."""
    report = {}
    for kind in ("missing", "unexpected", "mismatched"):
        keys = [k if isinstance(k, str) else _with_shapes(k) for k in info.get(f"{kind}_keys") or []]
        report[kind] = sorted(k for k in keys if not _BENIGN_KEY.search(k))
    return report


def _with_shapes(entry) -> str:
    """``name (checkpoint [68, 64], model [64, 64])`` from transformers' (name, stored, expected)."""
    if len(entry) == 3:
        return f"{entry[0]} (checkpoint {list(entry[1])}, model {list(entry[2])})"
    return str(entry[0])


def _describe_keys(report: dict[str, list[str]], limit: int = 6) -> str:
    parts = []
    for kind, keys in report.items():
        if keys:
            more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
            parts.append(f"{len(keys)} {kind} weights ({', '.join(keys[:limit])}{more})")
    return "; ".join(parts)


def check_weights(model: torch.nn.Module, info: dict, path, strict: bool = True) -> None:
    """Refuse a checkpoint whose weights do not match the model or are not finite.

    With ``strict=False`` the problems are printed as a warning and the model is kept (missing
    weights stay randomly initialised).
    """
    report = _key_report(info)
    problems = []
    if any(report.values()):
        problems.append(f"the checkpoint does not match the model: {_describe_keys(report)}")
    bad = [name for name, p in model.named_parameters() if p.is_floating_point() and not torch.isfinite(p).all()]
    if bad:
        more = f" and {len(bad) - 6} more" if len(bad) > 6 else ""
        problems.append(f"{len(bad)} weights hold NaN or infinite values ({', '.join(bad[:6])}{more})")
    if not problems:
        return
    message = f"{path}: " + "; ".join(problems)
    if strict:
        raise CheckpointError(message + ". The files are incomplete or corrupt (re-download them), or belong to "
                              "another architecture or other sizes than config.json gives. Pass strict=False (CLI: --no-strict) to load anyway.")  # fmt: skip
    warnings.warn(message + "; loading anyway (strict=False).", stacklevel=3)


def check_nothing_offloaded(hf_model: torch.nn.Module, kwargs: dict) -> None:
    """A device map that leaves weights on disk (the meta device) is refused: the forward would fail
    deep inside torch on the first weight it reads."""
    offloaded = [name for name, p in hf_model.named_parameters() if p.device.type == "meta"]
    if offloaded:
        more = f" and {len(offloaded) - 3} more" if len(offloaded) > 3 else ""
        raise CheckpointError(
            f"the model does not fit in the memory it was given (device_map={kwargs.get('device_map')!r}, "
            f"max_memory={kwargs.get('max_memory')!r}): {len(offloaded)} weights ({', '.join(offloaded[:3])}{more}) were "
            "left on disk, which hooked-video does not run; give more memory (--max-memory / max_memory=) or more GPUs"
        )  # fmt: skip


def unreadable_weights(file, err: Exception) -> CheckpointError:
    return CheckpointError(f"{file}: the weights file cannot be read ({type(err).__name__}: {err}); it is incomplete "
                           "or corrupt: re-download or re-save it")  # fmt: skip


def from_pretrained_checked(cls, path, strict: bool, **kwargs):
    """``cls.from_pretrained(path, **kwargs)`` with its weights checked (see ``check_weights``)."""
    from safetensors import SafetensorError

    try:
        try:
            model, info = cls.from_pretrained(path, output_loading_info=True, **kwargs)
        except RuntimeError as err:
            if "ignore_mismatched_sizes" not in str(err):
                raise
            # transformers points at a report in its log, which may be hidden: load again, keeping
            # the mismatches in the loading info, so that check_weights names them with their shapes
            model, info = cls.from_pretrained(path, output_loading_info=True, ignore_mismatched_sizes=True, **kwargs)
    except SafetensorError as err:
        raise unreadable_weights(path, err) from None
    check_nothing_offloaded(model, kwargs)
    check_weights(model, info, path, strict)
    return model


def dtype_of(dtype) -> torch.dtype:
    """A torch dtype from None (float32), a dtype, or its name ("bfloat16", "float16", "float32")."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and isinstance(getattr(torch, dtype, None), torch.dtype):
        return getattr(torch, dtype)
    raise ValueError(f"dtype must be a torch dtype or one of 'float32', 'bfloat16', 'float16', got {dtype!r}")


# ----- LoRA --------------------------------------------------------------------------------------
def weight_files(path: Path) -> list[Path]:
    return sorted(path.glob("*.safetensors"))


def checkpoint_keys(path: Path) -> list[str]:
    """The tensor names stored in a checkpoint folder's safetensors files."""
    from safetensors import safe_open

    from safetensors import SafetensorError

    keys = []
    for file in weight_files(path):
        try:
            with safe_open(str(file), framework="pt") as f:
                keys += list(f.keys())
        except SafetensorError as err:
            raise unreadable_weights(file, err) from None
    return keys


def read_tensors(path: Path, keep=lambda key: True) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint folder whose names ``keep`` accepts."""
    from safetensors import safe_open

    tensors = {}
    for file in weight_files(path):
        with safe_open(str(file), framework="pt") as f:
            tensors.update({k: f.get_tensor(k) for k in f.keys() if keep(k)})
    return tensors
