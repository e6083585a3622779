"""VideoLLaMA3 in its official release layout (DAMO-NLP-SG/VideoLLaMA3-7B: model_type
``videollama3_qwen2``, a flat Qwen2 config plus ``vision_encoder_config``) loaded onto transformers'
``VideoLlama3ForConditionalGeneration`` at load time, without remote code.

Keys: ``model.vision_encoder.*`` (the training repo's ``model.vision_encoder.vision_encoder.*`` too)
-> ``model.vision_model.*``, ``model.mm_projector.readout.*`` -> ``model.projector.readout.*``, the
Qwen2 ``model.*`` -> ``model.language_model.*``, ``lm_head`` as is.

The processor is transformers' ``VideoLlama3Processor`` with the official placeholder: its video token
is ``<image>`` (set as the tokenizer's ``video_token``), so a video reads
``Time 0.0s:<image>*n,Time 1.0s:<image>*n,...`` with the official ids, and token compression is off
as the paper runs the model. Images use ``<|image_pad|>`` (both implementations overwrite the
placeholder embedding with the features, so the outputs are the same as with ``<image>``).
"""

from __future__ import annotations

import json
from pathlib import Path

from hooked_video.model.formats.conversion import (
    META_KEYS, checkpoint_error, convert_keys, load_converted, plain_tokenizer, read_weights,
)  # fmt: skip
from hooked_video.model.formats.internvl_chat_processing import role_chat_template

OFFICIAL_IMAGE_TOKEN = "<image>"
OPENAI_CLIP_MEAN, OPENAI_CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
#: (official, transformers) key prefixes; the first vision rule is the one written back.
RULES = [
    ("model.vision_encoder.", "model.vision_model."),
    ("model.vision_encoder.vision_encoder.", "model.vision_model."),  # the training repo's layout
    ("model.mm_projector.", "model.projector."),
    ("model.", "model.language_model."),
    ("lm_head.", "lm_head."),
]
VISION_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_channels",
                 "patch_size", "hidden_act", "layer_norm_eps", "attention_dropout")  # fmt: skip
#: ChatML without a system prompt (the paper's prompts), video items rendered as the official placeholder.
CHAT_TEMPLATE = role_chat_template("<|im_start|>", "\n", "<|im_end|>\n", OFFICIAL_IMAGE_TOKEN + "\n", "<|image_pad|>\n")


def is_videollama3_official(config: dict) -> bool:
    """The official VideoLLaMA3 release layout (a raw config.json dict)."""
    return config.get("model_type") == "videollama3_qwen2"


def vl3_sizes(patch: int, merge: int, min_tokens: int = 16, max_tokens: int = 16384, **fields) -> dict:
    """VideoLLaMA3 (image or video) processor settings from the official ``min_tokens`` / ``max_tokens``:
    frames are resized to keep min_tokens..max_tokens merged tokens of (patch * merge)^2 pixels
    (a video's budget shared by its frames, as the official per-frame max_tokens * 28^2 // T)."""
    factor = patch * merge
    size = {"shortest_edge": min_tokens * factor * factor, "longest_edge": max_tokens * factor * factor}
    return dict(patch_size=patch, merge_size=merge, size=size, **fields)


def _qwen2_fields() -> set[str]:
    from transformers import Qwen2Config

    return set(Qwen2Config().to_dict()) - META_KEYS | {"rope_theta", "rope_scaling"}


def hf_config(config: dict, image_token_id: int, video_token_id: int):
    """A ``VideoLlama3Config`` for a raw official config (untied: a tied head is copied on load)."""
    from transformers import Qwen2Config, VideoLlama3Config

    if config.get("mm_projector_type", "mlp2x_gelu") != "mlp2x_gelu":
        raise checkpoint_error(f"VideoLLaMA3 projector {config['mm_projector_type']!r} is not supported (only mlp2x_gelu)")
    vision = config.get("vision_encoder_config")
    if not vision:
        raise checkpoint_error("this VideoLLaMA3 config has no vision_encoder_config (the training layout names the encoder "
                     f"by path: {config.get('vision_encoder')!r}); use a released checkpoint, which embeds it")  # fmt: skip
    fields = _qwen2_fields()
    text = Qwen2Config(**{k: v for k, v in config.items() if k in fields}).to_dict()
    return VideoLlama3Config(
        text_config={**text, "tie_word_embeddings": False}, vision_config={k: vision[k] for k in VISION_FIELDS if k in vision},
        image_token_id=image_token_id, video_token_id=video_token_id, tie_word_embeddings=False,
    )  # fmt: skip


def original_config(config, use_token_compression: bool = True) -> dict:
    """The official config.json for a ``VideoLlama3Config`` (the inverse of ``hf_config``)."""
    fields = _qwen2_fields()
    skip = {"rope_parameters", "tie_word_embeddings"}
    text = {k: v for k, v in config.text_config.to_dict().items() if k in fields and k not in skip}
    rope = config.text_config.rope_parameters
    vision = config.vision_config.to_dict()
    return dict(
        architectures=["Videollama3Qwen2ForCausalLM"], model_type="videollama3_qwen2",
        auto_map={"AutoConfig": "configuration_videollama3.Videollama3Qwen2Config",
                  "AutoModelForCausalLM": "modeling_videollama3.Videollama3Qwen2ForCausalLM"},
        **text, rope_theta=rope["rope_theta"], rope_scaling=None, tie_word_embeddings=False,
        vision_encoder=None, vision_encoder_config={"model_type": "videollama3_vision_encoder",
                                                     **{k: vision[k] for k in VISION_FIELDS}},
        mm_projector_type="mlp2x_gelu", mm_hidden_size=config.vision_config.hidden_size,
        use_token_compression=use_token_compression, image_token_index=config.video_token_id, torch_dtype="float32",
    )  # fmt: skip


def _processor(path: Path, config, tokenizer):
    from transformers import VideoLlama3ImageProcessor, VideoLlama3Processor, VideoLlama3VideoProcessor

    file = path / "preprocessor_config.json"
    pre = json.loads(file.read_text()) if file.exists() else {}
    patch = pre.get("patch_size", config.vision_config.patch_size)
    common = dict(image_mean=pre.get("image_mean", OPENAI_CLIP_MEAN), image_std=pre.get("image_std", OPENAI_CLIP_STD))
    tokens = dict(min_tokens=pre.get("min_tokens", 16), max_tokens=pre.get("max_tokens", 16384))
    return VideoLlama3Processor(
        image_processor=VideoLlama3ImageProcessor(**vl3_sizes(patch, 1, **tokens, **common)),
        video_processor=VideoLlama3VideoProcessor(**vl3_sizes(patch, 2, **tokens, **common), do_sample_frames=False,
                                                  use_token_compression=False),
        tokenizer=tokenizer, chat_template=CHAT_TEMPLATE,
    )  # fmt: skip


def load_videollama3_official(path, dtype=None, strict: bool = True, **hf_kwargs):
    """(``VideoLlama3ForConditionalGeneration`` in eval mode with eager attention, ``VideoLlama3Processor``
    with ``<image>`` as its video token and token compression off) for an official folder."""
    from transformers import VideoLlama3ForConditionalGeneration

    path = Path(path)
    raw = json.loads((path / "config.json").read_text())
    tokenizer = plain_tokenizer(path, extra_special_tokens={"video_token": OFFICIAL_IMAGE_TOKEN})
    video_id = tokenizer.convert_tokens_to_ids(OFFICIAL_IMAGE_TOKEN)
    if video_id in (None, tokenizer.unk_token_id):
        raise checkpoint_error(f"the tokenizer of {path} has no {OFFICIAL_IMAGE_TOKEN} token; VideoLLaMA3 prompts need it")
    if raw.get("image_token_index", video_id) != video_id:
        raise checkpoint_error(f"{path}: image_token_index {raw['image_token_index']} is not the tokenizer's "
                     f"{OFFICIAL_IMAGE_TOKEN} ({video_id})")  # fmt: skip
    image_id = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    config = hf_config(raw, video_id if image_id in (None, tokenizer.unk_token_id) else image_id, video_id)
    tensors = convert_keys(read_weights(path), RULES)
    embed = tensors.get("model.language_model.embed_tokens.weight")
    if "lm_head.weight" not in tensors and raw.get("tie_word_embeddings") and embed is not None:
        tensors["lm_head.weight"] = embed  # a tied LM (e.g. the 2B's Qwen2.5-1.5B) stores no head
    model = load_converted(VideoLlama3ForConditionalGeneration, config, tensors, path, dtype, strict, **hf_kwargs)
    return model, _processor(path, config, tokenizer)


def save_videollama3_official(model, path) -> Path:
    """Rewrite a saved ``VideoLlama3ForConditionalGeneration`` folder into the official layout: its
    config.json, weight names and preprocessor_config.json (tokenizer files stay)."""
    from safetensors.torch import save_file

    path = Path(path)
    saved = path / "processor_config.json"  # the transformers processor's settings, replaced below
    video = json.loads(saved.read_text()).get("video_processor", {}) if saved.exists() else {}
    (path / "config.json").write_text(json.dumps(original_config(model.config), indent=2))
    patch, factor = model.config.vision_config.patch_size, model.config.vision_config.patch_size * 2
    size = video.get("size", {})
    pre = dict(image_processor_type="Videollama3ImageProcessor", processor_class="Videollama3Processor",
               auto_map={"AutoImageProcessor": "image_processing_videollama3.Videollama3ImageProcessor",
                         "AutoProcessor": "processing_videollama3.Videollama3Processor"},
               image_mean=video.get("image_mean", OPENAI_CLIP_MEAN), image_std=video.get("image_std", OPENAI_CLIP_STD),
               patch_size=patch, min_tokens=size.get("shortest_edge", 16 * factor**2) // factor**2,
               max_tokens=size.get("longest_edge", 16384 * factor**2) // factor**2, do_resize=True, do_rescale=True,
               rescale_factor=1 / 255, do_normalize=True, do_convert_rgb=True, resample=3)  # fmt: skip
    for file in [*path.glob("model*.safetensors*"), *(path / n for n in ("processor_config.json",
                 "video_preprocessor_config.json", "chat_template.jinja", "chat_template.json", "generation_config.json"))]:
        file.unlink(missing_ok=True)  # fmt: skip
    (path / "preprocessor_config.json").write_text(json.dumps(pre, indent=2))
    tokenizer_file = path / "tokenizer_config.json"
    if tokenizer_file.exists():  # the official tokenizer does not name a video token; the loader sets it
        tokenizer = json.loads(tokenizer_file.read_text())
        tokenizer.pop("extra_special_tokens", None)
        tokenizer_file.write_text(json.dumps(tokenizer, indent=2))
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(convert_keys(state, RULES, reverse=True), str(path / "model.safetensors"), metadata={"format": "pt"})
    return path
