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

from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence

import torch
from jaxtyping import Bool, Float

from hooked_video import attention

Intervention = Mapping[int, Bool[torch.Tensor, "N N"]]  # layer -> blocked [query, key]


@dataclass
class Trace:
    """The baseline forward of one prompt, as the engine needs it.

    Attributes:
        resid: per layer, the residual stream entering it, (1, N, d_model).
        keys, values: per layer, rotated keys and values, (1, kv_heads, N, d_head).
        position_embeddings: the rotary (cos, sin) tables the layers receive, (1, N, d_rot) each.
        logits: the last position's logits, (vocab,).
    """

    resid: list[torch.Tensor]
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    position_embeddings: tuple[torch.Tensor, torch.Tensor]
    logits: Float[torch.Tensor, "vocab"]

    @property
    def n_positions(self) -> int:
        return self.resid[0].shape[1]


class PrefixCache:
    """A cache object for HF attention: prepends the baseline keys/values of positions < q0."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        self.keys, self.values = keys, values

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args, **kwargs):
        batch = key.shape[0]
        return (torch.cat([self.keys.expand(batch, -1, -1, -1), key], dim=2),
                torch.cat([self.values.expand(batch, -1, -1, -1), value], dim=2))  # fmt: skip


def first_row(intervention: Intervention) -> int | None:
    """The first query position any layer of the intervention blocks (None: nothing blocked)."""
    rows = [int(m.any(-1).nonzero()[0]) for m in intervention.values() if bool(m.any())]
    return min(rows) if rows else None


def first_layer(intervention: Intervention) -> int | None:
    layers = [l for l, m in intervention.items() if bool(m.any())]
    return min(layers) if layers else None


class Engine:
    """Runs knockout interventions on one model; see the module docstring."""

    def __init__(self, model) -> None:
        self.model = model
        language_model = model.hf_model.model.language_model
        self.layers = [getattr(block, "original_component", block) for block in language_model.layers]
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
        n_layers = len(self.layers)
        keys = [store[self.layers[l].self_attn.original_component.layer_idx][0] for l in range(n_layers)]
        values = [store[self.layers[l].self_attn.original_component.layer_idx][1] for l in range(n_layers)]
        return Trace([resid[l] for l in range(n_layers)], keys, values, seen["position_embeddings"], logits[0, -1])

    @torch.no_grad()
    def run(self, trace: Trace, interventions: Sequence[Intervention], max_rows: int) -> Iterator[tuple[list[int], torch.Tensor]]:
        """Yields (indices into ``interventions``, their last-position logits (batch, vocab)),
        one chunk at a time; a chunk holds at most ``max_rows`` recomputed rows per layer."""
        n = trace.n_positions
        plans = []
        for index, intervention in enumerate(interventions):
            q0, start = first_row(intervention), first_layer(intervention)
            if q0 is None:  # nothing blocked: the baseline itself
                yield [index], trace.logits[None]
                continue
            plans.append((q0, start, index))
        plans.sort()
        while plans:
            q0 = plans[0][0]
            size = max(1, max_rows // (n - q0))
            chunk, plans = plans[:size], plans[size:]
            yield [i for _, _, i in chunk], self._run_chunk(trace, q0, chunk, interventions)

    def _run_chunk(self, trace: Trace, q0: int, chunk, interventions) -> torch.Tensor:
        n = trace.n_positions
        device = trace.resid[0].device
        causal = torch.ones(n, n, dtype=torch.bool, device=device).tril()[q0:]
        cos, sin = (t[:, q0:] for t in trace.position_embeddings)
        allowed_rows: dict[int, torch.Tensor] = {}  # id(blocked mask) -> allowed rows q0..N-1

        def allowed(mask: torch.Tensor | None) -> torch.Tensor:
            if mask is None:
                return causal
            if id(mask) not in allowed_rows:
                allowed_rows[id(mask)] = causal & ~mask[q0:].to(device)
            return allowed_rows[id(mask)]

        order = sorted(chunk, key=lambda plan: plan[1])  # by first blocked layer
        active: list[int] = []
        hidden = trace.resid[0].new_empty(0, n - q0, trace.resid[0].shape[-1])
        for layer_index, layer in enumerate(self.layers):
            joining = [i for _, start, i in order if start == layer_index]
            if joining:
                hidden = torch.cat([hidden, trace.resid[layer_index][:, q0:].expand(len(joining), -1, -1)])
                active += joining
            if not active:
                continue
            mask = torch.stack([allowed(interventions[i].get(layer_index)) for i in active])[:, None]
            cache = PrefixCache(trace.keys[layer_index][:, :, :q0], trace.values[layer_index][:, :, :q0])
            output = layer(hidden, attention_mask=mask, position_embeddings=(cos, sin), cache=cache)
            hidden = output[0] if isinstance(output, tuple) else output
        logits = self.head(self.norm(hidden[:, -1:]))[:, -1]
        position = {index: row for row, index in enumerate(active)}
        return logits[[position[i] for _, _, i in chunk]]
