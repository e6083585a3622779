"""Attention through ``torch.nn.functional.scaled_dot_product_attention`` when no hook needs the
scores, with edge masks applied as boolean attention masks.

TransformerLens reimplements attention step by step so that ``hook_attn_scores`` (pre-softmax)
and ``hook_pattern`` fire; that path materialises (batch, heads, N, N) scores in every layer and
is the reference. When no hook is registered on the scores, the pattern or the rotary tables of
a layer, that layer instead runs the Hugging Face attention module itself (its q/k/v/o
projections are the bridge's ``LinearBridge``s, so ``hook_q``, ``hook_k``, ``hook_v`` and
``hook_z`` still fire) with this package's attention function, which:

- fires ``hook_rot_q`` / ``hook_rot_k`` on the rotated queries and keys,
- applies the blocked edges of ``edge_masks(...)`` as a boolean mask (no N x N scores),
- records keys and values for ``record(...)`` (the sweep engine's baseline),
- and calls SDPA (flash or memory-efficient kernels: memory linear in N).

A layer on the reference path gets the KV cache under the name TransformerLens reads, and the
language model gets position ids for exactly the tokens it runs, so KV-cached generation
(``bridge.generate``) matches Hugging Face's ``generate`` on both paths.

The two paths compute the same function; they differ only by floating-point rounding.
"""

from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass, field
from typing import Iterator, Mapping

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformer_lens.hook_points import HookPoint
from transformer_lens.model_bridge.generalized_components import PositionEmbeddingsAttentionBridge

from hooked_video.runtime.edges import EdgeSet

ATTENTION_NAME = "hooked_video_sdpa"
#: Hook points whose hooks need the reference (TransformerLens) attention path.
REFERENCE_HOOKS = ("hook_attn_scores", "hook_pattern", "hook_cos", "hook_sin", "hook_q_normed", "hook_k_normed")
#: Sub-modules of an attention bridge whose hook points also need the reference path (Qwen3's
#: q/k norms: the fast path calls them on another layout, (batch, pos, heads, d_head)).
REFERENCE_MODULES = ("q_norm", "k_norm")
#: TransformerLens config flags that reroute attention inputs or outputs per head.
REFERENCE_FLAGS = ("use_attn_result", "use_split_qkv_input", "use_attn_in")


#: Query rows x keys per SDPA call when edge masks are applied: a band of rows at a time, so
#: no N x N mask or score tensor exists for long prompts.
MASK_BAND_ELEMENTS = 1 << 22


@dataclass
class _State:
    """What the attention function applies or records in the current forward."""

    blocked: Mapping[int, object] = field(default_factory=dict)  # layer -> EdgeSet (or .rows provider)
    recorder: dict | None = None  # layer -> (key, value)
    reference: bool = False  # force the TransformerLens path everywhere
    eager: bool = False  # the fast path computes attention with the reference path's arithmetic
    intercept: object = None  # called instead of the attention itself (see ``intercepted``)


_STATE = _State()


@contextlib.contextmanager
def _use(**changes) -> Iterator[None]:
    global _STATE
    previous = _STATE
    _STATE = _State(**{**previous.__dict__, **changes})
    try:
        yield
    finally:
        _STATE = previous


def edge_masks(blocked: Mapping[int, object]) -> contextlib.AbstractContextManager:
    """Within the context, layer l's queries may not read the keys that ``blocked[l]`` marks (an
    ``EdgeSet``, or a boolean (N, N) / (batch, N, N) mask, True = blocked), on the fast path.
    Same result as knockout hooks on ``hook_attn_scores``; masks are built a band of query rows
    at a time, so long prompts never hold an N x N tensor (with lazy edge sets)."""
    wrapped = {int(l): m if hasattr(m, "rows") else EdgeSet(m.bool()) for l, m in blocked.items()}
    return _use(blocked={**_STATE.blocked, **wrapped})


def record(store: dict) -> contextlib.AbstractContextManager:
    """Within the context, every fast-path attention call stores ``store[layer] = (key, value)``
    (rotated keys, before the GQA expansion)."""
    return _use(recorder=store)


def reference_attention() -> contextlib.AbstractContextManager:
    """Within the context, every layer runs TransformerLens' reference attention."""
    return _use(reference=True)


def eager_arithmetic() -> contextlib.AbstractContextManager:
    """Within the context, the fast path computes attention with the reference path's operations
    instead of SDPA: scores rounded to the model's dtype, masked with its minimum, a float32
    softmax cast back. Slower; in half precision it makes the fast path (and the sweep engine)
    round like the TransformerLens hook path, for comparisons at the last bits."""
    return _use(eager=True)


def intercepted(function) -> contextlib.AbstractContextManager:
    """Within the context, every fast-path attention call returns
    ``function(module, layer, query, key, value, attention_mask, scaling, **kwargs)`` (the output,
    (batch, q, heads, d_head)) instead of computing attention itself; query and key are rotated,
    keys and values before the GQA expansion. ``edge_masks`` do not apply: ``function`` owns the mask."""
    return _use(intercept=function)


def _eager(query, key, value, mask, scaling) -> torch.Tensor:
    """Attention as the reference path computes it; output (batch, q, heads, d_head)."""
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    scores = torch.matmul(query, key.transpose(-2, -1)) * (scaling if scaling is not None else query.shape[-1] ** -0.5)
    q_len, k_len = scores.shape[-2:]
    if mask is None:
        mask = torch.ones(q_len, k_len, dtype=torch.bool, device=scores.device).tril(k_len - q_len)
    if mask.dtype == torch.bool:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    else:
        scores = scores + mask
    weights = torch.nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    return torch.matmul(weights, value).transpose(1, 2).contiguous()


#: SDPA kernels for a masked call on a GPU (knockouts), in order of preference. cuDNN's attention
#: builds an execution plan for every new shape: each new prompt length cost a four-target sweep
#: 1-2 s more at the 7B shape on an H100, where memory-efficient attention (no plans) was 3-9%
#: slower per call (benchmarks/results.md). An empty tuple leaves the choice to PyTorch.
MASKED_SDPA_BACKENDS = (SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.MATH)


def attend(module, query, key, value, mask, dropout, scaling, **kwargs) -> torch.Tensor:
    """The fast path's attention of (batch, heads, q, d_head) queries under ``mask`` (None: causal),
    output (batch, q, heads, d_head): SDPA (masked calls on a GPU with ``MASKED_SDPA_BACKENDS``),
    or the reference arithmetic under ``eager_arithmetic()``."""
    if _STATE.eager:
        return _eager(query, key, value, mask, scaling)
    if mask is None or not query.is_cuda or not MASKED_SDPA_BACKENDS:
        return sdpa_attention_forward(module, query, key, value, mask, dropout=dropout, scaling=scaling, **kwargs)[0]
    with sdpa_kernel(list(MASKED_SDPA_BACKENDS), set_priority=True):
        return sdpa_attention_forward(module, query, key, value, mask, dropout=dropout, scaling=scaling, **kwargs)[0]


def _band(mask: torch.Tensor | None, edges, start: int, stop: int, offset: int, k_len: int, device) -> torch.Tensor:
    """The attention mask of query rows ``start .. stop - 1`` (keys ``offset + row`` are the
    rows' own positions): HF's mask (None, bool or additive) intersected with the allowed edges."""
    blocked = edges.rows(k_len, offset + start, offset + stop).to(device)
    allowed = (torch.arange(k_len, device=device)[None, :] <= torch.arange(offset + start, offset + stop, device=device)[:, None]) & ~blocked
    allowed = allowed if allowed.ndim == 3 else allowed[None]
    allowed = allowed[:, None]  # (batch, 1, rows, keys)
    if mask is None:
        return allowed
    mask = mask[..., start:stop, :k_len]
    if mask.dtype == torch.bool:
        return mask & allowed
    return mask.masked_fill(~allowed, torch.finfo(mask.dtype).min)


def attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """The attention function of the fast path (registered as ``ATTENTION_NAME``)."""
    ref = getattr(module, "_hooked_video_bridge", None)
    bridge = ref() if ref is not None else None
    if bridge is not None:
        query, key = bridge.hook_rot_q(query), bridge.hook_rot_k(key)
    layer = getattr(module, "layer_idx", None)
    if _STATE.recorder is not None:
        _STATE.recorder[layer] = (key, value)
    if _STATE.intercept is not None:
        return _STATE.intercept(module, layer, query, key, value, attention_mask, scaling, dropout=dropout, **kwargs), None
    edges = _STATE.blocked.get(layer)
    if edges is None:
        return attend(module, query, key, value, attention_mask, dropout, scaling, **kwargs), None
    q_len, k_len = query.shape[-2], key.shape[-2]
    band = max(1, MASK_BAND_ELEMENTS // k_len)
    outputs = []
    for start in range(0, q_len, band):
        stop = min(q_len, start + band)
        mask = _band(attention_mask, edges, start, stop, k_len - q_len, k_len, query.device)
        outputs.append(attend(module, query[..., start:stop, :], key, value, mask, dropout, scaling, **kwargs))
    return torch.cat(outputs, dim=1), None


# run as is inside torch.compile'd layers (it reads this module's state and may call hooks)
AttentionInterface.register(ATTENTION_NAME, torch.compiler.disable(attention_forward))
AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)


def _has_hooks(hook_point) -> bool:
    return hook_point is not None and bool(hook_point._forward_hooks or hook_point._backward_hooks)


class FastAttentionMixin:
    """Runs the HF attention module with ``attention_forward`` unless a hook, a TransformerLens
    flag or training needs the reference path. (``output_attentions``, which TransformerLens'
    ``run_with_cache`` always sets, is ignored: patterns are reachable only through hooks.)"""

    def needs_reference(self, kwargs: dict) -> bool:
        """True when a hook, a TransformerLens flag, training or ``reference_attention()`` needs the reference path."""
        if _STATE.reference or self.training:
            return True
        if any(getattr(self.config, flag, False) for flag in REFERENCE_FLAGS):
            return True
        if any(_has_hooks(getattr(self, name, None)) for name in REFERENCE_HOOKS):
            return True
        return any(_has_hooks(point) for point in self._norm_hook_points())

    def _norm_hook_points(self) -> list:
        """The hook points inside ``REFERENCE_MODULES``, found once (this runs in every forward)."""
        points = self.__dict__.get("_hooked_video_norm_hook_points")
        if points is None:
            norms = [getattr(self, name, None) for name in REFERENCE_MODULES]
            points = [m for norm in norms if isinstance(norm, torch.nn.Module) for m in norm.modules() if isinstance(m, HookPoint)]
            self.__dict__["_hooked_video_norm_hook_points"] = points
        return points

    def forward(self, *args, **kwargs):
        """The HF attention with ``attention_forward`` (fast path), or the bridge's reference attention."""
        if self.needs_reference(kwargs):
            if self._layer_idx in _STATE.blocked:
                raise RuntimeError("edge_masks() cannot be combined with hooks that need the reference attention path")
            if "cache" in kwargs:  # transformers' name for the KV cache; TransformerLens reads the former one
                kwargs.setdefault("past_key_values", kwargs.pop("cache"))
            return super().forward(*args, **kwargs)
        hidden = kwargs.pop("hidden_states") if "hidden_states" in kwargs else args[0]
        kwargs.pop("output_attentions", None)
        output, weights = self.original_component(hidden_states=self.hook_in(hidden), **kwargs)
        return self.hook_out(output), weights


#: Vision-attention hook points filled from the eager attention weights (TransformerLens fires
#: them after HF's attention returns its pattern): a hook on one needs the eager implementation.
VISION_PATTERN_HOOKS = ("hook_attn_scores", "hook_pattern")


def _vision_implementation(bridge_ref):
    """A forward pre-hook on an HF vision attention module: eager when its bridge's pattern or
    scores are hooked (TransformerLens fills them from the eager weights), SDPA otherwise. The
    language model's reference path does not change it, so both sweep paths see the same video."""

    def choose(module, args, kwargs):
        bridge = bridge_ref() if bridge_ref is not None else None
        hooked = any(_has_hooks(getattr(bridge, name, None)) for name in VISION_PATTERN_HOOKS)
        module.config._attn_implementation = "eager" if hooked else "sdpa"

    return choose


def install_fast_vision_attention(bridge, hf_model, text_config) -> int:
    """Let the vision tower's attention run SDPA when nothing needs its pattern: a pre-hook on
    each HF vision attention module (these families read ``config._attn_implementation`` at every
    call) picks the implementation. Returns how many modules were switched."""
    bridges = {id(m.original_component): m for m in bridge.modules() if getattr(m, "original_component", None) is not None}
    switched = 0
    for module in hf_model.modules():
        config = getattr(module, "config", None)
        if hasattr(module, "original_component") or not type(module).__name__.endswith("Attention"):
            continue  # a TransformerLens component, or not an attention module
        if config is None or config is text_config or getattr(config, "_attn_implementation", None) != "eager":
            continue
        if getattr(module, "_hooked_video_vision", False):
            continue
        owner = bridges.get(id(module))
        module.register_forward_pre_hook(_vision_implementation(weakref.ref(owner) if owner else None), with_kwargs=True)
        module._hooked_video_vision = True
        switched += 1
    return switched


_FAST_CLASSES: dict[type, type] = {}


def _fast_class(cls: type) -> type:
    if cls not in _FAST_CLASSES:
        _FAST_CLASSES[cls] = type(f"Fast{cls.__name__}", (FastAttentionMixin, cls), {})
    return _FAST_CLASSES[cls]


def _positions_of_new_tokens(module, args, kwargs):
    """A forward pre-hook on the language model: position ids for exactly the tokens it runs.

    A cached decoding step that gets the whole attention mask but no position ids (how
    TransformerLens' ``generate`` drives a model that derives its own positions) makes Qwen-VL's
    ``compute_3d_position_ids`` return mRoPE positions for every token of the mask, (3, batch,
    past + new); the rotary tables then rotate the new query into past + new queries. The new
    tokens' positions are the last ones (what Hugging Face's ``generate`` passes)."""
    positions, embeds = kwargs.get("position_ids"), kwargs.get("inputs_embeds")
    if positions is None or embeds is None or positions.shape[-1] <= embeds.shape[1]:
        return None
    return args, {**kwargs, "position_ids": positions[..., -embeds.shape[1] :]}


def install_fast_attention(bridge, text_config) -> int:
    """Give every rotary attention bridge of ``bridge`` the fast path and switch the language
    model's config to ``ATTENTION_NAME``; returns the number of layers switched. The language
    model also gets ``_positions_of_new_tokens`` (KV-cached generation)."""
    language_model = getattr(getattr(bridge.original_model, "model", None), "language_model", None)
    if getattr(language_model, "config", None) is text_config and not getattr(language_model, "_hooked_video_positions", False):
        language_model.register_forward_pre_hook(_positions_of_new_tokens, with_kwargs=True)
        language_model._hooked_video_positions = True
    switched = 0
    for module in bridge.modules():
        if not isinstance(module, PositionEmbeddingsAttentionBridge) or isinstance(module, FastAttentionMixin):
            continue
        hf_attention = module.original_component
        if hf_attention is None or getattr(hf_attention, "config", None) is not text_config:
            continue  # vision attention stays as it is
        module.__class__ = _fast_class(type(module))
        object.__setattr__(hf_attention, "_hooked_video_bridge", weakref.ref(module))
        if getattr(module, "_layer_idx", None) is None:
            module._layer_idx = getattr(hf_attention, "layer_idx", None)
        switched += 1
    if switched:
        text_config._attn_implementation = ATTENTION_NAME
    return switched
