"""The paper's models: PLLaVA-format checkpoints (released and current key layouts), the llava-v1.6
image baseline on the pooled video path, the released prompt, LoRA adapters."""

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import AutoConfig, CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

from hooked_video import HookedVideoLLM, UnsupportedArchitectureError
from hooked_video.model.loading import pllava_config
from hooked_video.model.formats import PllavaForConditionalGeneration
from hooked_video.model.prompt import PAPER_SYSTEM_PROMPT
from hooked_video.zoo.tiny import TinySizes, build_tiny
from hooked_video.zoo.tiny_paper import save_current_layout

QUESTION, OPTIONS = "what happens first ?", ["the ball falls", "the cup moves"]


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    return build_tiny("pllava", tmp_path_factory.mktemp("pllava") / "released", TinySizes(n_layers=3), seed=4)


@pytest.fixture(scope="module")
def image_model(tmp_path_factory):
    return build_tiny("llava_next_image", tmp_path_factory.mktemp("image") / "llava-v1.6", TinySizes(n_layers=3), seed=5)


def video(n=4, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def plain_pllava_logits(path, prompt, pooling, text_prefix="language_model.model.", head_key="language_model.lm_head.weight"):
    """PLLaVA's forward written out with plain torch modules and the checkpoint's tensors: CLIP
    hidden state -2 without CLS -> linear, GELU, linear -> 3D average pool -> spliced at the
    placeholders -> Llama."""
    tensors = load_file(str(path / "model.safetensors"))
    config = json.loads((path / "config.json").read_text())
    vision = CLIPVisionModel(CLIPVisionConfig(**config["vision_config"])).eval()
    prefix = "vision_tower."  # transformers 4.x adds "vision_model." below it
    vision.load_state_dict({k[len(prefix) :].removeprefix("vision_model."): v for k, v in tensors.items() if k.startswith(prefix)})
    llama = LlamaForCausalLM(LlamaConfig(**config["text_config"])).eval()
    state = {"model." + k[len(text_prefix) :]: v for k, v in tensors.items() if k.startswith(text_prefix)}
    llama.load_state_dict({**state, "lm_head.weight": tensors[head_key]})
    projector = {k.split("multi_modal_projector.")[1]: v for k, v in tensors.items() if "multi_modal_projector." in k}
    pixels = prompt.inputs["pixel_values_videos"][0]  # (frames, 3, H, W)
    with torch.no_grad():
        hidden = vision(pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
        hidden = F.linear(F.gelu(F.linear(hidden, projector["linear_1.weight"], projector["linear_1.bias"])),
                          projector["linear_2.weight"], projector["linear_2.bias"])  # fmt: skip
        side = int(hidden.shape[1] ** 0.5)
        volume = hidden.reshape(1, len(pixels), side, side, -1).permute(0, 4, 1, 2, 3)
        tokens = F.adaptive_avg_pool3d(volume, pooling).flatten(2).transpose(1, 2)[0]
        ids = prompt.input_ids
        embeds = llama.model.embed_tokens(ids)
        embeds[0, ids[0] == config["image_token_index"]] = tokens
        return llama(inputs_embeds=embeds).logits


def test_released_layout_equals_a_plain_torch_pllava(released):
    model = HookedVideoLLM.from_pretrained(released)
    prompt = model.prepare(video(), QUESTION, OPTIONS, answer=1, num_frames=None)
    assert prompt.token_map.grid_shape == (4, 2, 2) and len(prompt.token_map.video) == 16
    expected = plain_pllava_logits(released, prompt, (4, 2, 2))
    with torch.no_grad():
        torch.testing.assert_close(model(prompt), expected, atol=1e-4, rtol=0)


def test_current_layout_loads_the_same_model(released, tmp_path):
    shutil.copytree(released, tmp_path / "current")
    model = HookedVideoLLM.from_pretrained(released)
    plain = PllavaForConditionalGeneration.from_pretrained(released, config=pllava_config(AutoConfig.from_pretrained(released)))
    save_current_layout(plain, tmp_path / "current")
    keys = load_file(str(tmp_path / "current" / "model.safetensors")).keys()
    assert any(k.startswith("model.language_model.layers.") for k in keys)
    again = HookedVideoLLM.from_pretrained(tmp_path / "current")
    prompt = model.prepare(video(), QUESTION, OPTIONS, answer=0, num_frames=None)
    with torch.no_grad():
        torch.testing.assert_close(again(prompt), model(prompt), atol=0, rtol=0)


@pytest.mark.parametrize("n_frames", [4, 8])  # one frame per slot; two frames averaged per slot
def test_token_map_frames_are_the_pools_time_slices(released, n_frames):
    model = HookedVideoLLM.from_pretrained(released)
    frames = video(n_frames)
    prompt = model.prepare(frames, QUESTION, OPTIONS, answer=0, num_frames=None)
    tm = prompt.token_map
    base = model.run_with_cache(prompt, names_filter="hook_video_embeds")[1]["hook_video_embeds"][0]
    for j in range(n_frames):
        changed = frames.copy()
        changed[j] = 255 - changed[j]
        other = model.prepare(changed, QUESTION, OPTIONS, answer=0, num_frames=None)
        embeds = model.run_with_cache(other, names_filter="hook_video_embeds")[1]["hook_video_embeds"][0]
        moved = (embeds - base).abs().amax(-1) > 1e-6  # per video token, (T*h*w) in (T, H, W) order
        slot = j * tm.n_frames // n_frames
        expected = torch.zeros(len(tm.video), dtype=torch.bool)
        expected[slot * tm.tokens_per_frame : (slot + 1) * tm.tokens_per_frame] = True
        assert torch.equal(moved, expected), (j, moved.nonzero().flatten().tolist())
        assert tm.input_frames(slot) == list(range(slot * n_frames // tm.n_frames, (slot + 1) * n_frames // tm.n_frames))


def test_image_baseline_runs_video_through_the_pooled_path(image_model):
    model = HookedVideoLLM.from_pretrained(image_model, video_pooling=(4, 2, 2))
    assert type(model.hf_model).__name__ == "PllavaForConditionalGeneration"
    prompt = model.prepare(video(), QUESTION, OPTIONS, answer=0, num_frames=None)
    assert len(prompt.token_map.video) == 4 * 2 * 2
    expected = plain_pllava_logits(image_model, prompt, (4, 2, 2))
    with torch.no_grad():
        torch.testing.assert_close(model(prompt), expected, atol=1e-4, rtol=0)
    with pytest.raises(UnsupportedArchitectureError, match="video_pooling="):  # an image model needs the pooled path
        HookedVideoLLM.from_pretrained(image_model)


def test_map_the_flow_template_is_the_released_prompt(released):
    model = HookedVideoLLM.from_pretrained(released)
    prompt = model.prepare(video(), QUESTION, OPTIONS, answer=1, num_frames=None, template="map-the-flow")
    expected = (f"{PAPER_SYSTEM_PROMPT}\n USER: <image>\n USER: Question: {QUESTION}\nOptions:\n(A) {OPTIONS[0]}\n"
                f"(B) {OPTIONS[1]} \nOnly give the best option. ASSISTANT:Best option:(")  # fmt: skip
    assert prompt.text == expected
    tm = prompt.token_map
    assert prompt.str_tokens[int(tm.question[0])] == "Question"
    second_user = [i for i, t in enumerate(prompt.str_tokens) if t == "USER"][1]
    assert tm.role[second_user] == "text" and second_user < int(tm.question[0])  # untyped
    default = model.prepare(video(), QUESTION, OPTIONS, answer=1, num_frames=None)
    assert default.text == expected  # the paper's models default to the released conversation


# ----- a realistic tokenizer: Llama-style SentencePiece BPE ------------------------------------------
def sentencepiece_bpe(tmp_path):
    """A Llama-style BPE (metaspace "▁" prefix, byte fallback) trained here on prompts, so that
    merges cross "(A" and ":(" as in the paper's models."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [f"{PAPER_SYSTEM_PROMPT}\n USER: <image>\n USER: Question: {q}\nOptions:\n(A) {a}\n(B) {b} \nOnly give the "
              f"best option. ASSISTANT:Best option:({letter})"
              for q, a, b in [("what happens first ?", "the ball falls", "the cup moves"),
                              ("which way does the ball move ?", "left", "right"), ("how many objects move ?", "two", "three")]
              for letter in "AB"] * 20  # fmt: skip
    core = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    core.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=False)
    core.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                      decoders.Strip(" ", 1, 0)])  # fmt: skip
    specials = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=specials + byte_tokens, show_progress=False)
    core.train_from_iterator(corpus, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>")
    vocab = tok.get_vocab()
    assert any("(A" in t and len(t) > 2 for t in vocab) and any(":(" in t for t in vocab)  # the merges this test is about
    return tok


def covering_tokens(offsets, start, stop):
    return [i for i, (a, b) in enumerate(offsets) if b > a and a < stop and b > start]


def test_spans_and_letters_with_a_sentencepiece_bpe(tmp_path):
    from hooked_video.model.formats import PllavaProcessor
    from hooked_video.zoo import tiny_paper

    tok = sentencepiece_bpe(tmp_path)
    model, processor = tiny_paper.pllava(TinySizes(n_layers=2), [])
    processor = PllavaProcessor(image_processor=processor.image_processor, tokenizer=tok, pooling_shape=(4, 2, 2))
    model.resize_token_embeddings(len(tok))
    model.config.image_token_index = tok.convert_tokens_to_ids("<image>")
    model.save_pretrained(tmp_path / "bpe")
    processor.save_pretrained(tmp_path / "bpe")
    hooked = HookedVideoLLM.from_pretrained(tmp_path / "bpe")
    options = ["the ball falls", "the cup moves"]
    prompt = hooked.prepare(video(), QUESTION, options, answer=1, num_frames=None)
    text, tm = prompt.text, prompt.token_map
    encoded = tok(text, return_offsets_mapping=True, add_special_tokens=True)
    shift = len(tm.video) - 1  # the placeholder expands into the video tokens
    placeholder = encoded["input_ids"].index(tok.convert_tokens_to_ids("<image>"))

    def expected(substring):
        start = text.index(substring)
        tokens = covering_tokens(encoded["offset_mapping"], start, start + len(substring))
        return [t + shift if t > placeholder else t for t in tokens]

    assert tm.question.tolist() == expected(f"Question: {QUESTION}\nOptions:\n(A) {options[0]}\n(B) {options[1]}")
    assert tm.question_without_options.tolist() == expected(QUESTION)
    assert tm.true_option.tolist() == expected(f"(B) {options[1]}")
    assert tm.false_options.tolist() == expected(f"(A) {options[0]}")
    # the true option starts inside a merged piece ("\n(B)"): the span takes the whole piece
    assert "(B" in prompt.str_tokens[int(tm.true_option[0])]
    # the answer letter after "Best option:(" is the bare piece, as the model predicts it
    assert prompt.option_token_ids == [tok.convert_tokens_to_ids("A"), tok.convert_tokens_to_ids("B")]
    assert tok.convert_ids_to_tokens(prompt.input_ids[0, -1:].tolist())[0].endswith("(")


# ----- LoRA ---------------------------------------------------------------------------------------
def plain(path):
    return PllavaForConditionalGeneration.from_pretrained(path, config=pllava_config(AutoConfig.from_pretrained(path))).eval()


def test_peft_adapter_merges_on_load(released, tmp_path):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=r".*language_model.*\.(q_proj|v_proj)")
    peft_model = get_peft_model(plain(released), config)
    for name, parameter in peft_model.named_parameters():
        if "lora_B" in name:  # peft starts B at zero: give the adapter an effect
            torch.nn.init.normal_(parameter, std=0.5)
    peft_model.save_pretrained(tmp_path / "adapter")
    settings = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert settings["base_model_name_or_path"] == str(released)
    hooked = HookedVideoLLM.from_pretrained(tmp_path / "adapter")
    prompt = hooked.prepare(video(), QUESTION, OPTIONS, answer=0, num_frames=None)
    with torch.no_grad():
        expected = peft_model(**prompt.inputs).logits  # peft's own (unmerged) forward
        base = plain(released)(**prompt.inputs).logits
        torch.testing.assert_close(hooked(prompt), expected, atol=1e-4, rtol=0)
    assert not torch.allclose(expected, base, atol=1e-3)  # the adapter changes the model


def lora_adapter(released, folder, **config):
    """A peft adapter on the language model's q/v projections, with lora_B drawn so that it matters."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    peft_model = get_peft_model(plain(released), LoraConfig(target_modules=r".*language_model.*\.(q_proj|v_proj)", **config))
    for name, parameter in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.5)
    peft_model.save_pretrained(folder)
    return folder


def test_rank_and_alpha_patterns_merge_as_peft_merges(released, tmp_path):
    """Per-module ranks and alphas: the merged model equals peft's own merge_and_unload to 1e-5."""
    from peft import PeftModel

    adapter = lora_adapter(released, tmp_path / "adapter", r=4, lora_alpha=8, rank_pattern={"layers.0.self_attn.q_proj": 2},
                           alpha_pattern={"v_proj": 32})  # fmt: skip
    hooked = HookedVideoLLM.from_pretrained(adapter)
    reference = PeftModel.from_pretrained(plain(released), adapter).merge_and_unload().eval()
    prompt = hooked.prepare(video(), QUESTION, OPTIONS, answer=0, num_frames=None)
    with torch.no_grad():
        torch.testing.assert_close(hooked(prompt), reference(**prompt.inputs).logits, atol=1e-5, rtol=0)
        uniform = lora_adapter(released, tmp_path / "uniform", r=4, lora_alpha=8)
        assert not torch.allclose(HookedVideoLLM.from_pretrained(uniform)(prompt), hooked(prompt), atol=1e-3)


@pytest.mark.parametrize("config, message", [
    ({"modules_to_save": ["multi_modal_projector"]}, "modules_to_save=.*multi_modal_projector.*merge it with peft"),
    ({"use_rslora": True}, "use_rslora=True"),
])  # fmt: skip
def test_adapters_the_loader_cannot_merge_exactly_are_refused_by_name(released, tmp_path, config, message):
    adapter = lora_adapter(released, tmp_path / "adapter", r=4, lora_alpha=8, **config)
    with pytest.raises(ValueError, match=message):
        HookedVideoLLM.from_pretrained(adapter)


def test_lora_alpha_and_base_model_are_checked(released, tmp_path):
    adapter = lora_adapter(released, tmp_path / "adapter", r=4, lora_alpha=8)
    with pytest.raises(ValueError, match="the LoRA alpha must be a positive number, got -1"):
        HookedVideoLLM.from_pretrained(adapter, lora_alpha=-1)
    other = shutil.copytree(released, tmp_path / "other-base")
    with pytest.warns(UserWarning, match=f"the adapter was trained on '{released}'; merging it into '{other}'"):
        HookedVideoLLM.from_pretrained(adapter, base_model=other)


def test_a_lora_on_a_base_of_other_sizes_is_named(released, tmp_path):
    adapter = lora_adapter(released, tmp_path / "adapter", r=4, lora_alpha=8)
    wider = build_tiny("pllava", tmp_path / "wider", TinySizes(n_layers=3, d_model=96), seed=4)
    with pytest.raises(ValueError, match=r"the LoRA weights of '.*q_proj' \(lora_B \[64, 4\] @ lora_A \[4, 64\]\) do not "
                                         r"fit the base model's layer of shape \[96, 96\].*base_model="):  # fmt: skip
        with pytest.warns(UserWarning, match="the adapter was trained on"):
            HookedVideoLLM.from_pretrained(adapter, base_model=wider)


def test_a_checkpoint_whose_tensors_have_other_shapes_names_them(released, tmp_path):
    """transformers points at a report in its log; the error itself names each tensor and both shapes."""
    from safetensors.torch import load_file, save_file

    folder = shutil.copytree(released, tmp_path / "damaged")
    tensors = load_file(str(folder / "model.safetensors"))
    name = next(k for k in tensors if k.endswith("layers.0.self_attn.q_proj.weight"))
    tensors[name] = torch.zeros(68, tensors[name].shape[1])
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"1 mismatched weights \(.*layers.0.self_attn.q_proj.weight \(checkpoint \[68, 64\], "
                                         r"model \[64, 64\]\)\).*other sizes than config.json gives"):  # fmt: skip
        HookedVideoLLM.from_pretrained(folder)


def test_released_lora_checkpoint_merges_onto_its_base(released, tmp_path):
    """The released training saves only the LoRA tensors (inside the peft-wrapped language
    model) and the projector; the base model is given separately."""
    folder = tmp_path / "lora-step"
    shutil.copytree(released, folder)
    base = plain(released)
    generator = torch.Generator().manual_seed(1)
    tensors, rank, alpha = {}, 4, 16.0
    for layer in range(base.config.text_config.num_hidden_layers):
        for proj in ("q_proj", "v_proj"):
            weight = base.model.language_model.layers[layer].self_attn.get_submodule(proj).weight
            prefix = f"language_model.base_model.model.model.layers.{layer}.self_attn.{proj}"
            tensors[f"{prefix}.lora_A.default.weight"] = torch.randn(rank, weight.shape[1], generator=generator)
            tensors[f"{prefix}.lora_B.default.weight"] = torch.randn(weight.shape[0], rank, generator=generator)
    tensors["multi_modal_projector.linear_1.bias"] = torch.randn_like(base.model.multi_modal_projector.linear_1.bias)
    from safetensors.torch import save_file

    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(ValueError, match="base_model="):
        HookedVideoLLM.from_pretrained(folder, lora_alpha=alpha)
    hooked = HookedVideoLLM.from_pretrained(folder, base_model=released, lora_alpha=alpha)
    expected = plain(released)  # merged by hand: W + alpha / r * B A, and the trained projector bias
    with torch.no_grad():
        for layer in range(base.config.text_config.num_hidden_layers):
            for proj in ("q_proj", "v_proj"):
                prefix = f"language_model.base_model.model.model.layers.{layer}.self_attn.{proj}"
                delta = tensors[f"{prefix}.lora_B.default.weight"] @ tensors[f"{prefix}.lora_A.default.weight"]
                expected.model.language_model.layers[layer].self_attn.get_submodule(proj).weight += alpha / rank * delta
        expected.model.multi_modal_projector.linear_1.bias.copy_(tensors["multi_modal_projector.linear_1.bias"])
        prompt = hooked.prepare(video(), QUESTION, OPTIONS, answer=0, num_frames=None)
        torch.testing.assert_close(hooked(prompt), expected(**prompt.inputs).logits, atol=1e-4, rtol=0)


def test_adapter_without_its_base_says_so(tmp_path):
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "base_model_name_or_path": str(tmp_path / "gone")}))  # fmt: skip
    with pytest.raises(ValueError, match="holds a LoRA adapter.*base_model="):
        HookedVideoLLM.from_pretrained(tmp_path / "adapter")


def released_clip_pixels(frames: np.ndarray, size: int, mean, std) -> np.ndarray:
    """The released PLLaVA preprocessing, written out with PIL: the processor's long/short resize,
    then transformers 4's CLIP processor (PIL bicubic resize of the short side, centre crop,
    rescale, normalise)."""
    from PIL import Image

    out = []
    for frame in frames:
        height, width = frame.shape[:2]
        ratio = max(height, width) / min(height, width)
        short = max(size, min(min(height, width), int(min(640, max(height, width)) / ratio)))
        long = int(short * ratio)
        image = Image.fromarray(frame).resize((short, long) if width < height else (long, short), Image.BICUBIC)
        w, h = image.size
        new = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
        image = np.asarray(image.resize(new, Image.BICUBIC))
        top, left = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
        crop = image[top : top + size, left : left + size].astype(np.float32) / 255
        out.append(((crop - np.array(mean, np.float32)) / np.array(std, np.float32)).transpose(2, 0, 1))
    return np.stack(out)


def test_pixels_are_the_released_pil_pixels(released):
    """PIL's bicubic resize as released, not transformers 5's torchvision backend (which differs by
    a few grey levels on the same frames)."""
    from transformers import CLIPImageProcessor

    hooked = HookedVideoLLM.from_pretrained(released)
    frames = np.random.default_rng(3).integers(0, 256, (4, 50, 70, 3), dtype=np.uint8)
    pixels = hooked.prepare(frames, QUESTION, OPTIONS, answer=0, num_frames=None).inputs["pixel_values_videos"][0]
    processor = hooked.processor.image_processor
    size = processor.crop_size.height
    expected = released_clip_pixels(frames, size, processor.image_mean, processor.image_std)
    np.testing.assert_allclose(pixels.numpy(), expected, atol=1e-5, rtol=0)
    torchvision = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                                     image_mean=processor.image_mean, image_std=processor.image_std)  # fmt: skip
    other = torchvision(list(frames), return_tensors="np")["pixel_values"]  # the frames are already at the first step's size
    assert np.abs(other - released_clip_pixels(frames, size, processor.image_mean, processor.image_std)).max() > 1e-3
