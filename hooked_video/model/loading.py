"""Checkpoints to (HF model, processor): a transformers class by architecture, the PLLaVA format
(and image models run on its pooled video path), LoRA adapters merged on load.

    load_checkpoint("llava-hf/LLaVA-NeXT-Video-7B-hf")                 # a transformers class
    load_checkpoint("byminji/LLaVA-NeXT-7B-Video-FT")                   # PLLaVA format
    load_checkpoint("llava-hf/llava-v1.6-vicuna-7b-hf", video_pooling=(8, 12, 12))  # image baseline
    load_checkpoint("runs/lora-step-1000", base_model="llava-hf/llava-v1.6-vicuna-7b-hf")
"""

from __future__ import annotations

import difflib
import json
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from hooked_video.model.adapters import ADAPTERS
from hooked_video.model.errors import CheckpointError, ModelNotFoundError, UnsupportedArchitectureError
from hooked_video.model.weights import (  # noqa: F401 (check_weights importable here, as in 0.2)
    check_nothing_offloaded, check_weights, checkpoint_keys, dtype_of, from_pretrained_checked, read_tensors,
)  # fmt: skip
from hooked_video.model.formats.pllava import PllavaConfig, PllavaForConditionalGeneration
from hooked_video.model.formats.pllava_processing import PllavaProcessor

#: Mean and std of OpenAI CLIP (the PLLaVA models' vision tower).
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
_LORA_KEY = re.compile(r"^(?P<module>.+?)\.lora_(?P<part>[AB])(?:\.[^.]+)?\.weight$")


def _config(path):
    """The model config at ``path``, or an error naming what was looked for."""
    from transformers import AutoConfig

    from hooked_video.zoo import ZOO, near_miss

    typo_of = near_miss(str(path))
    if typo_of:  # a typo of a bundled name: say so now, not after the hub's retries
        raise ModelNotFoundError(f"no model at {str(path)!r}: no such local folder, and not a bundled model "
                                 f"({', '.join(sorted(ZOO))}); did you mean {typo_of!r}?")  # fmt: skip
    try:
        return AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as err:
        local = Path(path).expanduser()
        if local.is_dir():
            raise CheckpointError(f"{local} is not a model folder: {str(err).splitlines()[0]}") from err
        if _is_path(str(path)):
            siblings = [p.name for p in local.parent.iterdir() if p.is_dir()] if local.parent.is_dir() else []
            close = difflib.get_close_matches(local.name, siblings, n=1)
            hint = f"; did you mean {str(local.parent / close[0])!r}?" if close else ""
            raise ModelNotFoundError(f"no model folder at {str(path)!r}{hint}") from err
        close = difflib.get_close_matches(str(path), list(ZOO), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ModelNotFoundError(
            f"no model at {str(path)!r}: no such local folder, not a bundled model ({', '.join(sorted(ZOO))}), "
            f"and the hub could not provide it (offline or unknown id: {str(err).splitlines()[0][:160]}){hint}"
        ) from err


def _is_path(name: str) -> bool:
    """A name that can only be a folder: absolute, relative to ``.``/``~``, or with more than one "/"."""
    return name.startswith(("/", "./", "../", "~", "\\")) or name.count("/") > 1 or Path(name).drive != ""


# ----- PLLaVA -------------------------------------------------------------------------------------
def is_pllava(config) -> bool:
    """The PLLaVA format: its architecture name, or a llava config carrying the pooling fields."""
    arch = (getattr(config, "architectures", None) or [None])[0]
    return arch == "PllavaForConditionalGeneration" or (
        getattr(config, "model_type", None) in ("llava", "pllava") and getattr(config, "pooling_shape", None) is not None
    )


def pllava_config(config, video_pooling=None) -> PllavaConfig:
    """A PllavaConfig from a PLLaVA or llava / llava-next config (``video_pooling`` (T, h, w)
    sets the pooled video shape, e.g. for an image model run on video)."""
    fields = {k: v for k, v in config.to_dict().items() if k not in ("model_type", "architectures", "transformers_version")}
    if video_pooling is not None:
        pooling = [int(x) for x in video_pooling]
        if len(pooling) != 3 or min(pooling) < 1:
            raise ValueError(f"video_pooling must be (T, h, w) of positive integers, got {video_pooling!r}")
        fields.update(pooling_shape=pooling, num_frames=pooling[0], use_pooling=True)
    fields.setdefault("vision_feature_layer", -2)
    fields.setdefault("vision_feature_select_strategy", "default")
    pllava = PllavaConfig(**fields)
    pllava.architectures = ["PllavaForConditionalGeneration"]
    return pllava


def clip_image_processor(path, image_size: int):
    """The CLIP image processor of a PLLaVA-format folder (its mean/std), at ``image_size``: PIL's
    bicubic resize, as the released code ran it (transformers 5's default torchvision backend
    differs by up to 2 grey levels, enough to flip near-tie answers)."""
    from transformers import AutoImageProcessor, CLIPImageProcessorPil

    mean, std = CLIP_MEAN, CLIP_STD
    try:
        found = AutoImageProcessor.from_pretrained(path)
        mean, std = list(found.image_mean), list(found.image_std)
    except (OSError, ValueError, KeyError):
        pass  # no image-processor file: the released checkpoints use OpenAI CLIP's statistics
    square = {"height": image_size, "width": image_size}
    return CLIPImageProcessorPil(size={"shortest_edge": image_size}, crop_size=square, image_mean=mean, image_std=std,
                                 do_convert_rgb=True)  # fmt: skip


def pllava_processor(path, config: PllavaConfig) -> PllavaProcessor:
    """A PllavaProcessor from the checkpoint's tokenizer, with ``<image>`` as the video placeholder."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    image_token = "<image>"
    if tokenizer.convert_tokens_to_ids(image_token) in (None, tokenizer.unk_token_id):
        raise CheckpointError(f"the tokenizer of {path} has no {image_token} token; PLLaVA prompts need it")
    image = clip_image_processor(path, config.vision_config.image_size)
    return PllavaProcessor(image_processor=image, tokenizer=tokenizer, pooling_shape=config.pooling_shape)


def lora_format(path: Path) -> str | None:
    """"peft" (adapter_config.json + adapter weights), "released" (a checkpoint whose weights
    hold lora_A/lora_B tensors, as the released training saves them), or None."""
    if (path / "adapter_config.json").exists():
        return "peft"
    if path.is_dir() and any(".lora_A" in k for k in checkpoint_keys(path)):
        return "released"
    return None


def _module_name(model: torch.nn.Module, adapter_path: str) -> str:
    """The model's module an adapter path names: as is, in the legacy llava layout, or relative
    to the language model (peft prefixes ``base_model.model.`` removed)."""
    modules = dict(model.named_modules())
    path = adapter_path.replace("base_model.model.", "")
    candidates = [path]
    if path.startswith("language_model.model."):
        candidates.append("model.language_model." + path[len("language_model.model.") :])
    candidates.append("model.language_model." + path.removeprefix("model.").removeprefix("language_model."))
    for name in candidates:
        if isinstance(modules.get(name), torch.nn.Linear):
            return name
    raise CheckpointError(f"the LoRA weights name {adapter_path!r}, which matches no linear layer of the model")


def _pattern_value(pattern: dict | None, module: str, default):
    """peft's per-module override: the value of the first key matching the end of the module name."""
    for key, value in (pattern or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


@torch.no_grad()
def merge_lora(model: torch.nn.Module, tensors: dict[str, torch.Tensor], alpha: float, rank: int | None = None,
               rank_pattern: dict | None = None, alpha_pattern: dict | None = None) -> int:  # fmt: skip
    """W += alpha / r * B @ A for every (lora_A, lora_B) pair in ``tensors``, with peft's per-module
    ``rank_pattern`` / ``alpha_pattern`` (keys matched against the end of the adapter's module name,
    first match wins); returns the count."""
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        match = _LORA_KEY.match(key)
        if match:
            pairs.setdefault(match["module"], {})[match["part"]] = value
    modules = dict(model.named_modules())
    for adapter_path, pair in pairs.items():
        if set(pair) != {"A", "B"}:
            raise CheckpointError(f"LoRA weights of {adapter_path!r} lack lora_{'A' if 'A' not in pair else 'B'}")
        linear = modules[_module_name(model, adapter_path)]
        name = adapter_path.replace("base_model.model.", "")
        r = _pattern_value(rank_pattern, name, rank or pair["A"].shape[0])
        scale = _pattern_value(alpha_pattern, name, alpha) / r
        shape = (pair["B"].shape[0], pair["A"].shape[-1])
        if pair["A"].shape[0] != pair["B"].shape[-1] or shape != tuple(linear.weight.shape):
            raise CheckpointError(
                f"the LoRA weights of {name!r} (lora_B {list(pair['B'].shape)} @ lora_A {list(pair['A'].shape)}) do "
                f"not fit the base model's layer of shape {list(linear.weight.shape)}: the adapter was trained on a "
                "base of other sizes; pass the base it was trained on (base_model=...)"
            )  # fmt: skip
        delta = scale * (pair["B"].float() @ pair["A"].float())
        linear.weight += delta.to(linear.weight.dtype).to(linear.weight.device)
    return len(pairs)


#: adapter_config.json fields whose value changes the merge beyond W += alpha / r * B @ A (with
#: rank_pattern and alpha_pattern, which are applied): refused by name, never ignored.
_UNMERGED_PEFT_FIELDS = ("use_dora", "use_rslora", "fan_in_fan_out", "lora_bias", "modules_to_save",
                         "trainable_token_indices", "target_parameters", "layer_replication")  # fmt: skip


def _peft_settings(path: Path) -> tuple[dict, str | None]:
    settings = _read_config(path / "adapter_config.json")
    if settings.get("peft_type", "LORA") != "LORA":
        raise CheckpointError(f"{path}: only LoRA adapters are merged on load (found {settings.get('peft_type')})")
    unmerged = [k for k in _UNMERGED_PEFT_FIELDS if settings.get(k) not in (None, False, [], {})]
    if unmerged:
        raise CheckpointError(
            f"{path}: the adapter sets {', '.join(f'{k}={settings[k]!r}' for k in unmerged)}, which this loader does not "
            "merge; merge it with peft (PeftModel.from_pretrained(base, folder).merge_and_unload(), then "
            "save_pretrained) and load the merged folder"
        )  # fmt: skip
    return settings, settings.get("base_model_name_or_path")


def _positive_alpha(path: Path, alpha) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
        raise CheckpointError(f"{path}: the LoRA alpha must be a positive number, got {alpha!r} (pass lora_alpha=...)")
    return float(alpha)


def _base_missing(path: Path, base) -> CheckpointError:
    hint = f" (its adapter names {base!r}, which is not available here)" if base else ""
    return CheckpointError(
        f"{path} holds a LoRA adapter, not a whole model{hint}; pass base_model=... with the checkpoint it was "
        "trained on (e.g. a local copy of llava-hf/llava-v1.6-vicuna-7b-hf), and lora_alpha=... if the folder "
        "does not record it."
    )


# ----- entry point -------------------------------------------------------------------------------
def load_checkpoint(name_or_path, dtype=None, device=None, video_pooling=None, base_model=None, lora_alpha: float | None = None,
                    strict: bool = True, **kwargs: Any):  # fmt: skip
    """(HF model in eval mode with eager attention, processor) for a checkpoint.

    Args:
        name_or_path: a local folder, a hub id, or a bundled zoo name.
        video_pooling: (T, h, w): load the model into the PLLaVA class and run video through its
            pooled path (the paper's image baseline: a llava-v1.6 checkpoint on video).
        base_model, lora_alpha: for LoRA folders (see ``lora_format``): the base checkpoint
            (default: the one the adapter names) and the LoRA alpha (default: the adapter's).
        strict: refuse weights missing from or unexpected by the model, and non-finite weights
            (``False``: warn with the list and load anyway).
        kwargs: passed to the HF ``from_pretrained`` (e.g. ``device_map``).
    """
    from transformers import AutoProcessor

    from hooked_video.zoo import resolve

    path = resolve(name_or_path)
    local = Path(path)
    if local.is_file():
        raise CheckpointError(f"{local} is a file; give the model's folder (the one holding config.json and the weights)")
    lora = lora_format(local) if local.is_dir() else None
    if lora is not None:
        return _load_lora(local, lora, dtype, device, video_pooling, base_model, lora_alpha, strict, **kwargs)
    converted = _load_original_layout(local, dtype, strict, **kwargs) if local.is_dir() else None
    if converted is not None:  # InternVL-chat / official VideoLLaMA3 folders, converted on load
        if device is not None and "device_map" not in kwargs:
            converted[0].to(device)
        check_nothing_offloaded(converted[0], kwargs)
        return converted
    torch_dtype = dtype_of(dtype)
    config = _config(path)
    if video_pooling is not None or is_pllava(config):
        config = pllava_config(config, video_pooling)
        hf_model = from_pretrained_checked(PllavaForConditionalGeneration, path, strict, config=config, dtype=torch_dtype,
                                    attn_implementation="eager", **kwargs)  # fmt: skip
        processor = pllava_processor(path, config)
    else:
        arch = (getattr(config, "architectures", None) or [None])[0]
        if arch not in ADAPTERS:
            hint = ""
            if arch in ("LlavaForConditionalGeneration", "LlavaNextForConditionalGeneration"):
                hint = (" To run this image model on video through the pooled PLLaVA path (the paper's image "
                        "baseline), pass video_pooling=(8, 12, 12).")  # fmt: skip
            raise UnsupportedArchitectureError(
                f"architecture {arch!r} is not supported by hooked_video; supported: {sorted(ADAPTERS)}.{hint}"
            )
        import transformers

        hf_model = from_pretrained_checked(getattr(transformers, arch), path, strict, dtype=torch_dtype, attn_implementation="eager",
                                    **kwargs)  # fmt: skip
        processor = AutoProcessor.from_pretrained(path)
    if device is not None and "device_map" not in kwargs:
        hf_model.to(device)
    return hf_model.eval(), processor



def _load_original_layout(path: Path, dtype, strict: bool, **kwargs):
    """(model, processor) for a folder in a layout transformers does not load (InternVL-chat,
    official VideoLLaMA3), converted on load; None for any other folder."""
    from hooked_video.model.formats.internvl_chat import is_internvl_chat, load_internvl_chat
    from hooked_video.model.formats.videollama3_official import is_videollama3_official, load_videollama3_official

    file = path / "config.json"
    raw = _read_config(file) if file.exists() else {}
    for is_layout, load in ((is_internvl_chat, load_internvl_chat), (is_videollama3_official, load_videollama3_official)):
        if is_layout(raw):
            return load(path, dtype, strict=strict, **kwargs)
    return None


def _read_config(file: Path) -> dict:
    """The JSON object of a config.json (errors name the file)."""
    try:
        raw = json.loads(file.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{file}: not a valid JSON config ({err}); re-download or repair it") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{file}: a model config is a JSON object, got a {type(raw).__name__}")
    return raw


def _load_lora(path: Path, kind: str, dtype, device, video_pooling, base_model, lora_alpha, strict, **kwargs):
    rank, patterns = None, {}
    if kind == "peft":
        settings, named_base = _peft_settings(path)
        base = base_model or named_base
        alpha = lora_alpha if lora_alpha is not None else settings.get("lora_alpha")
        rank = settings.get("r")
        patterns = {"rank_pattern": settings.get("rank_pattern"), "alpha_pattern": settings.get("alpha_pattern")}
        if base_model is not None and named_base is not None and str(base_model) != str(named_base):
            warnings.warn(f"{path}: the adapter was trained on {named_base!r}; merging it into {str(base_model)!r} as "
                          "asked (base_model=)", stacklevel=3)  # fmt: skip
    else:
        base, alpha = base_model, lora_alpha
    if base is None:
        raise _base_missing(path, base)
    if alpha is None:
        raise CheckpointError(f"{path}: the LoRA alpha is not recorded; pass lora_alpha=... (the released training used 32)")
    alpha = _positive_alpha(path, alpha)
    try:
        hf_model, processor = load_checkpoint(base, dtype, device, video_pooling, strict=strict, **kwargs)
    except (OSError, ModelNotFoundError) as err:
        raise _base_missing(path, base) from err
    tensors = read_tensors(path)
    if not tensors and (path / "adapter_model.bin").exists():
        tensors = torch.load(path / "adapter_model.bin", weights_only=True)
    if not any(".lora_A" in k for k in tensors):
        raise CheckpointError(f"{path} holds no LoRA weights (lora_A / lora_B tensors)")
    if kind == "released":  # the folder also holds the trained projector
        rest = {k: v for k, v in tensors.items() if "lora_" not in k}
        renamed = {("model." + k if k.startswith("multi_modal_projector.") else k): v for k, v in rest.items()}
        state = hf_model.state_dict()
        unknown = [k for k in renamed if k not in state]
        if unknown:
            raise CheckpointError(f"{path}: weights {unknown[:3]} match nothing in the base model {base}")
        other = [f"{k} ({list(v.shape)}, base {list(state[k].shape)})" for k, v in renamed.items() if v.shape != state[k].shape]
        if other:
            raise CheckpointError(f"{path}: weights {', '.join(other[:3])} do not fit the base model {base}: the adapter "
                                  "was trained on a base of other sizes; pass the base it was trained on (base_model=...)")  # fmt: skip
        hf_model.load_state_dict(renamed, strict=False)
    merge_lora(hf_model, tensors, alpha, rank, **patterns)
    return hf_model, processor
