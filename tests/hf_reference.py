"""Independent computations with plain Hugging Face models (no TransformerLens, no hooked_video
hooks): the reference that every hook-based analysis is checked against."""

import contextlib

import torch
import transformers


def load_hf(path, hooked):
    """The checkpoint loaded again as a plain HF model with eager attention (the PLLaVA class
    is this package's, with its config read from the released llava-format config; an
    InternVL-chat folder is converted onto transformers' InternVL class, a conversion that
    test_checkpoint_formats checks against an independent forward of the original layout)."""
    import json
    from pathlib import Path

    from hooked_video.model.formats.internvl_chat import is_internvl_chat, load_internvl_chat

    if is_internvl_chat(json.loads((Path(path) / "config.json").read_text())):
        return load_internvl_chat(path)[0].eval()
    name = type(getattr(hooked, "hf_model", None) or hooked.original_model).__name__
    if hasattr(transformers, name):
        return getattr(transformers, name).from_pretrained(path, attn_implementation="eager").eval()
    from hooked_video.model.loading import pllava_config
    from hooked_video.model.formats import PllavaForConditionalGeneration

    config = pllava_config(transformers.AutoConfig.from_pretrained(path))
    return PllavaForConditionalGeneration.from_pretrained(path, config=config, attn_implementation="eager").eval()


@contextlib.contextmanager
def layer_masks(hf, masks: dict):
    """Replace the attention mask each decoder layer receives by an explicit 4D additive mask
    (layer -> (batch, 1, N, N)), as the paper's released code does."""

    def replace(mask):
        def pre_hook(module, args, kwargs):
            return args, {**kwargs, "attention_mask": mask}

        return pre_hook

    layers = hf.model.language_model.layers
    handles = [layers[l].register_forward_pre_hook(replace(m), with_kwargs=True) for l, m in masks.items()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def last_probs(hf, inputs, masks=None):
    """Full-vocabulary softmax at the last position, (batch, vocab)."""
    with layer_masks(hf, masks or {}):
        logits = hf(**inputs).logits
    return logits[:, -1].float().softmax(-1)


@torch.no_grad()
def layer_inputs(hf, inputs) -> list[torch.Tensor]:
    """The residual stream entering every decoder layer of a plain HF forward, then the final-norm
    output: L + 1 tensors (batch, N, d_model). (transformers' ``hidden_states`` are the layers'
    outputs, which for Qwen3-VL lack the DeepStack features added between layers.)"""
    layers = hf.model.language_model.layers
    seen = {}

    def keep(index):
        def pre_hook(module, args, kwargs):
            seen[index] = (kwargs.get("hidden_states", args[0] if args else None)).clone()

        return pre_hook

    handles = [layer.register_forward_pre_hook(keep(i), with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        out = hf(**inputs, output_hidden_states=True)
    finally:
        for handle in handles:
            handle.remove()
    return [seen[i] for i in range(len(layers))] + [out.hidden_states[-1]]
