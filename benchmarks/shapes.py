"""Random-weight models with the real shapes of the paper's models, for benchmarks.

Each preset names an architecture built by ``hooked_video.zoo.tiny`` (so processor, tokenizer and
chat template are the real classes) and the sizes its config is scaled to. Weights are created
directly on the device in the benchmark dtype.

    model = build("pllava-7b", "cuda", torch.bfloat16)
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from pathlib import Path

import torch

from hooked_video.runtime import attention

CLIP_L_336 = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096, image_size=336,
                  patch_size=14)  # fmt: skip
VICUNA_7B = dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                 intermediate_size=11008, vocab_size=32064, max_position_embeddings=4096)  # fmt: skip
VICUNA_13B = dict(hidden_size=5120, num_hidden_layers=40, num_attention_heads=40, num_key_value_heads=40,
                  intermediate_size=13824, vocab_size=32064, max_position_embeddings=4096)  # fmt: skip
#: Mini-InternVL-4B: InternViT-300M-448px and Phi-3-mini (loaded with separate q/k/v projections)
INTERNVIT_300M = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096)
PHI3_MINI = dict(hidden_size=3072, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                 intermediate_size=8192, vocab_size=32064, max_position_embeddings=4096)  # fmt: skip
#: VideoLLaMA3-7B: SigLIP-NaViT and Qwen2.5-7B
SIGLIP_NAVIT = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16)
QWEN25_7B = dict(hidden_size=3584, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                 intermediate_size=18944, vocab_size=152064, max_position_embeddings=32768)  # fmt: skip

#: preset -> (tiny architecture, text sizes, vision sizes, extra config fields, frames); "image_size" and
#: "patch_size" of the vision sizes go to the tiny build (the processor), the rest to the config.
PRESETS = {
    # 8 frames x 16 x 16 context tokens (448 px, patch 14, pixel shuffle 0.5): 2048 video tokens
    "internvl-4b": ("internvl_chat", PHI3_MINI, {**INTERNVIT_300M, "image_size": 448, "patch_size": 14}, {}, 8),
    # 8 frames of 336 px: 12 x 12 merged tokens each (the paper's max_visual_tokens = 8 * 12 * 12)
    "videollama3-7b": ("videollama3_official", QWEN25_7B, {**SIGLIP_NAVIT, "image_size": 336, "patch_size": 14}, {}, 8),
    "llava-next-video-7b": ("llava_next_video", VICUNA_7B, CLIP_L_336, {}, 8),
    # the same with a 16k context, for 16-64 frame videos (144 tokens per frame)
    "llava-next-video-7b-long": ("llava_next_video", {**VICUNA_7B, "max_position_embeddings": 16384}, CLIP_L_336, {}, 8),
    "pllava-7b": ("pllava", VICUNA_7B, CLIP_L_336, {"pooling_shape": [8, 12, 12], "frame_shape": [24, 24], "num_frames": 8}, 8),
    "pllava-13b": ("pllava", VICUNA_13B, CLIP_L_336, {"pooling_shape": [8, 12, 12], "frame_shape": [24, 24], "num_frames": 8}, 8),
    "tiny": ("llava_next_video", dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
                                      intermediate_size=128, vocab_size=1000), {}, {}, 4),
    "pllava-tiny": ("pllava", dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
                                   intermediate_size=128, vocab_size=1000), {}, {"pooling_shape": [4, 2, 2]}, 4),
}  # fmt: skip


def tiny_model(preset: str):
    """(tiny HF model, processor) of the preset's architecture and frame size, loaded as users
    load checkpoints (their class, config and processor are the real ones)."""
    from hooked_video.model.loading import load_checkpoint
    from hooked_video.zoo.tiny import TinySizes, build_tiny

    arch, _, vision, _, _ = PRESETS[preset]
    image, patch = vision.get("image_size", 32), vision.get("patch_size", 8)
    folder = build_tiny(arch, Path(tempfile.mkdtemp()) / preset, TinySizes(image_size=image, patch_size=patch, n_layers=1))
    return load_checkpoint(folder)


def scaled_config(preset: str, config):
    """The tiny config scaled to the preset's sizes."""
    _, text, vision, extra, _ = PRESETS[preset]
    for key, value in text.items():
        setattr(config.text_config, key, value)
    for key, value in vision.items():
        if key not in ("image_size", "patch_size"):
            setattr(config.vision_config, key, value)
    for key, value in extra.items():
        setattr(config, key, value)
    text_config = config.text_config
    text_config.head_dim = text_config.hidden_size // text_config.num_attention_heads
    if isinstance(getattr(text_config, "layer_types", None), list):  # one entry per layer (Qwen2)
        text_config.layer_types = [text_config.layer_types[0]] * text_config.num_hidden_layers
    rope = getattr(text_config, "rope_parameters", None) or {}
    for name in ("long_factor", "short_factor"):  # long-rope factors: one per rotary frequency (Phi-3)
        if isinstance(rope.get(name), list):
            rope[name] = [1.0] * (text_config.head_dim // 2)
    return config


def build_hf(preset: str, device: str, dtype: torch.dtype, attn: str = "eager", split_over: list[str] | None = None):
    """(HF model with random weights of the preset's shape, processor); ``split_over``: devices
    to spread it over (built on the first, then dispatched with accelerate, as
    ``from_pretrained(device_map=...)`` places a checkpoint)."""
    tiny, processor = tiny_model(preset)
    config = scaled_config(preset, tiny.config)
    torch.manual_seed(0)
    with torch.device(device):
        hf = type(tiny)._from_config(config, dtype=dtype, attn_implementation=attn)
    if split_over:
        from accelerate import dispatch_model

        hf = dispatch_model(hf, device_map=split_map(hf, split_over))
    return hf.eval(), processor


def split_map(hf, devices: list[str]) -> dict:
    """Decoder layers spread evenly over ``devices``; the vision side and the embedding on the
    first device, the final norm and the head on the last."""
    language_model = hf.model.language_model
    layers = len(language_model.layers)
    per = -(-layers // len(devices))
    device_map = {f"model.{name}": devices[0] for name, _ in hf.model.named_children() if name != "language_model"}
    device_map.update({f"model.{name}": devices[0] for name, _ in hf.model.named_parameters(recurse=False)})
    for name, _ in language_model.named_children():
        if name != "layers":
            device_map[f"model.language_model.{name}"] = devices[-1] if name == "norm" else devices[0]
    device_map.update({f"model.language_model.layers.{i}": devices[i // per] for i in range(layers)})
    device_map["lm_head"] = devices[-1]
    return device_map


def build(preset: str, device: str, dtype: torch.dtype, split_over: list[str] | None = None):
    """A HookedVideoLLM with random weights of the preset's shape."""
    from hooked_video import HookedVideoLLM

    hf, processor = build_hf(preset, device, dtype, split_over=split_over)
    return HookedVideoLLM.from_hf(hf, processor, model_name=f"random-{preset}")


def frames_for(preset: str, n_frames: int | None = None):
    import numpy as np

    n = n_frames or PRESETS[preset][4]
    size = PRESETS[preset][2].get("image_size", 32)
    return np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


@contextlib.contextmanager
def vision_attention(model, implementation: str):
    """Within the context, the vision tower's attention runs ``implementation`` ("eager" as the
    released code runs it, or "sdpa") whatever hooks are registered."""
    modules = [m for m in model.hf_model.modules() if not hasattr(m, "original_component") and getattr(m, "_hooked_video_vision", False)]
    saved = [dict(m._forward_pre_hooks) for m in modules]
    for m in modules:
        m._forward_pre_hooks.clear()
        m.config._attn_implementation = implementation
    try:
        yield
    finally:
        for m, hooks in zip(modules, saved):
            m._forward_pre_hooks.update(hooks)


def model_and_prompt(preset: str, device: str):
    """The preset's random-weight HookedVideoLLM (bf16 on a GPU, float32 on CPU) and the benchmarks'
    four-option prompt on its frames."""
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    model = build(preset, device, dtype)
    prompt = model.prepare(frames_for(preset), "which way does the ball move ?", ["left", "right", "up", "down"],
                           answer=1, num_frames=None)  # fmt: skip
    return model, prompt


#: The ``--masked-sdpa`` choices: the package's kernel order for masked SDPA, or PyTorch's own choice.
MASKED_SDPA_ORDERS = {"package": attention.MASKED_SDPA_BACKENDS, "torch": ()}


def add_masked_sdpa_option(parser) -> None:
    """``--masked-sdpa``: which SDPA kernels masked attention (knockouts) runs on."""
    parser.add_argument("--masked-sdpa", default="package", choices=list(MASKED_SDPA_ORDERS),
                        help="SDPA kernels of masked attention (knockouts): the package's order (memory-efficient first; "
                             "default) or PyTorch's own choice (cuDNN first on an H100)")  # fmt: skip


def use_masked_sdpa(choice: str) -> None:
    """Apply ``--masked-sdpa`` (process-wide)."""
    attention.MASKED_SDPA_BACKENDS = MASKED_SDPA_ORDERS[choice]


def timed_sweep(model, samples, device: str, engine: str = "fast") -> float:
    """Seconds of one four-target sweep of ``samples`` (every one knocked out; synchronised)."""
    from hooked_video.analysis import flow

    synchronise = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    synchronise()
    start = time.perf_counter()
    flow.sweep(model, samples, select="all", progress=False, engine=engine)
    synchronise()
    return time.perf_counter() - start


def report(result: dict, out: str | None) -> None:
    """Print a benchmark's result as JSON, and write it to ``out`` if given."""
    print(json.dumps(result, indent=1))
    if out:
        Path(out).write_text(json.dumps(result, indent=1))
