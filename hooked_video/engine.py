"""Knockout passes that recompute only what a knockout changes (exact, no approximation).

One baseline forward of a prompt is recorded (``Engine.trace``): the residual stream entering
every decoder layer, every layer's keys and values, the rotary tables and the last position's
logits. A pass blocks an edge set in some layers (``Intervention``: layer -> blocked (N, N)
mask). Two facts make most of its work unnecessary:

1. Layers below the first blocked layer ``a`` compute exactly what the baseline computed, so the
   pass starts from the baseline's residual stream entering layer ``a``.
2. With causal attention, blocking edges whose queries are all at positions >= ``q0`` leaves
   every position < ``q0`` unchanged in every layer. So only rows ``q0 .. N-1`` are recomputed;
   their queries read the baseline's keys and values for positions < ``q0`` (a prefix cache)
   and the pass's own for the rest.

A pass of a "-> last" condition recomputes one row per layer; question-side conditions about a
hundred; cross-frame almost everything above its window. Passes that share ``q0`` run as one
batch, each joining at its first blocked layer, each with its own boolean attention mask per
layer (SDPA, no scores materialised). Only the last position goes through the final norm and
the unembedding.

The engine drives the Hugging Face decoder layers behind the bridge directly, so it runs only
when no TransformerLens hook is registered (``Engine.usable``); ``flow.sweep`` falls back to the
hook path otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Mapping, Sequence

import torch
from jaxtyping import Bool, Float

from hooked_video import attention
from hooked_video.fastpath import layer_module

Intervention = Mapping[int, Bool[torch.Tensor, "N N"]]  # layer -> blocked [query, key]


@dataclass
class Trace:
    """The baseline forward of one prompt, as the engine needs it.

    Attributes:
        resid: per layer, the residual stream entering it, (1, N, d_model).
        keys, values: per layer, rotated keys and values, (1, kv_heads, N, d_head).
        position_embeddings: the rotary (cos, sin) tables the layers receive, (1, N, d_rot) each.
        logits: the last position's logits, (vocab,).
        additions: per layer, what the model adds to the residual stream after it, (N, d_model)
            (Qwen3-VL's DeepStack features at the video positions).
    """

    resid: list[torch.Tensor]
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    position_embeddings: tuple[torch.Tensor, torch.Tensor]
    logits: Float[torch.Tensor, "vocab"]
    additions: dict[int, torch.Tensor] = field(default_factory=dict)

    @property
    def n_positions(self) -> int:
        return self.resid[0].shape[1]


class PrefixCache:
    """A cache object for HF attention: prepends the baseline keys/values of positions < q0."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        self.keys, self.values = keys, values

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args, **kwargs):
        """The baseline keys/values of positions < q0 followed by the pass's own, per batch item."""
        batch = key.shape[0]
        return (torch.cat([self.keys.expand(batch, -1, -1, -1), key], dim=2),
                torch.cat([self.values.expand(batch, -1, -1, -1), value], dim=2))  # fmt: skip


class _FirstBlocked:
    """First blocked query row and first blocked layer of interventions, computed once per mask."""

    def __init__(self) -> None:
        self._rows: dict[int, int | None] = {}

    def row(self, mask: torch.Tensor) -> int | None:
        if id(mask) not in self._rows:
            rows = mask.any(-1).nonzero()
            self._rows[id(mask)] = int(rows[0]) if len(rows) else None
        return self._rows[id(mask)]

    def __call__(self, intervention: Intervention) -> tuple[int | None, int | None]:
        blocked = [(layer, self.row(mask)) for layer, mask in intervention.items()]
        blocked = [(layer, row) for layer, row in blocked if row is not None]
        if not blocked:
            return None, None
        return min(row for _, row in blocked), min(layer for layer, _ in blocked)


#: Items of a chunk are packed side by side into sequences of about this many rows x N (their
#: rows share one copy of the prefix keys and values, with a block-diagonal mask), and packs are
#: batched: one item per pack when an item recomputes most of the prompt (cross-frame), all
#: items in one pack when each recomputes a row or two ("-> last" conditions).
PACK_ROWS_PER_POSITION = 1.0
#: At most this many mask entries (packs x rows x keys) per layer call: attention kernels may
#: expand a boolean mask per head, so long prompts run fewer passes at a time.
MAX_MASK_ELEMENTS = 2**28


class _Layout:
    """How a chunk's items are laid out for the decoder layers: in packs of ``group`` items,
    each pack one batch item whose rows are its items' rows side by side (sharing one copy of the
    prefix keys/values; a block-diagonal mask keeps items apart). Items are sorted by their first
    blocked layer and a pack joins at its first item's; later items of a pack recompute a few
    layers of baseline rows, which changes nothing but rounding."""

    def __init__(self, trace: Trace, q0: int, starts: list[int]) -> None:
        self.trace, self.q0 = trace, q0
        n = trace.n_positions
        self.m = n - q0
        self.group = max(1, min(len(starts), round(PACK_ROWS_PER_POSITION * n / self.m)))
        self.n_items = len(starts)
        self.pack_starts = [starts[i] for i in range(0, len(starts), self.group)]
        device = trace.resid[0].device
        self.causal = torch.ones(n, n, dtype=torch.bool, device=device).tril()[q0:]
        self._allowed: dict[int, torch.Tensor] = {}
        self.hidden = trace.resid[0].new_empty(0, self.group * self.m, trace.resid[0].shape[-1])

    def allowed(self, mask: torch.Tensor | None) -> torch.Tensor:
        """Allowed keys of rows q0..N-1 (all N keys) under a blocked mask (None: causal only)."""
        if mask is None:
            return self.causal
        if id(mask) not in self._allowed:
            self._allowed[id(mask)] = self.causal & ~mask[self.q0 :].to(self.causal.device)
        return self._allowed[id(mask)]

    def join(self, layer: int) -> int:
        """Packs whose first item starts at ``layer`` join; returns how many packs are active.
        The rows move to the layer's device (a model split over GPUs)."""
        device = self.trace.resid[layer].device
        self.hidden = self.hidden.to(device)
        joining = sum(start == layer for start in self.pack_starts)
        if joining:
            rows = self.trace.resid[layer][:, self.q0 :].repeat(joining, self.group, 1)
            self.hidden = torch.cat([self.hidden, rows])
        return self.hidden.shape[0]

    def inputs(self, layer: int, masks: list[torch.Tensor | None]) -> dict:
        """The decoder layer's keyword arguments; ``masks``: blocked masks of the active packs'
        items in order (the last pack padded with copies of its last item)."""
        trace, q0, m, group = self.trace, self.q0, self.m, self.group
        masks = masks + [masks[-1]] * (-len(masks) % group)
        packs = len(masks) // group
        allowed = torch.stack([self.allowed(mask) for mask in masks]).reshape(packs, group, m, -1)
        block = torch.zeros(packs, group, m, group, m, dtype=torch.bool, device=allowed.device)
        index = torch.arange(group, device=allowed.device)
        block[:, index, :, index, :] = allowed[..., q0:].transpose(0, 1)
        prefix = allowed[..., :q0].reshape(packs, group * m, q0)
        device = self.hidden.device
        mask = torch.cat([prefix, block.reshape(packs, group * m, group * m)], dim=-1)[:, None].to(device)
        cos, sin = (t[:, q0:].repeat(1, group, 1).to(device) for t in trace.position_embeddings)
        cache = PrefixCache(trace.keys[layer][:, :, :q0], trace.values[layer][:, :, :q0])
        return {"attention_mask": mask, "position_embeddings": (cos, sin), "cache": cache}

    def last_rows(self) -> torch.Tensor:
        """The last row of every item, in item order (padding dropped)."""
        return self.hidden[:, self.m - 1 :: self.m].reshape(-1, self.hidden.shape[-1])[: self.n_items]


class Engine:
    """Runs knockout interventions on one model; see the module docstring."""

    def __init__(self, model) -> None:
        self.model = model
        language_model = model.hf_model.model.language_model
        self.layers = [layer_module(block) for block in language_model.layers]
        self.norm = language_model.norm
        self.head = model.hf_model.lm_head

    @staticmethod
    def usable(model) -> bool:
        """True when no hook is registered on the model and its attention has the fast path."""
        if any(hp._forward_hooks or hp._backward_hooks for hp in model.hook_dict.values()):
            return False
        return all(isinstance(block.attn, attention.FastAttentionMixin) for block in model.bridge.blocks)

    @torch.no_grad()
    def trace(self, embedded) -> Trace:
        """One baseline forward of an ``EmbeddedPrompt`` (batch 1), recording what passes reuse."""
        if embedded.batch_size != 1:
            raise ValueError("the engine traces one prompt at a time")
        resid: dict[int, torch.Tensor] = {}
        seen: dict = {}

        def keep(index):
            def pre_hook(module, args, kwargs):
                resid[index] = args[0] if args else kwargs["hidden_states"]
                seen.setdefault("position_embeddings", kwargs.get("position_embeddings"))

            return pre_hook

        store: dict = {}
        handles = [layer.register_forward_pre_hook(keep(i), with_kwargs=True) for i, layer in enumerate(self.layers)]
        try:
            with attention.record(store):
                logits = self.model(embedded, logits_to_keep=1)
        finally:
            for handle in handles:
                handle.remove()
        indices = [getattr(layer.self_attn, "original_component", layer.self_attn).layer_idx for layer in self.layers]
        keys, values = [store[i][0] for i in indices], [store[i][1] for i in indices]
        n_layers = len(self.layers)
        additions = {layer: added.to(resid[0]) for layer, added in embedded.residual_additions().items()}
        return Trace([resid[l] for l in range(n_layers)], keys, values, seen["position_embeddings"], logits[0, -1], additions)

    @torch.no_grad()
    def run(self, trace: Trace, interventions: Sequence[Intervention], max_rows: int) -> Iterator[tuple[list[int], torch.Tensor]]:
        """Yields (indices into ``interventions``, their last-position logits (batch, vocab)),
        one chunk at a time; a chunk holds at most ``max_rows`` recomputed rows per layer."""
        n = trace.n_positions
        first_blocked, plans = _FirstBlocked(), []
        for index, intervention in enumerate(interventions):
            q0, start = first_blocked(intervention)
            if q0 is None:  # nothing blocked: the baseline itself
                yield [index], trace.logits[None]
                continue
            plans.append((q0, start, index))
        plans.sort()
        while plans:
            q0 = plans[0][0]
            size = max(1, min(max_rows // (n - q0), MAX_MASK_ELEMENTS // ((n - q0) * n)))
            chunk, plans = plans[:size], plans[size:]
            yield [i for _, _, i in chunk], self._run_chunk(trace, q0, chunk, interventions)

    def _run_chunk(self, trace: Trace, q0: int, chunk, interventions) -> torch.Tensor:
        order = sorted(chunk, key=lambda plan: plan[1])  # by first blocked layer
        layout = _Layout(trace, q0, [start for _, start, _ in order])
        items = [index for _, _, index in order]
        for layer_index, layer in enumerate(self.layers):
            packs = layout.join(layer_index)
            if not packs:
                continue
            active = items[: packs * layout.group]
            inputs = layout.inputs(layer_index, [interventions[i].get(layer_index) for i in active])
            output = layer(layout.hidden, **inputs)
            layout.hidden = output[0] if isinstance(output, tuple) else output
            if layer_index in trace.additions:
                added = trace.additions[layer_index][q0:].repeat(layout.group, 1)
                layout.hidden = layout.hidden + added.to(layout.hidden.device)
        rows = layout.last_rows()[:, None].to(self.norm.weight.device)
        logits = self.head(self.norm(rows).to(self.head.weight.device))[:, -1]
        position = {index: row for row, index in enumerate(items)}
        return logits[[position[i] for _, _, i in chunk]]
