"""HookedVideoLLM: a TransformerLens ``TransformerBridge`` over a Video LLM, plus its processor.

The bridge (``model.bridge``) gives TransformerLens' hooks, ``run_with_cache``, ``run_with_hooks``
and ``hooks()``; this class adds video prompts (``prepare``), the token map, and one hook point
of its own, ``hook_video_embeds``: the projected video features the language model receives,
(batch, n_video_tokens, d_model) in (T, H, W) sequence order, fired just before the first block.
Anything not defined here is looked up on the bridge, so ``model.cfg``, ``model.hook_dict``,
``model.blocks`` and ``model.to_str_tokens`` work as in TransformerLens.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from tqdm.auto import tqdm
from transformer_lens.hook_points import HookPoint

from hooked_video.model.adapters import ADAPTERS
from hooked_video.runtime.attention import install_fast_attention, install_fast_vision_attention
from hooked_video.runtime.fastpath import install_fast_blocks
from hooked_video.model.embedded import EmbeddedPrompt
from hooked_video.model.errors import UnsupportedArchitectureError
from hooked_video.model.families import FAMILIES, VideoFamily
from hooked_video.model.habits import KnownPrompts, inputs_of, option_report, sample_next, warn_transformer_lens_patching
from hooked_video.core.checks import InvalidInputError, check_answer, check_frame_times, check_options, check_question
from hooked_video.model.prompt import (
    PromptTemplate,
    VideoPrompt,
    align_text,
    expanded_spans,
    letter_token_ids,
)
from hooked_video.model.tokens import PromptLayoutError, build_token_map
from hooked_video.core.video import load_video


class _StopBeforeLanguageModel(Exception):
    """Raised inside ``embed`` once the language model's inputs are known."""


#: Hook names of the vision side; every other hook belongs to the language model.
VISION_HOOK_PREFIXES = ("vision_encoder.", "vision_projector.")


def _unsupported(arch: str | None) -> UnsupportedArchitectureError:
    return UnsupportedArchitectureError(
        f"architecture {arch!r} is not supported by hooked_video; supported: {sorted(ADAPTERS)}."
    )


def boot_bridge(hf_model, tokenizer=None, model_name: str = "hooked_video"):
    """Wrap a loaded HF Video LLM in a TransformerBridge with hooked_video's adapter.

    Uses TransformerLens' own config translation, tokenizer setup and driver; only the adapter
    class is chosen here (see ``hooked_video.model.adapters.ADAPTERS``). The model is modified in
    place and switched to eager attention.
    """
    from transformer_lens.model_bridge.bridge import TransformerBridge
    from transformer_lens.model_bridge.sources._bridge_builder import (
        build_bridge_config_from_hf,
        configure_tokenizer,
    )
    from transformer_lens.model_bridge.sources.transformers_driver import TransformersDriver

    arch = type(hf_model).__name__
    if arch not in ADAPTERS:
        raise _unsupported(arch)
    hf_model.config.architectures = [arch]
    param = next(hf_model.parameters())
    cfg = build_bridge_config_from_hf(hf_model.config, arch, model_name, param.dtype)
    adapter = ADAPTERS[arch](cfg)
    adapter.cfg.device = str(param.device)
    if getattr(hf_model, "hf_device_map", None):  # split over devices: inputs go where the embedding is
        from transformer_lens.utilities.multi_gpu import count_unique_devices, find_embedding_device

        adapter.cfg.device = str(find_embedding_device(hf_model) or param.device)
        adapter.cfg.n_devices = count_unique_devices(hf_model)
    adapter.prepare_model(hf_model)
    if tokenizer is not None:
        tokenizer = configure_tokenizer(tokenizer, adapter.cfg)
    driver = TransformersDriver(hf_model, adapter, tokenizer)
    return TransformerBridge(hf_model, adapter, tokenizer, driver=driver)


class HookedVideoLLM:
    """A Video LLM as a TransformerLens model with video-aware prompts.

    Build with ``from_pretrained`` (a local folder, a hub id, or a zoo name) or ``from_hf``.
    """

    def __init__(self, bridge, processor, family: VideoFamily) -> None:
        self.bridge = bridge
        self.processor = processor
        self.family = family
        self._known_prompts = KnownPrompts()
        self._install_video_hook()

    # ----- construction ------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls, name_or_path: str | Path, device=None, dtype=None, video_pooling=None, base_model=None,
        lora_alpha: float | None = None, strict: bool = True, **hf_kwargs: Any,
    ) -> "HookedVideoLLM":  # fmt: skip
        """Load a checkpoint (local folder, hub id, or a bundled zoo name such as "toy-video-ft")
        with its processor, eager attention.

        Args:
            dtype: "float32" (default), "bfloat16" or "float16" (or a torch dtype).
            video_pooling: (T, h, w): run an image LLaVA checkpoint (e.g. llava-v1.6) on video
                through the PLLaVA pooled path, as the paper's image baseline.
            base_model, lora_alpha: for a LoRA adapter folder, the base checkpoint and alpha
                (defaults: what the adapter records); the adapter is merged on load.
            strict: refuse a checkpoint with missing, unexpected or non-finite weights
                (``False``: warn with the list and load anyway).
            hf_kwargs: passed to the HF model's ``from_pretrained`` (e.g. ``device_map``).

        PLLaVA-format checkpoints (the paper's LLaVA-NeXT-Video-FT models) load through
        ``hooked_video.model.formats.pllava``; see ``hooked_video.model.loading``.
        """
        from hooked_video.model.loading import load_checkpoint

        hf_model, processor = load_checkpoint(name_or_path, dtype=dtype, device=device, video_pooling=video_pooling,
                                              base_model=base_model, lora_alpha=lora_alpha, strict=strict,
                                              **hf_kwargs)  # fmt: skip
        return cls.from_hf(hf_model, processor, model_name=str(name_or_path))

    @classmethod
    def from_hf(cls, hf_model, processor, model_name: str = "hooked_video") -> "HookedVideoLLM":
        """Wrap an already loaded HF model and its processor (the model is modified in place)."""
        arch = type(hf_model).__name__
        if arch not in FAMILIES:
            raise _unsupported(arch)
        bridge = boot_bridge(hf_model.eval(), processor.tokenizer, model_name)
        install_fast_attention(bridge, hf_model.model.language_model.config)
        install_fast_vision_attention(bridge, hf_model, hf_model.model.language_model.config)
        install_fast_blocks(bridge.blocks)
        vision = getattr(bridge, "vision_encoder", None)
        for name in ("encoder_layers", "blocks"):  # the vision tower's layers, where the adapter maps them
            if isinstance(getattr(vision, name, None), torch.nn.ModuleList):
                install_fast_blocks(getattr(vision, name))
        bridge.processor = processor
        return cls(bridge, processor, FAMILIES[arch](hf_model.config, processor))

    # ----- TransformerLens surface ----------------------------------------------------------
    def __getattr__(self, name: str):
        if name in ("bridge", "processor", "family"):
            raise AttributeError(name)
        return getattr(self.bridge, name)

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    def hf_model(self):
        return self.bridge.original_model

    @property
    def device(self) -> torch.device:
        """Where inputs go: the embedding's device (the first of a model split over devices)."""
        return torch.device(self.bridge.cfg.device or next(self.hf_model.parameters()).device)

    @property
    def lm_hook_names(self) -> list[str]:
        """The language model's hook names (embedding, ``blocks.*``, final norm, unembedding,
        ``hook_video_embeds``): every hook but the vision encoder's and the projector's. Filter
        with these, or with ``name.startswith("blocks.")``; a suffix test such as
        ``name.endswith("hook_resid_post")`` also matches ``vision_encoder.*`` hooks."""
        return [name for name in self.hook_dict if not name.startswith(VISION_HOOK_PREFIXES)]

    def _inputs(self, prompt, kwargs: Mapping | None = None) -> tuple[Any, dict]:
        """(input_ids, other model kwargs) for a prompt, a list of prompts, or raw inputs (ids that
        hold video placeholders need their pixels in ``kwargs``)."""
        if isinstance(prompt, EmbeddedPrompt):
            self._video_state["pending"] = prompt.feature_mask.to(self.device)
            self._video_state["language_model"] = prompt.language_model_kwargs(self.device)
            return prompt.inputs_embeds.to(self.device), prompt.lm_kwargs(self.device)
        if isinstance(prompt, VideoPrompt):
            inputs = prompt.inputs
            self._validate(inputs)
            warn_transformer_lens_patching(prompt)
        elif isinstance(prompt, (list, tuple)) and prompt and isinstance(prompt[0], VideoPrompt):
            for one in prompt:
                self._validate(one.inputs)
            inputs = batch_inputs(prompt)
        elif isinstance(prompt, dict):
            inputs = prompt
            self._validate(inputs)
        else:
            inputs = self._inputs_of_ids(prompt, kwargs or {})
            if inputs is None:
                return prompt, {}
        inputs = self.move_inputs(inputs)
        ids = inputs.pop("input_ids")
        return ids, inputs

    def _inputs_of_ids(self, ids, kwargs: Mapping) -> dict | None:
        """Token ids as they are (None), or, where they hold video placeholders, the inputs of the
        prompt they came from (``to_tokens(prompt)``, text after it included). Placeholders of no
        known prompt and no pixels would run the language model on the placeholders' own
        embeddings, silently: an error that says what to pass instead."""
        if not isinstance(ids, torch.Tensor) or ids.is_floating_point() or any(k.startswith("pixel_values") for k in kwargs):
            return None
        n_placeholders = int((ids == self.family.video_token_id).sum())
        if not n_placeholders:
            return None
        prompt = self._known_prompts.prompt_for(ids)
        if prompt is None:
            raise InvalidInputError(
                f"these input ids hold {n_placeholders} video placeholder tokens but no pixels, so the language model "
                "would read the placeholders' embeddings instead of the video; pass the VideoPrompt itself "
                "(model(prompt)), or prompt.inputs (ids with their pixel_values_videos), or ids from "
                "model.to_tokens(prompt)"
            )  # fmt: skip
        warn_transformer_lens_patching(prompt)
        return inputs_of(prompt, ids)

    def move_inputs(self, inputs: dict) -> dict:
        """Tensors to the model's device; pixel values to its dtype (processors give float32)."""
        return inputs_for(self.hf_model, inputs)

    def __call__(self, prompt, **kwargs):
        ids, inputs = self._inputs(prompt, kwargs)
        return self.bridge(ids, **inputs, **kwargs)

    forward = __call__

    def run_with_cache(self, prompt, **kwargs):
        """``bridge.run_with_cache`` on a VideoPrompt (or a list of equal-layout prompts)."""
        ids, inputs = self._inputs(prompt, kwargs)
        return self.bridge.run_with_cache(ids, **inputs, **kwargs)

    def run_with_hooks(self, prompt, fwd_hooks=(), bwd_hooks=(), **kwargs):
        """``bridge.run_with_hooks`` on a VideoPrompt (or a list of equal-layout prompts)."""
        ids, inputs = self._inputs(prompt, kwargs)
        return self.bridge.run_with_hooks(
            ids, fwd_hooks=list(fwd_hooks), bwd_hooks=list(bwd_hooks), **inputs, **kwargs
        )

    def hooks(self, *args, **kwargs) -> contextlib.AbstractContextManager:
        """TransformerLens' ``hooks(fwd_hooks=..., bwd_hooks=...)`` context manager on the model."""
        return self.bridge.hooks(*args, **kwargs)

    @torch.no_grad()
    def embed(self, prompt: VideoPrompt) -> EmbeddedPrompt:
        """Run the vision pathway once and return what the language model receives.

        The result can be passed to ``__call__``, ``run_with_cache`` and ``run_with_hooks``
        like the prompt itself, any number of times, without re-running the vision encoder;
        ``hook_video_embeds`` still fires on it. Embeddings are taken before that hook point.
        """
        captured: dict = {}

        def capture(module, args, kwargs):
            captured.update(kwargs)
            raise _StopBeforeLanguageModel

        ids, inputs = self._inputs(prompt)  # checked before the hook goes in
        handle = self.hf_model.model.language_model.register_forward_pre_hook(
            capture, with_kwargs=True, prepend=True
        )
        try:
            self.hf_model(input_ids=ids, **inputs)
        except _StopBeforeLanguageModel:
            pass
        finally:
            handle.remove()
            self._video_state.clear()
        return EmbeddedPrompt.from_captured(captured, self.family.feature_mask(ids), prompt)

    @torch.no_grad()
    def generate(self, prompt, max_new_tokens: int = 32, fwd_hooks=(), stop_at_eos: bool = True, return_type: str = "str",
                 do_sample: bool = False, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                 seed: int | None = None, verbose: bool = False, **transformer_lens_kwargs):  # fmt: skip
        """Continuation of a video prompt (the vision pathway runs once): greedy by default, or
        sampled (``do_sample=True`` with ``temperature``, ``top_k``, ``top_p``, ``seed``) as
        TransformerLens and Hugging Face sample. Text (a string or token ids of no video) goes to
        TransformerLens' own ``generate`` with every keyword it takes.

        Args:
            prompt: a VideoPrompt (or an EmbeddedPrompt), or text.
            fwd_hooks: TransformerLens hooks applied in every decoding step.
            stop_at_eos: stop at the tokenizer's / generation config's end-of-sequence tokens.
            return_type: "str" (the decoded answer, special tokens skipped) or "tokens" (ids).
            verbose: a progress bar over the new tokens.
            transformer_lens_kwargs: for video prompts, TransformerLens' ``use_past_kv_cache``,
                ``prepend_bos`` and ``padding_side`` are accepted (each step reruns the language
                model on the appended embeddings); others are refused by name.
        """
        if not isinstance(prompt, (VideoPrompt, EmbeddedPrompt)):
            return self.bridge.generate(prompt, max_new_tokens=max_new_tokens, stop_at_eos=stop_at_eos,
                                        return_type=return_type, do_sample=do_sample, temperature=temperature,
                                        top_k=top_k, top_p=top_p, verbose=verbose, **transformer_lens_kwargs)  # fmt: skip
        unknown = sorted(set(transformer_lens_kwargs) - {"use_past_kv_cache", "prepend_bos", "padding_side"})
        if unknown:
            raise InvalidInputError(f"generate on a video prompt does not take {unknown}; it takes max_new_tokens, "
                                    "fwd_hooks, stop_at_eos, return_type, do_sample, temperature, top_k, top_p, seed, "
                                    "verbose")  # fmt: skip
        if return_type not in ("str", "tokens"):
            raise ValueError(f"return_type must be 'str' or 'tokens', got {return_type!r}")
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        embedded = prompt if isinstance(prompt, EmbeddedPrompt) else self.embed(prompt)
        embed = self.hf_model.get_input_embeddings()
        eos = _eos_ids(self.tokenizer, getattr(self.hf_model, "generation_config", None))
        tokens: list[int] = []
        for _ in tqdm(range(max_new_tokens), desc="generate", disable=not verbose):
            logits = self.run_with_hooks(embedded, fwd_hooks=list(fwd_hooks), logits_to_keep=1)
            token = sample_next(logits[0, -1], do_sample, temperature, top_k, top_p, generator)
            tokens.append(token)
            if stop_at_eos and token in eos:
                break
            embedded = embedded.append(embed(torch.tensor([[token]], device=embed.weight.device)))
        return tokens if return_type == "tokens" else self.tokenizer.decode(tokens, skip_special_tokens=True)

    def to_tokens(self, prompt, *args, **kwargs) -> torch.Tensor:
        """A VideoPrompt's ids (1, N), which ``model(...)`` then runs with their video (also with
        text appended, as ``transformer_lens.utilities.test_prompt`` does); TransformerLens'
        ``to_tokens`` for text."""
        if isinstance(prompt, VideoPrompt):
            self._known_prompts.remember(prompt)
            return prompt.input_ids.to(self.device)
        return self.bridge.to_tokens(prompt, *args, **kwargs)

    def to_str_tokens(self, prompt, *args, **kwargs) -> list[str]:
        """The token strings of a VideoPrompt (video placeholders included), or TransformerLens'
        ``to_str_tokens`` for text and token ids."""
        if isinstance(prompt, VideoPrompt):
            return list(prompt.str_tokens)
        if isinstance(prompt, EmbeddedPrompt):
            return list(prompt.prompt.str_tokens)
        return self.bridge.to_str_tokens(prompt, *args, **kwargs)

    @torch.no_grad()
    def test_prompt(self, prompt: VideoPrompt, top_k: int = 10) -> None:
        """Print, as TransformerLens' ``test_prompt`` does, how the model ranks the options of a
        multiple-choice video prompt: each letter's rank, logit and probability, then the top
        tokens. (``transformer_lens.utilities.test_prompt(prompt, answer, model)`` works too.)"""
        if not isinstance(prompt, VideoPrompt) or not prompt.option_token_ids:
            raise InvalidInputError("test_prompt takes a multiple-choice VideoPrompt (model.prepare(..., options=[...]))")
        print(option_report(prompt, self(prompt, logits_to_keep=1)[0, -1], self.tokenizer, top_k))

    # ----- video embedding hook ---------------------------------------------------------------
    def _install_video_hook(self) -> None:
        """Register ``hook_video_embeds`` on the bridge and fire it on the LM's input embeddings."""
        self.bridge.hook_video_embeds = HookPoint().train(self.bridge.training)  # the bridge registers and names it
        hook_point, family, state = self.bridge.hook_video_embeds, self.family, {}

        def remember_ids(module, args, kwargs):
            ids = kwargs.get("input_ids", args[0] if args else None)
            pending = state.pop("pending", None)  # set by an EmbeddedPrompt forward
            state["mask"] = pending if ids is None else family.feature_mask(ids)

        def edit_embeds(module, args, kwargs):
            embeds, mask = kwargs.get("inputs_embeds"), state.pop("mask", None)
            extra = {k: v for k, v in state.pop("language_model", {}).items() if kwargs.get(k) is None}
            kwargs = {**kwargs, **extra}  # an EmbeddedPrompt's DeepStack features
            if embeds is None or mask is None or mask.shape != embeds.shape[:2] or not mask.any():
                return (args, kwargs) if extra else None
            mask = mask.to(embeds.device)  # a model split over GPUs may hand its LM the embeddings elsewhere
            counts = mask.sum(-1)
            if not bool((counts == counts[0]).all()):
                raise PromptLayoutError("batched prompts must have the same number of video tokens.")
            video = embeds[mask].reshape(embeds.shape[0], int(counts[0]), embeds.shape[-1])
            embeds = embeds.masked_scatter(mask[..., None], hook_point(video))
            return args, {**kwargs, "inputs_embeds": embeds}

        hf = self.hf_model
        self._video_state = state
        self._hook_handles = [
            hf.register_forward_pre_hook(remember_ids, with_kwargs=True),
            hf.model.language_model.register_forward_pre_hook(edit_embeds, with_kwargs=True),
        ]

    # ----- prompts ------------------------------------------------------------------------------
    def prepare(
        self,
        frames,
        question: str,
        options: Sequence[str] | None = None,
        answer: int | str | None = None,
        template: PromptTemplate | str | None = None,
        num_frames: int | None = 8,
        fps: float | None = None,
        processor_kwargs: dict | None = None,
        frame_times: Sequence[float] | None = None,
    ) -> VideoPrompt:
        """Build a video prompt with the model's processor and chat template.

        Args:
            frames: a video path, a (T, H, W, 3) uint8 array/tensor, or a list of PIL images.
            question: the question text.
            options: answer options; with options the multiple-choice template is used.
            answer: the true option, as an index or as the option's text.
            template: a PromptTemplate or a template name ("map-the-flow" for the released
                code's exact prompt; see ``PromptTemplate.named``). Default: the family's (the
                released conversation for PLLaVA-format models, else the paper's wording in the
                model's chat template), or ``PromptTemplate.free_form()`` without options.
            num_frames: frames sampled from a file (segment midpoints); None keeps all frames
                of an in-memory clip.
            fps: frame rate of the frames given to the processor; Qwen2.5-VL scales temporal
                positions by it (without it the processor assumes 24 fps).
            processor_kwargs: extra keyword arguments for the processor call.
            frame_times: each frame's second in the video, for prompts that show times
                (VideoLLaMA3). Default: from the file (the sampled frames' times), else ``fps``.
        """
        question = check_question(question)
        options = check_options(options)
        answer_index = check_answer(answer, options)
        if fps is not None and (isinstance(fps, bool) or not isinstance(fps, (int, float)) or not fps > 0):
            raise InvalidInputError(f"fps must be a positive number of frames per second, got {fps!r}")
        template = self._template(template, bool(options))
        frames, times = load_video(frames, num_frames=num_frames, sampling=self.family.frame_sampling, with_times=True)
        times = check_frame_times(frame_times, len(frames)) if frame_times is not None else times
        user_text, char_spans = template.render_user_text(question, options)
        text = self._render_chat(user_text, template) + template.answer_prefix
        if processor_kwargs is not None and not isinstance(processor_kwargs, Mapping):
            raise InvalidInputError(f"processor_kwargs must be a dict, got {type(processor_kwargs).__name__}")
        kwargs = {**self.family.processor_kwargs(frames, fps, times), **(processor_kwargs or {})}
        inputs = dict(self.processor(text=text, videos=[frames], return_tensors="pt", **kwargs))
        ids = inputs["input_ids"][0]
        alignment = align_text(self.tokenizer, text, ids.tolist(), self.family.placeholder_id)
        spans = expanded_spans(alignment, char_spans, base=text.index(user_text))
        layout = self.family.layout(ids, inputs, alignment.region)
        self._check_context(len(ids))
        token_map = build_token_map(
            len(ids), layout.features, layout.grid_shape, layout.separators, spans,
            n_input_frames=len(frames), temporal_patch_size=layout.temporal_patch_size,
            answer=answer_index, cells=layout.cells, frame_text=(layout.frame_text, layout.frame_text_slots),
        )  # fmt: skip
        self._check_token_ids(ids, token_map.question, [question, *options])
        letters = letter_token_ids(self.tokenizer, text, len(options)) if options else []
        prompt = VideoPrompt(
            inputs=inputs, token_map=token_map, str_tokens=self.tokenizer.convert_ids_to_tokens(ids.tolist()),
            option_token_ids=letters, answer=answer_index, question=question, options=options,
            text=text, frames=frames, template=template, fps=fps, processor_kwargs=processor_kwargs,
            frame_times=times,
        )  # fmt: skip
        self._known_prompts.remember(prompt)  # its ids alone run with its video (TransformerLens habits)
        return prompt

    def _template(self, template: PromptTemplate | str | None, has_options: bool) -> PromptTemplate:
        """The template to use: a PromptTemplate, a name (``PromptTemplate.named``), or None for the
        family's default (the released conversation for the paper's PLLaVA models, else the
        paper's wording in the model's chat template; free-form without options)."""
        if isinstance(template, str):
            return PromptTemplate.named(template)
        if template is not None:
            if not isinstance(template, PromptTemplate):
                raise InvalidInputError(f"template must be a PromptTemplate or a template name, got {type(template).__name__}")
            return template
        if not has_options:
            return PromptTemplate.free_form()
        return PromptTemplate.named(self.family.default_template or "default")

    def _render_chat(self, user_text: str, template: PromptTemplate) -> str:
        if template.conversation == "map-the-flow":
            if not self.family.video_placeholder:
                raise PromptLayoutError(f"the {self.family.name} family has no video placeholder text for this conversation")
            return template.render_conversation(user_text, self.family.video_placeholder)
        messages = []
        if template.system_prompt:
            messages.append({"role": "system", "content": [{"type": "text", "text": template.system_prompt}]})
        messages.append({"role": "user", "content": [{"type": "video"}, {"type": "text", "text": user_text}]})
        rendered = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        if user_text not in rendered:
            raise PromptLayoutError("the chat template changed the question text; spans cannot be located.")
        return rendered

    def _validate(self, inputs: dict) -> None:
        """Check placeholders against the video features and the length against the context,
        so a bad prompt fails here with a clear message instead of deep inside the model."""
        ids = inputs["input_ids"]
        self._check_context(ids.shape[-1])
        if self.family.has_video(inputs) and ids.reshape(-1, ids.shape[-1]).shape[0] == 1:
            self.family.layout(ids.reshape(-1), inputs)  # batches of raw inputs: the model checks them

    def _check_context(self, n_positions: int) -> None:
        n_ctx = getattr(self.cfg, "n_ctx", None)
        if n_ctx and n_positions > n_ctx:
            raise PromptLayoutError(
                f"the prompt has {n_positions} tokens, more than the model's context of {n_ctx}; "
                f"use fewer frames (num_frames=...) or smaller frames, or a shorter question."
            )

    def _check_token_ids(self, ids: torch.Tensor, question: torch.Tensor, texts: list[str]) -> None:
        """Every id has an embedding row (else: the tokenizer is another model's), and no word of
        the question or options became the unknown token without a word (a tokenizer that lacks
        them: the model would read ``<unk>``)."""
        rows = self.hf_model.get_input_embeddings().num_embeddings
        if int(ids.max()) >= rows:
            bad = int(ids.max())
            raise InvalidInputError(
                f"the prompt holds token id {bad} ({self.tokenizer.convert_ids_to_tokens(bad)!r}) but the model's "
                f"embedding has {rows} rows: the tokenizer ({len(self.tokenizer)} tokens) is not this model's; load "
                "the checkpoint's own tokenizer (its folder's tokenizer files)"
            )  # fmt: skip
        unknown = getattr(self.tokenizer, "unk_token_id", None)
        if unknown is None or unknown not in ids[question].tolist():
            return
        words = sorted({w for text in texts for w in text.split()
                        if unknown in self.tokenizer(w, add_special_tokens=False)["input_ids"]})  # fmt: skip
        warnings.warn(
            f"the tokenizer has no token for {words or 'part of the prompt'}: the model reads "
            f"{self.tokenizer.unk_token!r} there, so its answers to this prompt say little; use words of its "
            "vocabulary, or the model's own tokenizer", stacklevel=3
        )  # fmt: skip

    def __repr__(self) -> str:
        c = self.cfg
        return (
            f"HookedVideoLLM({type(self.hf_model).__name__}, n_layers={c.n_layers}, "
            f"d_model={c.d_model}, n_heads={c.n_heads}, d_vocab={c.d_vocab})"
        )


def _eos_ids(tokenizer, generation_config) -> set[int]:
    ids = {tokenizer.eos_token_id}
    configured = getattr(generation_config, "eos_token_id", None)
    ids.update(configured if isinstance(configured, (list, tuple)) else [configured])
    return {int(i) for i in ids if i is not None}


def inputs_for(module: torch.nn.Module, inputs: dict) -> dict:
    """Processor outputs moved to ``module``'s device, floating tensors cast to its dtype."""
    param = next(module.parameters())
    return {
        k: (v.to(param.device, param.dtype) if v.is_floating_point() else v.to(param.device)) if isinstance(v, torch.Tensor) else v
        for k, v in inputs.items()
    }


def batch_inputs(prompts: Sequence[VideoPrompt]) -> dict:
    """Concatenate the inputs of prompts of equal layout along the batch dimension."""
    lengths = {p.n_positions for p in prompts}
    if len(lengths) != 1:
        raise PromptLayoutError(
            f"prompts of different lengths {sorted(lengths)} cannot be batched; batch prompts of "
            "equal layout (same template, frame count and option lengths) or run them one by one."
        )
    keys = prompts[0].inputs.keys()
    return {k: torch.cat([p.inputs[k] for p in prompts]) for k in keys}
