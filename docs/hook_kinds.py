"""What each hook point of a HookedVideoLLM holds, by name pattern: the "kinds" of the hook
reference, and why a hook a video prompt does not reach stays silent.

The kinds are written by hand (meaning, shape in symbols, what a hook costs the fast path); what
can be measured is measured when the page is built (``hook_reference.py``: reached or not,
editable or not, the same on the fast path or not) and checked by ``tests/test_hook_reference.py``
(every hook name of every architecture has a kind; the language model's shapes match the symbols).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

#: What a hook on a kind costs the fast path of a forward (``hooked_video.runtime.fastpath`` and
#: ``attention``); the sweep engine of ``flow.sweep`` runs only when no hook is registered at all.
BLOCK = "its block"
REFERENCE = "its block; its layer's SDPA attention"
FLAGGED = "(the flag) SDPA attention in every layer"
VISION_EAGER = "its vision block; its SDPA attention"
OUTSIDE = "nothing"

#: Symbols of the shapes (the language model's are checked against ``model.cfg`` by the tests).
SYMBOLS = {
    "batch": "prompts in the batch",
    "pos": "positions of the prompt (text and video tokens)",
    "n_video": "video tokens of the prompt (`prompt.token_map`)",
    "d_model": "the language model's width",
    "n_heads": "query heads",
    "n_kv_heads": "key/value heads (grouped-query attention: fewer than `n_heads`)",
    "d_head": "width of one head",
    "d_rot": "rotary dimension (`d_head` in these models)",
    "d_mlp": "width of the MLP's hidden layer",
    "d_vocab": "vocabulary size",
    "frames": "frames (or temporal patches) the vision tower sees",
    "patches": "patches per frame (Qwen-VL and VideoLLaMA3 towers flatten frames x patches into one axis)",
    "d_vision": "the vision tower's width",
}


@dataclass(frozen=True)
class Kind:
    """A family of hook points: its names, what it holds, its shape, what a hook on it costs."""

    label: str  # short, shown in the architecture tables
    names: tuple[str, ...]  # name patterns as shown ({l}: a layer, {layers}: encoder_layers or blocks)
    holds: str
    shape: str
    cost: str
    regex: re.Pattern = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        alternatives = [_pattern(n) for n in self.names]
        object.__setattr__(self, "regex", re.compile("|".join(f"(?:{a})" for a in alternatives)))

    @property
    def anchor(self) -> str:
        return "kind-" + re.sub(r"[^a-z0-9]+", "-", self.label.lower()).strip("-")


def _pattern(shown: str) -> str:
    """A shown pattern as a regex: {l} any layer, {layers} a vision tower's layer list, a|b alternatives
    inside one dotted segment (``ln1|ln2.hook_in``), everything else literal."""
    parts = []
    for segment in shown.split("."):
        if segment == "{l}":
            parts.append(r"\d+")
        elif segment == "{layers}":
            parts.append("(?:encoder_layers|blocks)")
        else:
            parts.append("(?:" + "|".join(re.escape(s) for s in segment.split("|")) + ")")
    return r"\.".join(parts)


VB = "vision_encoder.{layers}.{l}"  # a vision tower's block
LM, VISION = "language model", "vision tower and projector"

KINDS_BY_PART: dict[str, list[Kind]] = {
    VISION: [
        Kind("pixels", ("vision_encoder.hook_in", "vision_encoder.embeddings|patch_embed.hook_in"),
             "what the vision tower receives: frames of pixels, or (Qwen-VL) flattened pixel patches",
             "(frames, 3, H, W) or (patches, 3 x t x p x p)", OUTSIDE),
        Kind("patch embeddings", ("vision_encoder.embeddings|patch_embed.hook_out", "vision_encoder.hook_vision_embed",
                                  "vision_encoder.hook_patch_embed", "vision_encoder.hook_pos_embed",
                                  "vision_encoder.pos_embed.hook_in|hook_out"),
             "the patch (and position) embeddings entering the tower's first block", "(frames, patches, d_vision)",
             OUTSIDE),
        Kind("vision norm", ("vision_encoder.pre_layernorm|post_layernorm.hook_in|hook_out|hook_normalized|hook_scale",),
             "the tower's LayerNorm before its first block or after its last (LLaVA's CLIP and SigLIP towers)",
             "(frames, patches, d_vision)", OUTSIDE),
        Kind("vision residual", (f"{VB}.hook_in|hook_out|hook_resid_pre|hook_resid_post",),
             "a vision block's residual stream, every patch of every frame", "(frames, patches, d_vision)", BLOCK),
        Kind("vision attention", (f"{VB}.hook_attn_in|hook_attn_out",
                                  f"{VB}.attn.hook_in|hook_out|hook_q|hook_k|hook_v|hook_z",
                                  f"{VB}.attn.q|k|v|o|qkv|proj.hook_in|hook_out",
                                  f"{VB}.attn.hook_q_input|hook_k_input|hook_v_input|hook_attn_in|hook_result",
                                  f"{VB}.attn.hook_hidden_states"),
             "a vision block's attention, as in the language model (below) but bidirectional, within a frame",
             "(frames, patches, ...)", BLOCK),
        Kind("vision pattern", (f"{VB}.attn.hook_attn_scores|hook_pattern",),
             "a vision block's attention scores and pattern, copied from Hugging Face's eager attention weights",
             "(frames, n_heads, patches, patches)", VISION_EAGER),
        Kind("vision MLP", (f"{VB}.hook_mlp_in|hook_mlp_out",
                            f"{VB}.ln1|ln2|norm1|norm2.hook_in|hook_out|hook_normalized|hook_scale",
                            f"{VB}.mlp.hook_in|hook_out|hook_pre|hook_post|hook_pre_linear",
                            f"{VB}.mlp.in|out|gate|linear_fc1|linear_fc2.hook_in|hook_out"),
             "a vision block's norms and MLP", "(frames, patches, d_vision or its MLP width)", BLOCK),
        Kind("vision output", ("vision_encoder.hook_out", "vision_encoder.hook_vision_out"),
             "the tower's final output (its `last_hidden_state`); LLaVA-family models read an earlier layer "
             "instead, Qwen-VL models the merged `pooler_output`, so an edit here changes nothing there",
             "(frames, patches, d_vision)", OUTSIDE),
        Kind("DeepStack", ("vision_encoder.deepstack_mergers.{l}.hook_in|hook_out",),
             "Qwen3-VL: features of an intermediate vision layer, merged to the language model's width and "
             "added to the residual stream at the video positions after the first decoder blocks",
             "in: (patches, d_vision); out: (n_video, d_model)", OUTSIDE),
        Kind("projector", ("vision_projector.hook_in|hook_out", "vision_projector.hook_vision_proj_in|hook_vision_proj_out",
                           "vision_projector.hook_projected"),
             "the projector from the vision tower to the language model's width: its input and output",
             "in: (frames, patches, d_vision); out: (frames, patches, d_model)", OUTSIDE),
    ],
    LM: [
        Kind("video embeddings", ("hook_video_embeds",),
             "hooked_video's own hook: the projected (and, for PLLaVA, pooled) video features the language model "
             "receives, written into the embeddings at the video positions", "(batch, n_video, d_model)", OUTSIDE),
        Kind("token ids", ("embed.hook_in",), "the input token ids (video placeholders included)", "(batch, pos)",
             OUTSIDE),
        Kind("embeddings", ("hook_embed", "embed.hook_out"),
             "token embeddings, before the video features replace the placeholders' rows", "(batch, pos, d_model)",
             OUTSIDE),
        Kind("rotary input", ("rotary_emb.hook_in",),
             "the tensor the rotary embedding reads its dtype and device from (its values are not used)",
             "(batch, pos, d_model)", OUTSIDE),
        Kind("rotary tables", ("rotary_emb.hook_cos|hook_sin", "rotary_emb.hook_out", "hook_pos_embed"),
             "cos and sin of the rotary position embedding, computed once for all layers", "(batch, pos, d_rot)",
             OUTSIDE),
        Kind("residual in", ("blocks.{l}.hook_in", "blocks.{l}.hook_resid_pre"),
             "the residual stream entering block l (the lens reads it; `patching` component `resid_pre`)",
             "(batch, pos, d_model)", BLOCK),
        Kind("norm", ("blocks.{l}.ln1|ln2.hook_in|hook_out", "ln_final.hook_in|hook_out"),
             "an RMSNorm's input (ln1: the residual stream; ln2: `hook_resid_mid`) and output (weight applied)",
             "(batch, pos, d_model)", BLOCK),
        Kind("norm internals", ("blocks.{l}.ln1|ln2.hook_normalized|hook_scale", "ln_final.hook_normalized|hook_scale"),
             "`hook_scale`: the root-mean-square each position is divided by; `hook_normalized`: the input divided "
             "by it, before the weight", "scale: (batch, pos, 1); normalized: (batch, pos, d_model)", BLOCK),
        Kind("attention input", ("blocks.{l}.attn.hook_in", "blocks.{l}.attn.q|k|v.hook_in"),
             "what attention reads: ln1's output, given to the q, k and v projections", "(batch, pos, d_model)", BLOCK),
        Kind("queries", ("blocks.{l}.attn.hook_q", "blocks.{l}.attn.q.hook_out"), "queries before the rotary embedding",
             "(batch, pos, n_heads, d_head)", BLOCK),
        Kind("keys and values", ("blocks.{l}.attn.hook_k|hook_v", "blocks.{l}.attn.k|v.hook_out"),
             "keys (before the rotary embedding) and values, one per key/value head",
             "(batch, pos, n_kv_heads, d_head)", BLOCK),
        Kind("q/k norm", ("blocks.{l}.attn.hook_q_normed|hook_k_normed",
                          "blocks.{l}.attn.q_norm|k_norm.hook_in|hook_out|hook_normalized|hook_scale"),
             "Qwen3-VL's per-head RMSNorm of queries and keys (declared, silent, on towers without one)",
             "(batch, n_heads or n_kv_heads, pos, d_head or 1)", BLOCK),
        Kind("rotated q/k", ("blocks.{l}.attn.hook_rot_q|hook_rot_k",), "queries and keys after the rotary embedding",
             "(batch, pos, n_heads or n_kv_heads, d_head)", BLOCK),
        Kind("layer rotary", ("blocks.{l}.attn.hook_cos|hook_sin",), "the rotary tables as this layer receives them",
             "(batch, pos, d_rot)", REFERENCE),
        Kind("attention scores", ("blocks.{l}.attn.hook_attn_scores",),
             "pre-softmax scores, scaled by 1/sqrt(d_head), after the causal mask: the knockout hook "
             "(`knockout.hooks` sets blocked edges to the minimum here)", "(batch, n_heads, pos, pos)", REFERENCE),
        Kind("attention pattern", ("blocks.{l}.attn.hook_pattern",), "post-softmax attention weights (query x key)",
             "(batch, n_heads, pos, pos)", REFERENCE),
        Kind("head outputs z", ("blocks.{l}.attn.hook_z", "blocks.{l}.attn.o.hook_in"),
             "each head's pattern-weighted values, the input of the output projection", "(batch, pos, n_heads, d_head)",
             BLOCK),
        Kind("attention output", ("blocks.{l}.attn.hook_out", "blocks.{l}.attn.o.hook_out", "blocks.{l}.hook_attn_out"),
             "attention's contribution to the residual stream (`patching` component `attn_out`)",
             "(batch, pos, d_model)", BLOCK),
        Kind("per-head result", ("blocks.{l}.attn.hook_result",),
             "each head's contribution to the residual stream, before the sum over heads "
             "(only with `model.set_use_attn_result(True)`)", "(batch, pos, n_heads, d_model)", FLAGGED),
        Kind("split attention input", ("blocks.{l}.attn.hook_q_input|hook_k_input|hook_v_input|hook_attn_in",
                                       "blocks.{l}.hook_q_input|hook_k_input|hook_v_input|hook_attn_in"),
             "a copy of the residual stream per head for q, k and v separately (`model.set_use_split_qkv_input(True)`) "
             "or one for all three (`hook_attn_in`, `model.set_use_attn_in(True)`)",
             "(batch, pos, n_heads or n_kv_heads, d_model)", FLAGGED),
        Kind("attention hidden states", ("blocks.{l}.attn.hook_hidden_states",),
             "declared by TransformerLens' attention bridges; fired only by fused-QKV attention, which these "
             "models do not have", "never fires", BLOCK),
        Kind("residual mid", ("blocks.{l}.hook_resid_mid",),
             "the residual stream after attention, before the MLP (`patching` component `resid_mid`)",
             "(batch, pos, d_model)", BLOCK),
        Kind("MLP input", ("blocks.{l}.hook_mlp_in", "blocks.{l}.mlp.hook_in", "blocks.{l}.mlp.gate|in.hook_in"),
             "what the MLP reads: ln2's output (`hook_mlp_in` only with `model.set_use_hook_mlp_in(True)`; it holds "
             "`hook_resid_mid`, before ln2)", "(batch, pos, d_model)", BLOCK),
        Kind("MLP hidden", ("blocks.{l}.mlp.hook_pre|hook_pre_linear|hook_post", "blocks.{l}.mlp.gate|in.hook_out",
                            "blocks.{l}.mlp.out.hook_in"),
             "the gated MLP's hidden layer: gate projection (`hook_pre`), up projection (`hook_pre_linear`) and "
             "act(gate) x up (`hook_post`)", "(batch, pos, d_mlp)", BLOCK),
        Kind("MLP output", ("blocks.{l}.mlp.hook_out", "blocks.{l}.mlp.out.hook_out", "blocks.{l}.hook_mlp_out"),
             "the MLP's contribution to the residual stream (`patching` component `mlp_out`)", "(batch, pos, d_model)",
             BLOCK),
        Kind("residual out", ("blocks.{l}.hook_out", "blocks.{l}.hook_resid_post"),
             "the residual stream leaving block l (Qwen3-VL adds DeepStack features after it, so the next block's "
             "`hook_resid_pre` differs at the video positions)", "(batch, pos, d_model)", BLOCK),
        Kind("final residual", ("unembed.hook_in",), "the final norm's output, which the unembedding reads",
             "(batch, pos, d_model)", OUTSIDE),
        Kind("logits", ("hook_unembed", "unembed.hook_out"), "logits over the vocabulary", "(batch, pos, d_vocab)",
             OUTSIDE),
    ],
}
KINDS = [kind for kinds in KINDS_BY_PART.values() for kind in kinds]


def kind_of(name: str) -> Kind | None:
    """The kind of a hook name (the first whose patterns match), or None."""
    return next((kind for kind in KINDS if kind.regex.fullmatch(name)), None)


@dataclass(frozen=True)
class Reason:
    """Why hooks matching ``names`` stay silent on every prompt, where ``applies(model)``."""

    names: str  # a regex over hook names
    text: str
    applies: Callable = lambda model: True


def _opaque_vision_tower(model) -> bool:
    from transformer_lens.model_bridge.generalized_components.base import GeneralizedComponent

    return type(model.bridge.vision_encoder) is GeneralizedComponent


def _no_qk_norm(model) -> bool:
    return not hasattr(model.bridge.blocks[0].attn.original_component, "q_norm")


#: Found by reading TransformerLens' bridge components (4.x) and the models' forwards; the tests
#: check that every hook no prompt reaches has one whose condition holds.
REASONS = [
    Reason(r".*\.attn\.hook_hidden_states", "TransformerLens declares it on every attention bridge but only its "
           "fused-QKV attention fires it; these models project q, k and v separately"),
    Reason(r"vision_projector\.hook_projected", "TransformerLens' projector bridge declares it and never fires it; "
           "`vision_projector.hook_out` holds the projected features"),
    Reason(r"vision_encoder\.hook_(patch|pos)_embed", "TransformerLens' CLIP and SigLIP tower bridges declare it and "
           "never fire it; `vision_encoder.embeddings.hook_out` holds the embeddings"),
    Reason(r"rotary_emb\.hook_out|hook_pos_embed", "the rotary embedding returns a (cos, sin) pair, which "
           "TransformerLens passes through `rotary_emb.hook_cos` and `hook_sin` instead (`hook_pos_embed` is an "
           "alias of `rotary_emb.hook_out`)"),
    Reason(r"blocks\.\d+\.attn\.hook_(q|k)_normed", "the adapter maps an optional q/k norm for text towers that have "
           "one (Qwen3); this model's attention has none", _no_qk_norm),
    Reason(r"vision_encoder\.hook_in", "the model calls its vision tower with `pixel_values=` as a keyword, and "
           "TransformerLens' generic component hooks only a first positional tensor or a known keyword "
           "(`hidden_states`, `input_ids`, ...); `vision_encoder.hook_out` fires", _opaque_vision_tower),
    Reason(r"vision_encoder\..*\.(hook_result|hook_(q|k|v)_input|hook_attn_in)", "the vision tower keeps Hugging "
           "Face's attention module; TransformerLens' per-head flags reroute only the language model's attention"),
]


def reason_for(name: str, model) -> str | None:
    """Why ``name`` never fires in ``model``, if known."""
    return next((r.text for r in REASONS if re.fullmatch(r.names, name) and r.applies(model)), None)
