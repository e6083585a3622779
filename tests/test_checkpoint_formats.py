"""Checkpoint layouts transformers does not load, converted on load: InternVL-chat (the paper's
Mini-InternVL, Phi-3 LM; InternLM2 LMs) and the official VideoLLaMA3 release; the released InternVL
preprocessing; and the word coverage of the family builders' tokenizers."""

import json
import shutil
from itertools import groupby

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import MistralConfig, MistralForCausalLM, Phi3Config, Phi3ForCausalLM

from hooked_video import load_video, save_video
from hooked_video.model.loading import CheckpointError, load_checkpoint
from hooked_video.model.formats.internvl_chat import LM_RULES, convert_keys, save_internvl_chat, text_config
from hooked_video.model.formats.internvl_chat_processing import (
    IMAGENET_MEAN, IMAGENET_STD, InternVLChatProcessor, released_image_processor,
)  # fmt: skip
from hooked_video.model.formats.videollama3_official import save_videollama3_official
from hooked_video.zoo.tiny import BASE_WORDS, BUILDERS, TinySizes, word_level_tokenizer
from hooked_video.zoo.tiny_families import internvl_chat

SIZES = TinySizes(n_layers=2)
#: The paper's Mini-InternVL prompt (conv_eval_mvbench_phi3): one <img> block for the whole video.
PAPER_PROMPT = ("Carefully watch the video . <|user|>\n<img><IMG_CONTEXT></img>\n <|user|>\nwhich way does the ball "
                "move ? \nOnly give the best option . <|assistant|>\nBest option : (")  # fmt: skip
MESSAGE = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "what is in this video ?"}]}]


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """8 real decoded frames (mp4 written and read back), 48 x 64: not square."""
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (8, 48, 64, 3), dtype=np.uint8)
    return load_video(save_video(frames, tmp_path_factory.mktemp("video") / "clip.mp4"), num_frames=8)


def save_layout(tmp_path, builder, writer, **writer_kwargs):
    """A builder's model and processor saved as build_tiny does, then rewritten by ``writer``."""
    torch.manual_seed(0)
    model, processor = builder(SIZES, list(BASE_WORDS))
    model.eval().save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    writer(model, tmp_path, **writer_kwargs)
    return model, processor, tmp_path


@pytest.fixture(scope="module")
def mini_internvl(tmp_path_factory):
    return save_layout(tmp_path_factory.mktemp("mini-internvl"), internvl_chat, save_internvl_chat)


def logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def original_internvl_logits(path, inputs):
    """The released InternVL-chat forward written out from the original-layout tensors: InternViT
    (fused qkv, layer scales), pixel shuffle v2, mlp1, features spliced in order, Phi-3 (fused)."""
    tensors, config = load_file(str(path / "model.safetensors")), json.loads((path / "config.json").read_text())
    vision, llm = config["vision_config"], dict(config["llm_config"])
    llm["rope_scaling"] = {**llm["rope_scaling"], "original_max_position_embeddings": llm["original_max_position_embeddings"]}
    t = lambda name: tensors["vision_model." + name]  # noqa: E731
    x = F.conv2d(inputs["pixel_values"], t("embeddings.patch_embedding.weight"), t("embeddings.patch_embedding.bias"),
                 stride=vision["patch_size"]).flatten(2).transpose(1, 2)  # fmt: skip
    frames, width, heads = x.shape[0], x.shape[-1], vision["num_attention_heads"]
    x = torch.cat([t("embeddings.class_embedding").expand(frames, 1, -1), x], 1) + t("embeddings.position_embedding")
    for layer in range(vision["num_hidden_layers"]):
        p = lambda name: t(f"encoder.layers.{layer}.{name}")  # noqa: E731
        h = F.layer_norm(x, (width,), p("norm1.weight"), p("norm1.bias"), 1e-6)
        q, k, v = F.linear(h, p("attn.qkv.weight"), p("attn.qkv.bias")).unflatten(-1, (3, heads, -1)).permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5).softmax(-1) @ v
        x = x + F.linear(attn.transpose(1, 2).flatten(2), p("attn.proj.weight"), p("attn.proj.bias")) * p("ls1")
        h = F.layer_norm(x, (width,), p("norm2.weight"), p("norm2.bias"), 1e-6)
        h = F.linear(F.gelu(F.linear(h, p("mlp.fc1.weight"), p("mlp.fc1.bias"))), p("mlp.fc2.weight"), p("mlp.fc2.bias"))
        x = x + h * p("ls2")
    side = int((x.shape[1] - 1) ** 0.5)
    grid = x[:, 1:].reshape(frames, side, side // 2, 2 * width).permute(0, 2, 1, 3)  # the released pixel_shuffle
    grid = grid.reshape(frames, side // 2, side // 2, 4 * width).permute(0, 2, 1, 3).flatten(1, 2)  # v2: back
    m = lambda i, name: tensors[f"mlp1.{i}.{name}"]  # noqa: E731
    feats = F.layer_norm(grid, (4 * width,), m(0, "weight"), m(0, "bias"), 1e-5)
    feats = F.linear(F.gelu(F.linear(feats, m(1, "weight"), m(1, "bias"))), m(3, "weight"), m(3, "bias"))
    phi3 = Phi3ForCausalLM._from_config(Phi3Config(**llm), attn_implementation="eager").eval()
    phi3.load_state_dict({k.removeprefix("language_model."): v for k, v in tensors.items() if k.startswith("language_model.")})
    ids = inputs["input_ids"]
    with torch.no_grad():
        embeds = phi3.model.embed_tokens(ids)
        embeds[ids == _context_id(path)] = feats.reshape(-1, feats.shape[-1])  # frame-major, row-major
        return phi3(inputs_embeds=embeds).logits


def _context_id(path):
    return json.loads((path / "tokenizer.json").read_text())["model"]["vocab"]["<IMG_CONTEXT>"]


# ----- (a) InternVL-chat layout ------------------------------------------------------------------
def test_internvl_chat_layout_loads_equal(mini_internvl, video):
    built, _, path = mini_internvl
    config = json.loads((path / "config.json").read_text())
    keys = set(load_file(str(path / "model.safetensors")))
    assert config["model_type"] == "internvl_chat" and config["llm_config"]["architectures"] == ["Phi3ForCausalLM"]
    assert {"vision_model.encoder.layers.0.attn.qkv.weight", "mlp1.1.weight", "language_model.lm_head.weight",
            "language_model.model.layers.0.self_attn.qkv_proj.weight",
            "language_model.model.layers.0.mlp.gate_up_proj.weight"} <= keys  # fmt: skip
    model, processor = load_checkpoint(path)
    assert isinstance(processor, InternVLChatProcessor) and model.config.text_config.model_type == "mistral"
    assert model.config._attn_implementation == "eager" and not model.training
    inputs = processor(text=PAPER_PROMPT, videos=[video], return_tensors="pt")
    ids = inputs["input_ids"][0].tolist()
    context = processor.tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    assert ids[0] == processor.tokenizer.convert_tokens_to_ids("<s>") and processor.tokenizer.unk_token_id not in ids
    assert ids.count(context) == 8 * model.config.image_seq_length  # one <img> block, T * n context tokens
    assert inputs["pixel_values"].shape == (8, 3, SIZES.image_size, SIZES.image_size)
    got = logits(model, inputs)
    assert torch.allclose(got, logits(built, inputs), atol=1e-5)
    assert torch.allclose(got, original_internvl_logits(path, inputs), atol=1e-5)


# ----- (b) Phi-3 as Mistral ------------------------------------------------------------------------
def test_phi3_as_mistral_equals_phi3_short_and_long():
    half = 8
    llm = dict(architectures=["Phi3ForCausalLM"], model_type="phi3", vocab_size=60, hidden_size=64, intermediate_size=96,
               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
               original_max_position_embeddings=16, sliding_window=24, rms_norm_eps=1e-5, rope_theta=10000.0,
               rope_scaling={"type": "su", "short_factor": [1.0 + 0.05 * i for i in range(half)],
                             "long_factor": [1.0 + 1.5 * i for i in range(half)]},
               bos_token_id=1, eos_token_id=2, pad_token_id=0)  # fmt: skip
    reference = {**llm, "rope_scaling": {**llm["rope_scaling"], "original_max_position_embeddings": 16}}
    torch.manual_seed(0)
    phi3 = Phi3ForCausalLM._from_config(Phi3Config(**reference), attn_implementation="eager").eval()
    with torch.no_grad():
        for param in phi3.parameters():
            param.normal_(0, 0.2)
    config = MistralConfig(**text_config(llm))
    tensors = convert_keys({"language_model." + k: v for k, v in phi3.state_dict().items()}, LM_RULES["phi3"], config)
    mistral = MistralForCausalLM._from_config(config, attn_implementation="eager").eval()
    mistral.load_state_dict({k.replace("model.language_model.", "model."): v for k, v in tensors.items()})
    assert {"q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"} <= {n.split(".")[-1] for n, _ in mistral.named_modules()}
    rope = mistral.model.rotary_emb
    for length in (10, 40):  # shorter and longer than original_max_position_embeddings (16)
        ids = torch.randint(0, 60, (1, length), generator=torch.Generator().manual_seed(length))
        assert torch.allclose(logits(mistral, {"input_ids": ids}), logits(phi3, {"input_ids": ids}), atol=1e-5)
        factors = llm["rope_scaling"]["long_factor" if length > 16 else "short_factor"]
        expected = 1.0 / (torch.tensor(factors) * 10000.0 ** (torch.arange(0, 16, 2).float() / 16))
        assert torch.allclose(rope.inv_freq, expected)  # the long factors were used past 16 positions
    assert rope.attention_scaling == pytest.approx((1 + np.log(128 / 16) / np.log(16)) ** 0.5)


# ----- (c) InternLM2 layout ------------------------------------------------------------------------
def test_internlm2_layout_loads_equal(tmp_path, video):
    built, _, path = save_layout(tmp_path, lambda s, w: internvl_chat(s, w, llm="internlm2"), save_internvl_chat,
                                 llm="internlm2")  # fmt: skip
    tensors = load_file(str(path / "model.safetensors"))
    assert "language_model.model.layers.0.attention.wqkv.weight" in tensors and "language_model.output.weight" in tensors
    model, processor = load_checkpoint(path)
    assert model.config.text_config.model_type == "llama" and model.config.text_config.rope_parameters["rope_type"] == "dynamic"
    inputs = processor(text=PAPER_PROMPT, videos=[video], return_tensors="pt")
    assert torch.allclose(logits(model, inputs), logits(built, inputs), atol=1e-5)
    # InternLM2's attention reads wqkv as (kv heads, G + 2, head_dim): query head h * G + g pairs with kv head h
    text = model.config.text_config
    x = torch.randn(3, text.hidden_size)
    kv, dim, groups = text.num_key_value_heads, text.head_dim, text.num_attention_heads // text.num_key_value_heads
    qkv = (x @ tensors["language_model.model.layers.1.attention.wqkv.weight"].T).view(3, kv, groups + 2, dim)
    attn = model.model.language_model.layers[1].self_attn
    assert torch.allclose(attn.q_proj(x).view(3, kv, groups, dim), qkv[:, :, :groups], atol=1e-6)
    assert torch.allclose(attn.k_proj(x).view(3, kv, dim), qkv[:, :, -2], atol=1e-6)
    assert torch.allclose(attn.v_proj(x).view(3, kv, dim), qkv[:, :, -1], atol=1e-6)


# ----- (d) official VideoLLaMA3 layout -----------------------------------------------------------
def test_videollama3_official_layout_loads_equal(tmp_path, video):
    built, built_processor, path = save_layout(tmp_path, BUILDERS["videollama3_official"], save_videollama3_official)
    config = json.loads((path / "config.json").read_text())
    keys = set(load_file(str(path / "model.safetensors")))
    assert config["model_type"] == "videollama3_qwen2" and "vision_encoder_config" in config
    assert {"model.vision_encoder.post_layernorm.weight", "model.mm_projector.readout.0.weight", "model.embed_tokens.weight",
            "model.layers.0.self_attn.q_proj.bias", "model.norm.weight", "lm_head.weight"} <= keys  # fmt: skip
    model, processor = load_checkpoint(path)
    image = processor.tokenizer.convert_tokens_to_ids("<image>")
    assert processor.video_token == "<image>" and model.config.video_token_id == config["image_token_index"] == image
    still = np.repeat(video[:1], 4, axis=0)  # identical frames: compression would drop tokens
    prompt = processor.apply_chat_template(MESSAGE, add_generation_prompt=True, tokenize=False)
    metadata = [{"total_num_frames": 8, "fps": 2.0, "frames_indices": [0, 2, 4, 6]}]
    inputs = processor(text=prompt, videos=[still], video_metadata=metadata, return_tensors="pt")
    assert bool(inputs["video_compression_mask"].all())  # token compression off, as the paper runs it
    tokens = [f"{t}x{len(list(run))}" for t, run in groupby(processor.tokenizer.convert_ids_to_tokens(inputs["input_ids"][0]))]
    frame = f"<image>x{inputs['video_compression_mask'].numel() // 4}"
    layout = [*"Time 0 . 0s :".split(), frame, ",", *"Time 1 . 0s :".split(), frame, ",",
              *"Time 2 . 0s :".split(), frame, ",", *"Time 3 . 0s :".split(), frame]  # t = index / fps  # fmt: skip
    assert [t.removesuffix("x1") for t in tokens[3 : 3 + len(layout)]] == layout and tokens[3 + len(layout)] == "\nx1"
    built_inputs = built_processor(text=prompt, videos=[still], video_metadata=metadata, return_tensors="pt")
    assert torch.equal(inputs["input_ids"], built_inputs["input_ids"])
    assert torch.equal(inputs["pixel_values_videos"], built_inputs["pixel_values_videos"])
    assert torch.allclose(logits(model, inputs), logits(built, inputs), atol=1e-5)


def test_video_llama_3_token_compression_is_switchable(video):
    model, processor = BUILDERS["video_llama_3"](SIZES, list(BASE_WORDS))
    still = np.concatenate([np.repeat(video[:1], 3, axis=0), video[1:2]])  # frames 2 and 3 repeat frame 1
    metadata = [{"total_num_frames": 4, "fps": 1.0, "frames_indices": [0, 1, 2, 3]}]
    on = processor(text="<|video_pad|> what is in this video ?", videos=[still], video_metadata=metadata, return_tensors="pt")
    off = processor(text="<|video_pad|> what is in this video ?", videos=[still], video_metadata=metadata,
                    return_tensors="pt", use_token_compression=False)  # fmt: skip
    kept = int(on["video_compression_mask"].sum())
    assert bool(off["video_compression_mask"].all()) and kept < off["video_compression_mask"].numel()
    assert on["input_ids"].shape[1] == off["input_ids"].shape[1] - off["video_compression_mask"].numel() + kept
    assert logits(model.eval(), on).shape[1] == on["input_ids"].shape[1]


# ----- (e) strict loading ------------------------------------------------------------------------
def test_missing_layer_is_refused_unless_not_strict(mini_internvl, tmp_path, video):
    built, _, source = mini_internvl
    path = shutil.copytree(source, tmp_path / "broken")
    tensors = load_file(str(path / "model.safetensors"))
    save_file({k: v for k, v in tensors.items() if ".layers.1." not in k}, str(path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(path)
    with pytest.warns(UserWarning, match="missing"):
        model, processor = load_checkpoint(path, strict=False)
    inputs = processor(text=PAPER_PROMPT, videos=[video], return_tensors="pt")
    assert torch.isfinite(logits(model, inputs)).all()


# ----- (f) released preprocessing ----------------------------------------------------------------
def released_pixels(frames, size):
    """The released InternVL preprocessing re-computed with PIL: PllavaProcessor.resize_crop_longshort
    (short side to max(size, min(short, int(min(640, long) / ratio))), bicubic), then the CLIP image
    processor (short side to size, bicubic; centre crop; /255; ImageNet mean/std)."""
    height, width = frames.shape[1:3]
    ratio = max(height, width) / min(height, width)
    short = max(min(min(height, width), int(min(640, max(height, width)) / ratio)), size)
    out = []
    for frame in frames:
        image = Image.fromarray(frame)
        for target in (short, size):
            w, h = image.size
            long = int(target * max(w, h) / min(w, h))
            image = image.resize((target, long) if w <= h else (long, target), Image.BICUBIC)
        array = np.asarray(image).astype(np.float32) / 255
        top, left = (array.shape[0] - size) // 2, (array.shape[1] - size) // 2
        array = (array[top : top + size, left : left + size] - IMAGENET_MEAN) / IMAGENET_STD
        out.append(array.transpose(2, 0, 1))
    return torch.tensor(np.stack(out), dtype=torch.float32)


def test_processor_matches_released_preprocessing():
    tok = word_level_tokenizer(["a"], ["<unk>", "<pad>", "<img>", "</img>", "<IMG_CONTEXT>"])
    processor = InternVLChatProcessor(image_processor=released_image_processor(448), tokenizer=tok, image_seq_length=256)
    ys, xs = np.mgrid[0:560, 0:700]
    smooth = np.stack([(xs * 255 // 700), (ys * 255 // 560), (xs + ys) % 256], -1).astype(np.uint8)
    frames = np.stack([smooth, np.random.default_rng(1).integers(0, 256, (560, 700, 3), dtype=np.uint8)])
    inputs = processor(text="a <img><IMG_CONTEXT></img>", videos=[frames], return_tensors="pt")
    assert inputs["pixel_values"].shape == (2, 3, 448, 448)  # 560 x 700 -> 512 x 640 -> 448 x 560 -> crop
    assert torch.allclose(inputs["pixel_values"], released_pixels(frames, 448), atol=1e-5)
    assert inputs["input_ids"][0].tolist().count(tok.convert_tokens_to_ids("<IMG_CONTEXT>")) == 2 * 256


# ----- (g) ps_version ----------------------------------------------------------------------------
@pytest.mark.parametrize("version", ["v1", None])
def test_ps_version_v1_is_refused(mini_internvl, tmp_path, version):
    path = shutil.copytree(mini_internvl[2], tmp_path / "v1")
    config = json.loads((path / "config.json").read_text())
    config.pop("ps_version") if version is None else config.update(ps_version=version)
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="ps_version.*v1"):
        load_checkpoint(path)


# ----- tokenizers of the family builders ---------------------------------------------------------
@pytest.mark.parametrize("arch", ["internvl", "video_llama_3", "qwen3_vl", "internvl_chat", "videollama3_official"])
def test_family_prompts_have_no_unknown_words(arch, video):
    _, processor = BUILDERS[arch](SIZES, list(BASE_WORDS))
    kwargs = {"video_metadata": [{"total_num_frames": 80, "fps": 2.0, "frames_indices": list(range(0, 80, 10))}]}
    if arch.startswith("internvl"):
        kwargs = {}
    prompt = processor.apply_chat_template(MESSAGE, add_generation_prompt=True, tokenize=False)
    ids = processor(text=prompt, videos=[video], return_tensors="pt", **kwargs)["input_ids"][0].tolist()
    assert processor.tokenizer.unk_token_id not in ids
