"""What the original-layout formats (InternVL-chat, official VideoLLaMA3) share: renaming, splitting
and fusing checkpoint tensors by prefix rules, reading a folder's weights, building a transformers
class from converted weights (checked like any checkpoint), and a tokenizer without remote code."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from hooked_video.model.errors import CheckpointError
from hooked_video.model.weights import check_weights, dtype_of, read_tensors

#: Keys of a saved config that describe the file, not the model.
META_KEYS = {"architectures", "auto_map", "_name_or_path", "transformers_version", "torch_dtype", "dtype",
              "attn_implementation", "_attn_implementation", "model_type"}  # fmt: skip


def checkpoint_error(message: str) -> CheckpointError:
    """The error for a checkpoint folder that cannot be loaded as it is."""
    return CheckpointError(message)


def _match(template: str, key: str):
    pattern = "^" + re.escape(template).replace(r"\{n\}", r"(?P<n>\d+)")
    return re.match(pattern, key)


def _split(kind: str, tensor: torch.Tensor, text) -> tuple[torch.Tensor, ...]:
    """A fused tensor (output rows first) -> its parts."""
    if kind == "grouped":  # rows (kv heads, G + 2, head_dim): G query heads, then k, then v
        kv, dim = text.num_key_value_heads, text.head_dim
        groups = text.num_attention_heads // kv
        rows = tensor.reshape(kv, groups + 2, dim, *tensor.shape[1:])
        flat = lambda t: t.reshape(-1, *tensor.shape[1:]).contiguous()  # noqa: E731
        return flat(rows[:, :groups]), flat(rows[:, groups]), flat(rows[:, groups + 1])
    if kind == "qkv":
        q, kv = text.num_attention_heads * text.head_dim, text.num_key_value_heads * text.head_dim
        return tuple(t.contiguous() for t in tensor.split([q, kv, kv]))
    return tuple(t.contiguous() for t in tensor.chunk(3 if kind == "thirds" else 2))


def _fuse(kind: str, parts: list[torch.Tensor], text) -> torch.Tensor:
    """Parts -> the fused tensor (the inverse of ``_split``)."""
    if kind == "grouped":
        kv, dim = text.num_key_value_heads, text.head_dim
        rest = parts[0].shape[1:]
        q, k, v = (p.reshape(kv, -1, dim, *rest) for p in parts)
        return torch.cat([q, k, v], dim=1).reshape(-1, *rest)
    return torch.cat(parts)


def convert_keys(tensors: dict, rules: list, text=None, reverse: bool = False) -> dict[str, torch.Tensor]:
    """Rename (and split or fuse) checkpoint tensors by ``rules`` of (original, transformers) prefix
    templates: original -> transformers, or back with ``reverse``. The longest matching prefix wins;
    keys no rule matches are kept as they are (the loader then reports them as unexpected)."""
    out, fused = {}, {}
    for key, tensor in tensors.items():
        best = None  # (matched length, rule, part index)
        for rule in rules:
            sources = [rule[0]] if not reverse else (list(rule[1][:-1]) if isinstance(rule[1], tuple) else [rule[1]])
            for index, source in enumerate(sources):
                found = _match(source, key)
                if found and (best is None or found.end() > best[0]):
                    best = (found.end(), rule, index, found)
        if best is None:
            out[key] = tensor
            continue
        end, (original, target), index, found = best
        fields, tail = found.groupdict(), key[end:]
        if not isinstance(target, tuple):
            out[(original if reverse else target).format(**fields) + tail] = tensor
        elif reverse:
            fused.setdefault((original.format(**fields) + tail, target[-1]), {})[index] = tensor
        else:
            for name, part in zip(target[:-1], _split(target[-1], tensor, text)):
                out[name.format(**fields) + tail] = part
    for (key, kind), parts in fused.items():
        out[key] = _fuse(kind, [parts[i] for i in sorted(parts)], text)
    return out


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint folder (safetensors files, else pytorch_model*.bin)."""
    tensors = read_tensors(path)
    for file in [] if tensors else sorted(path.glob("pytorch_model*.bin")):
        tensors.update(torch.load(file, map_location="cpu", weights_only=True, mmap=True))
    if not tensors:
        raise checkpoint_error(f"{path} holds no weights (*.safetensors or pytorch_model*.bin)")
    return tensors


def load_converted(cls, config, state_dict: dict, path, dtype, strict: bool, **hf_kwargs):
    """``cls`` built from ``config`` with converted weights, checked like any checkpoint (eval, eager)."""
    model, info = cls.from_pretrained(None, config=config, state_dict=state_dict, dtype=dtype_of(dtype),
                                      attn_implementation="eager", output_loading_info=True, **hf_kwargs)  # fmt: skip
    check_weights(model, info, path, strict)
    return model.eval()


# ----- load and save -----------------------------------------------------------------------------
def plain_tokenizer(path: Path, **kwargs):
    """``AutoTokenizer`` for a folder whose config.json names remote code: no remote code runs (and
    no prompt asks for it); the class comes from tokenizer_config.json."""
    from transformers import AutoTokenizer, PreTrainedConfig

    return AutoTokenizer.from_pretrained(path, config=PreTrainedConfig(), trust_remote_code=False, **kwargs)
