"""InternVL-chat checkpoints (OpenGVLab's original layout, model_type ``internvl_chat``; the paper's
Mini-InternVL-Chat-4B-V1-5) loaded onto transformers' ``InternVLForConditionalGeneration`` at load
time, without remote code.

The vision side (InternViT of any size, the qk-norm of the 6B included) and the ``mlp1`` projector
map 1:1, with the fused ``attn.qkv`` split in three; only ``ps_version`` "v2" (InternVL >= 1.5) is
the pixel shuffle transformers implements. Language models covered:

- ``Phi3ForCausalLM`` (Mini-InternVL-Chat-4B): stored as ``MistralForCausalLM`` weights, with the
  fused ``qkv_proj`` / ``gate_up_proj`` split into q/k/v and gate/up. Mistral is Phi-3 with
  separate projections: the same decoder layer, RMSNorm, SiLU-gated MLP, untied head, a
  ``sliding_window`` and any rotary scaling (the Phi-3 "su"/"longrope" factors move into
  ``rope_parameters`` with ``original_max_position_embeddings``; Phi-3 "yarn" keeps its
  0.1 ln(s) + 1 attention factor); Llama has no sliding window. Partial rotary is refused.
- ``Qwen2ForCausalLM`` and ``LlamaForCausalLM``: 1:1.
- ``InternLM2ForCausalLM``: ``LlamaForCausalLM`` (``wqkv`` rows are grouped per KV head as
  (kv heads, G + 2, head_dim): G query heads, then k, then v; "dynamic"/"linear" rope scaling map
  to Llama's). Its tokenizer is remote code; the loader says what to do if it does not load.
"""

from __future__ import annotations

import json
import math
from pathlib import Path


from hooked_video.model.formats.conversion import (
    META_KEYS, checkpoint_error, convert_keys, load_converted, plain_tokenizer, read_weights,
)  # fmt: skip
from hooked_video.model.formats.internvl_chat_processing import (
    CHATML_TEMPLATE, CONTEXT_TOKEN, PHI3_CHAT_TEMPLATE, InternVLChatProcessor, released_image_processor,
)  # fmt: skip

#: Language-model architecture -> the name this module uses for it.
LANGUAGE_MODELS = {"Phi3ForCausalLM": "phi3", "Qwen2ForCausalLM": "qwen2", "LlamaForCausalLM": "llama",
                   "InternLM2ForCausalLM": "internlm2"}  # fmt: skip
def is_internvl_chat(config: dict) -> bool:
    """The original InternVL-chat layout (a raw config.json dict)."""
    return config.get("model_type") == "internvl_chat"


def language_model(config: dict) -> str:
    """"phi3", "qwen2", "llama" or "internlm2": the LM of a raw InternVL-chat config."""
    arch = (config.get("llm_config", {}).get("architectures") or [None])[0]
    if arch not in LANGUAGE_MODELS:
        raise checkpoint_error(f"InternVL-chat checkpoints with language model {arch!r} are not supported; "
                               f"supported: {sorted(LANGUAGE_MODELS)}")  # fmt: skip
    return LANGUAGE_MODELS[arch]


# ----- configs -----------------------------------------------------------------------------------
def _phi3_as_mistral(llm: dict) -> dict:
    from transformers import Phi3Config

    llm = {k: v for k, v in llm.items() if k not in META_KEYS}
    scaling = dict(llm.get("rope_scaling") or {})
    kind = scaling.get("type", scaling.get("rope_type"))
    if scaling:  # transformers 5 wants the original length inside the rope dict
        scaling.setdefault("original_max_position_embeddings", llm.get("original_max_position_embeddings", 4096))
        llm["rope_scaling"] = scaling
    phi = Phi3Config(**llm)
    rope = dict(phi.rope_parameters)
    rope.pop("type", None)
    if float(rope.pop("partial_rotary_factor", 1.0) or 1.0) != 1.0:
        raise checkpoint_error("Phi-3 language models with partial rotary embeddings are not supported")
    if kind == "yarn":  # Phi-3's yarn variant scales cos/sin by 0.1 ln(s) + 1
        scale = phi.max_position_embeddings / rope["original_max_position_embeddings"]
        rope.setdefault("attention_factor", 0.1 * math.log(scale) + 1.0 if scale > 1 else 1.0)
    keep = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "hidden_act", "max_position_embeddings", "rms_norm_eps", "sliding_window",
            "attention_dropout", "bos_token_id", "eos_token_id", "pad_token_id", "initializer_range")  # fmt: skip
    return dict(model_type="mistral", head_dim=phi.hidden_size // phi.num_attention_heads, rope_parameters=rope,
                tie_word_embeddings=False, **{k: getattr(phi, k) for k in keep})  # fmt: skip


def _internlm2_as_llama(llm: dict) -> dict:
    scaling = llm.get("rope_scaling") or {}
    rope = {"rope_type": scaling.get("type", "default"), "rope_theta": llm.get("rope_theta", 10000.0)}
    if rope["rope_type"] not in ("default", "dynamic", "linear"):
        raise checkpoint_error(f"InternLM2 rope scaling {rope['rope_type']!r} is not supported (dynamic, linear are)")
    if rope["rope_type"] != "default":
        rope["factor"] = float(scaling["factor"])
    heads = llm.get("num_attention_heads", 32)
    return dict(
        model_type="llama", vocab_size=llm.get("vocab_size", 103168), hidden_size=llm.get("hidden_size", 4096),
        intermediate_size=llm.get("intermediate_size", 11008), num_hidden_layers=llm.get("num_hidden_layers", 32),
        num_attention_heads=heads, num_key_value_heads=llm.get("num_key_value_heads") or heads,
        hidden_act=llm.get("hidden_act", "silu"), max_position_embeddings=llm.get("max_position_embeddings", 2048),
        rms_norm_eps=llm.get("rms_norm_eps", 1e-6), attention_bias=llm.get("bias", True), mlp_bias=False,
        rope_parameters=rope, bos_token_id=llm.get("bos_token_id", 1), eos_token_id=llm.get("eos_token_id", 2),
        pad_token_id=llm.get("pad_token_id", 0), tie_word_embeddings=False,
    )  # fmt: skip


def text_config(llm: dict) -> dict:
    """The transformers text config (a dict) for a raw ``llm_config``."""
    from transformers import CONFIG_MAPPING

    kind = LANGUAGE_MODELS.get((llm.get("architectures") or [None])[0])
    if kind == "phi3":
        return _phi3_as_mistral(llm)
    if kind == "internlm2":
        return _internlm2_as_llama(llm)
    config = CONFIG_MAPPING[kind](**{k: v for k, v in llm.items() if k not in META_KEYS}).to_dict()
    return {**config, "tie_word_embeddings": False}


def hf_config(config: dict, image_token_id: int):
    """An ``InternVLConfig`` for a raw InternVL-chat config; ``image_token_id``: the ``<IMG_CONTEXT>`` id."""
    from transformers import InternVLConfig

    language_model(config)
    version = config.get("ps_version", "v1")  # the original config class defaults to "v1"
    if version != "v2":
        raise checkpoint_error(
            f"ps_version {version!r}{'' if 'ps_version' in config else ' (the default: the config names none)'}: "
            "only 'v2' checkpoints (InternVL >= 1.5) are supported; 'v1' (InternVL 1.0-1.2) shuffles pixels into a "
            "transposed grid, which transformers' InternVL does not implement"
        )
    vision = config["vision_config"]
    size = config.get("force_image_size") or vision.get("image_size", 224)
    if size != vision.get("image_size", size):
        raise checkpoint_error(f"force_image_size {size} differs from the vision tower's image_size "
                               f"{vision['image_size']}; resizing its position embeddings is not supported")  # fmt: skip
    patch = vision.get("patch_size", 14)
    ratio = config.get("downsample_ratio", 0.5)
    return InternVLConfig(
        vision_config=dict(
            hidden_size=vision.get("hidden_size", 3200), num_hidden_layers=vision.get("num_hidden_layers", 48),
            num_attention_heads=vision.get("num_attention_heads", 25),
            intermediate_size=vision.get("intermediate_size", 12800), hidden_act=vision.get("hidden_act", "gelu"),
            attention_bias=vision.get("qkv_bias", False), use_qk_norm=vision.get("qk_normalization", True),
            norm_type=vision.get("norm_type", "rms_norm"), layer_norm_eps=vision.get("layer_norm_eps", 1e-6),
            image_size=size, patch_size=patch, num_channels=vision.get("num_channels", 3), use_mean_pooling=True,
        ),
        text_config=text_config(config["llm_config"]), image_token_id=image_token_id,
        image_seq_length=int((size // patch) ** 2 * ratio**2), downsample_ratio=ratio,
        vision_feature_layer=config.get("select_layer", -1), vision_feature_select_strategy="default",
        projector_hidden_act="gelu", tie_word_embeddings=False,
    )  # fmt: skip


def _llm_config(text, llm: str) -> dict:
    """The raw ``llm_config`` for a transformers text config (the inverse of ``text_config``)."""
    base = dict(vocab_size=text.vocab_size, hidden_size=text.hidden_size, intermediate_size=text.intermediate_size,
                num_hidden_layers=text.num_hidden_layers, num_attention_heads=text.num_attention_heads,
                num_key_value_heads=text.num_key_value_heads, hidden_act=text.hidden_act,
                max_position_embeddings=text.max_position_embeddings, rms_norm_eps=text.rms_norm_eps,
                bos_token_id=text.bos_token_id, eos_token_id=text.eos_token_id, pad_token_id=text.pad_token_id,
                tie_word_embeddings=False)  # fmt: skip
    rope = dict(text.rope_parameters)
    if llm == "phi3":
        scaling = None
        if rope["rope_type"] == "longrope":
            base["original_max_position_embeddings"] = rope["original_max_position_embeddings"]
            scaling = {"type": "su", "short_factor": rope["short_factor"], "long_factor": rope["long_factor"]}
        return dict(architectures=["Phi3ForCausalLM"], model_type="phi3", rope_theta=rope["rope_theta"],
                    rope_scaling=scaling, sliding_window=text.sliding_window, resid_pdrop=0.0, embd_pdrop=0.0,
                    attention_dropout=0.0, **base)  # fmt: skip
    if llm == "internlm2":
        scaling = None if rope["rope_type"] == "default" else {"type": rope["rope_type"], "factor": rope["factor"]}
        return dict(architectures=["InternLM2ForCausalLM"], model_type="internlm2", bias=text.attention_bias,
                    rope_theta=rope["rope_theta"], rope_scaling=scaling, **base)  # fmt: skip
    arch = {"qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM"}[llm]
    return {**text.to_dict(), "architectures": [arch], "tie_word_embeddings": False}


def chat_config(vision: dict, llm_config: dict, downsample_ratio: float = 0.5, select_layer: int = -1,
                template: str = "phi3-chat") -> dict:  # fmt: skip
    """A raw InternVL-chat config.json from raw InternViT and LM configs (as the released folders hold)."""
    vision = dict(architectures=["InternVisionModel"], model_type="intern_vit_6b", use_flash_attn=False,
                  drop_path_rate=0.0, **vision)  # fmt: skip
    return dict(
        architectures=["InternVLChatModel"], model_type="internvl_chat",
        auto_map={"AutoConfig": "configuration_internvl_chat.InternVLChatConfig",
                  "AutoModel": "modeling_internvl_chat.InternVLChatModel"},
        vision_config=vision, llm_config=llm_config, downsample_ratio=downsample_ratio, select_layer=select_layer,
        ps_version="v2", template=template, force_image_size=vision["image_size"], dynamic_image_size=False,
        use_thumbnail=False, max_dynamic_patch=6, min_dynamic_patch=1, pad2square=False, use_backbone_lora=0,
        use_llm_lora=0, torch_dtype="float32",
    )  # fmt: skip


def _side(value) -> int:
    """A square side from an int or an (H, W) pair."""
    return int(value[0] if isinstance(value, (list, tuple)) else value)


def original_config(config, llm: str, template: str = "phi3-chat") -> dict:
    """The raw InternVL-chat config.json for an ``InternVLConfig`` (the inverse of ``hf_config``)."""
    vision = config.vision_config
    fields = dict(hidden_size=vision.hidden_size, num_hidden_layers=vision.num_hidden_layers,
                  num_attention_heads=vision.num_attention_heads, intermediate_size=vision.intermediate_size,
                  hidden_act=vision.hidden_act, qkv_bias=vision.attention_bias, qk_normalization=vision.use_qk_norm,
                  norm_type=vision.norm_type, layer_norm_eps=vision.layer_norm_eps, image_size=_side(vision.image_size),
                  patch_size=_side(vision.patch_size), num_channels=vision.num_channels)  # fmt: skip
    return chat_config(fields, _llm_config(config.text_config, llm), config.downsample_ratio,
                       config.vision_feature_layer, template)  # fmt: skip


# ----- weights -----------------------------------------------------------------------------------
#: (original, transformers) key-prefix templates; ``{n}`` is a layer index, a tuple names the parts a
#: fused tensor splits into, with the split kind last.
VISION_RULES = [
    ("vision_model.embeddings.class_embedding", "model.vision_tower.embeddings.cls_token"),
    ("vision_model.embeddings.position_embedding", "model.vision_tower.embeddings.position_embeddings"),
    ("vision_model.embeddings.patch_embedding.", "model.vision_tower.embeddings.patch_embeddings.projection."),
    ("vision_model.encoder.layers.{n}.attn.qkv.", ("model.vision_tower.encoder.layer.{n}.attention.q_proj.",
     "model.vision_tower.encoder.layer.{n}.attention.k_proj.", "model.vision_tower.encoder.layer.{n}.attention.v_proj.",
     "thirds")),
    ("vision_model.encoder.layers.{n}.attn.proj.", "model.vision_tower.encoder.layer.{n}.attention.projection_layer."),
    ("vision_model.encoder.layers.{n}.attn.", "model.vision_tower.encoder.layer.{n}.attention."),
    ("vision_model.encoder.layers.{n}.norm1.", "model.vision_tower.encoder.layer.{n}.layernorm_before."),
    ("vision_model.encoder.layers.{n}.norm2.", "model.vision_tower.encoder.layer.{n}.layernorm_after."),
    ("vision_model.encoder.layers.{n}.ls1", "model.vision_tower.encoder.layer.{n}.lambda_1"),
    ("vision_model.encoder.layers.{n}.ls2", "model.vision_tower.encoder.layer.{n}.lambda_2"),
    ("vision_model.encoder.layers.{n}.mlp.", "model.vision_tower.encoder.layer.{n}.mlp."),
    ("mlp1.0.", "model.multi_modal_projector.layer_norm."),
    ("mlp1.1.", "model.multi_modal_projector.linear_1."),
    ("mlp1.3.", "model.multi_modal_projector.linear_2."),
]  # fmt: skip
_LM = "model.language_model.layers.{n}."
_PLAIN_LM = [("language_model.model.", "model.language_model."), ("language_model.lm_head.", "lm_head.")]
LM_RULES = {
    "phi3": [
        ("language_model.model.layers.{n}.self_attn.qkv_proj.",
         (_LM + "self_attn.q_proj.", _LM + "self_attn.k_proj.", _LM + "self_attn.v_proj.", "qkv")),
        ("language_model.model.layers.{n}.mlp.gate_up_proj.", (_LM + "mlp.gate_proj.", _LM + "mlp.up_proj.", "halves")),
        *_PLAIN_LM,
    ],
    "qwen2": _PLAIN_LM,
    "llama": _PLAIN_LM,
    "internlm2": [
        ("language_model.model.tok_embeddings.", "model.language_model.embed_tokens."),
        ("language_model.model.layers.{n}.attention.wqkv.",
         (_LM + "self_attn.q_proj.", _LM + "self_attn.k_proj.", _LM + "self_attn.v_proj.", "grouped")),
        ("language_model.model.layers.{n}.attention.wo.", _LM + "self_attn.o_proj."),
        ("language_model.model.layers.{n}.feed_forward.w1.", _LM + "mlp.gate_proj."),
        ("language_model.model.layers.{n}.feed_forward.w3.", _LM + "mlp.up_proj."),
        ("language_model.model.layers.{n}.feed_forward.w2.", _LM + "mlp.down_proj."),
        ("language_model.model.layers.{n}.attention_norm.", _LM + "input_layernorm."),
        ("language_model.model.layers.{n}.ffn_norm.", _LM + "post_attention_layernorm."),
        ("language_model.model.", "model.language_model."),
        ("language_model.output.", "lm_head."),
    ],
}  # fmt: skip


def _tokenizer(path: Path, llm: str):
    try:
        tokenizer = plain_tokenizer(path)
    except (OSError, ValueError, ImportError, KeyError, AttributeError) as err:
        raise checkpoint_error(
            f"{path}: the tokenizer of this InternVL-chat checkpoint ({llm} language model) does not load without "
            f"remote code ({str(err).splitlines()[0][:160]}). Save a transformers tokenizer into the folder "
            "(a tokenizer.json, e.g. converted once with trust_remote_code=True and save_pretrained) and load again."
        ) from err
    if tokenizer.convert_tokens_to_ids(CONTEXT_TOKEN) in (None, tokenizer.unk_token_id):
        raise checkpoint_error(f"the tokenizer of {path} has no {CONTEXT_TOKEN} token; InternVL-chat prompts need it")
    if tokenizer.bos_token_id is not None and tokenizer("a")["input_ids"][:1] == [tokenizer.bos_token_id]:
        tokenizer.add_bos_token = True  # say what it does (TransformerLens reloads tokenizers that do not)
    return tokenizer


def load_internvl_chat(path, dtype=None, strict: bool = True, **hf_kwargs):
    """(``InternVLForConditionalGeneration`` in eval mode with eager attention, ``InternVLChatProcessor``)
    for an InternVL-chat folder."""
    from transformers import InternVLForConditionalGeneration

    path = Path(path)
    raw = json.loads((path / "config.json").read_text())
    llm = language_model(raw)
    tokenizer = _tokenizer(path, llm)
    config = hf_config(raw, tokenizer.convert_tokens_to_ids(CONTEXT_TOKEN))
    tensors = convert_keys(read_weights(path), VISION_RULES + LM_RULES[llm], config.text_config)
    embed = tensors.get("model.language_model.embed_tokens.weight")
    if "lm_head.weight" not in tensors and raw["llm_config"].get("tie_word_embeddings") and embed is not None:
        tensors["lm_head.weight"] = embed  # a tied LM (e.g. Qwen2-0.5B) stores no head
    model = load_converted(InternVLForConditionalGeneration, config, tensors, path, dtype, strict, **hf_kwargs)
    processor = InternVLChatProcessor(
        image_processor=released_image_processor(_side(config.vision_config.image_size)), tokenizer=tokenizer,
        image_seq_length=config.image_seq_length, chat_template=PHI3_CHAT_TEMPLATE if llm == "phi3" else CHATML_TEMPLATE,
    )  # fmt: skip
    return model, processor


def save_internvl_chat(model, path, llm: str | None = None) -> Path:
    """Rewrite a saved ``InternVLForConditionalGeneration`` folder into the InternVL-chat layout
    (config.json, original weight names); ``llm`` defaults from the text model (mistral -> "phi3").
    Tokenizer files stay; the transformers processor files go (the released folders have none)."""
    from safetensors.torch import save_file

    path = Path(path)
    llm = llm or {"mistral": "phi3", "qwen2": "qwen2", "llama": "llama"}[model.config.text_config.model_type]
    template = {"phi3": "phi3-chat", "internlm2": "internlm2-chat"}.get(llm, "Hermes-2")
    config = original_config(model.config, llm, template)
    (path / "config.json").write_text(json.dumps(config, indent=2))
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    tensors = convert_keys(state, VISION_RULES + LM_RULES[llm], model.config.text_config, reverse=True)
    for file in [*path.glob("model*.safetensors*"), *(path / n for n in ("processor_config.json",
                 "preprocessor_config.json", "chat_template.jinja", "chat_template.json", "generation_config.json"))]:
        file.unlink(missing_ok=True)  # fmt: skip
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    return path
