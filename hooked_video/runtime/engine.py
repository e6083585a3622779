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
layer (SDPA, no scores materialised). Passes whose masks have agreed in every layer since they
joined are one computation (a lane) until they differ: windows clamped at the first layer share
their first layers. Only the last position is read after the last layer, so that layer's MLP
runs on the last row alone, and only the last position goes through the final norm and the
unembedding.

The engine drives the Hugging Face decoder layers behind the bridge directly, so it runs only
when no TransformerLens hook is registered (``Engine.usable``); ``flow.sweep`` falls back to the
hook path otherwise. ``Engine(model, compile=True)`` (``engine="compiled"``) runs each layer call
through ``torch.compile``, which fuses the element-wise work around the matrix products.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from typing import Iterator, Mapping, Sequence

import torch
from jaxtyping import Bool, Float

from hooked_video.runtime import attention
from hooked_video.runtime.fastpath import layer_module

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


#: Lanes of a chunk are packed side by side into sequences of about this many rows x N (their
#: rows share one copy of the prefix keys and values, with a block-diagonal mask), and packs are
#: batched: one lane per pack when a lane recomputes most of the prompt (cross-frame), all lanes
#: in one pack when each recomputes a row or two ("-> last" conditions).
PACK_ROWS_PER_POSITION = 1.0
#: At most this many mask entries (packs x rows x keys) per layer call: attention kernels may
#: expand a boolean mask per head, so long prompts run fewer passes at a time.
MAX_MASK_ELEMENTS = 2**28


def _by_mask(items: Sequence[int], mask_of) -> list[tuple[list[int], torch.Tensor | None]]:
    """``items`` grouped by the mask ``mask_of(item)`` (the same tensor object), in order."""
    groups: dict[int, tuple[list[int], torch.Tensor | None]] = {}
    for item in items:
        mask = mask_of(item)
        groups.setdefault(id(mask), ([], mask))[0].append(item)
    return list(groups.values())


class _Lanes:
    """The rows a chunk recomputes, as lanes of ``m = N - q0`` rows: items whose masks agreed in
    every layer since they joined share one lane (windows clamped at the bottom share their first
    layers), and a lane splits where its items' masks differ. Sharing changes nothing but the
    order of floating-point work. Lanes are laid out in packs of up to ``group`` lanes side by
    side (one copy of the prefix keys/values per pack; a block-diagonal mask keeps lanes apart)."""

    def __init__(self, trace: Trace, q0: int, n_items: int) -> None:
        self.trace, self.q0 = trace, q0
        n = trace.n_positions
        self.m = n - q0
        self.group = max(1, min(n_items, round(PACK_ROWS_PER_POSITION * n / self.m)))
        self.members: list[list[int]] = []  # the items of each lane
        self.states = trace.resid[0].new_empty(0, self.m, trace.resid[0].shape[-1])  # (lanes, m, d)
        device = trace.resid[0].device
        self.causal = torch.ones(n, n, dtype=torch.bool, device=device).tril()[q0:]
        self._allowed: dict[int, torch.Tensor] = {}
        self._rotary: dict = {}

    def advance(self, layer: int, joining: Sequence[int], mask_of) -> list[torch.Tensor | None]:
        """Splits lanes whose items' masks at ``layer`` differ, opens lanes for the items that
        join at ``layer`` (from the recorded residual), moves the rows to the layer's device
        (a model split over GPUs); returns each lane's blocked mask (None: causal only)."""
        members, source, masks = [], [], []
        for lane, items in enumerate(self.members):
            for shared, mask in _by_mask(items, mask_of):
                members.append(shared)
                source.append(lane)
                masks.append(mask)
        device = self.trace.resid[layer].device
        states = self.states.to(device)
        if len(source) != len(self.members):  # a lane split: its copies continue apart
            states = states[torch.tensor(source, device=device)]
        opened = _by_mask(joining, mask_of)
        if opened:
            rows = self.trace.resid[layer][0, self.q0 :]
            states = torch.cat([states, rows.expand(len(opened), -1, -1)])
            for shared, mask in opened:
                members.append(shared)
                masks.append(mask)
        self.members, self.states = members, states
        return masks

    def allowed(self, mask: torch.Tensor | None) -> torch.Tensor:
        """Allowed keys of rows q0..N-1 (all N keys) under a blocked mask (None: causal only)."""
        if mask is None:
            return self.causal
        if id(mask) not in self._allowed:
            self._allowed[id(mask)] = self.causal & ~mask[self.q0 :].to(self.causal.device)
        return self._allowed[id(mask)]

    def packed(self, masks: list[torch.Tensor | None]) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        """The lanes' rows as packs (packs, width x m, d) of ``width = min(group, lanes)`` lanes,
        the last pack padded with copies of the last lane, and the masks likewise padded."""
        width = min(self.group, len(masks))
        pad = -len(masks) % width
        states = self.states
        if pad:
            states = torch.cat([states, states[-1:].expand(pad, -1, -1)])
            masks = masks + [masks[-1]] * pad
        return states.reshape(-1, width * self.m, states.shape[-1]), masks

    def unpack(self, hidden: torch.Tensor, layer: int) -> None:
        """Takes a layer's output back as lanes, adding what the model adds after ``layer``."""
        self.states = hidden.reshape(-1, self.m, hidden.shape[-1])[: len(self.members)]
        if layer in self.trace.additions:
            self.states = self.states + self.trace.additions[layer][self.q0 :].to(self.states.device)

    def inputs(self, layer: int, masks: list[torch.Tensor | None], hidden: torch.Tensor) -> dict:
        """The decoder layer's keyword arguments for the packs ``hidden`` whose lanes have
        ``masks`` (padded, as ``packed`` returns them)."""
        trace, q0, m = self.trace, self.q0, self.m
        packs = hidden.shape[0]
        group = len(masks) // packs
        allowed = torch.stack([self.allowed(mask) for mask in masks]).reshape(packs, group, m, -1)
        if group == 1:
            mask = allowed
        else:
            block = torch.zeros(packs, group, m, group, m, dtype=torch.bool, device=allowed.device)
            index = torch.arange(group, device=allowed.device)
            block[:, index, :, index, :] = allowed[..., q0:].transpose(0, 1)
            prefix = allowed[..., :q0].reshape(packs, group * m, q0)
            mask = torch.cat([prefix, block.reshape(packs, group * m, group * m)], dim=-1)
        device = hidden.device
        mask = mask.reshape(packs, 1, group * m, -1).to(device)
        if (device, group) not in self._rotary:
            self._rotary[device, group] = tuple(t[:, q0:].repeat(1, group, 1).to(device) for t in trace.position_embeddings)
        cache = PrefixCache(trace.keys[layer][:, :, :q0], trace.values[layer][:, :, :q0])
        return {"attention_mask": mask, "position_embeddings": self._rotary[device, group], "cache": cache}

    def last_rows(self) -> torch.Tensor:
        """The last row of every lane, (lanes, d)."""
        return self.states[:, -1]


class _LastRowsOnly(torch.nn.Module):
    """A decoder layer's MLP for the model's last layer in the engine: only the last row of each
    lane is read after that layer, so the MLP runs on those rows alone (the other rows get zero,
    and nobody reads them)."""

    def __init__(self, mlp: torch.nn.Module, rows_per_lane: int) -> None:
        super().__init__()
        self.mlp, self.rows_per_lane = mlp, rows_per_lane

    @torch.compiler.disable  # eager in a compiled layer: ``rows_per_lane`` changes with the prompt
    def forward(self, hidden: Float[torch.Tensor, "packs rows d"]) -> Float[torch.Tensor, "packs rows d"]:
        if hidden.dim() != 3:  # a layer that flattens its rows: nothing to trim safely
            return self.mlp(hidden)
        last = slice(self.rows_per_lane - 1, None, self.rows_per_lane)
        out = torch.zeros_like(hidden)
        out[:, last] = self.mlp(hidden[:, last])
        return out


#: Names of the MLP child of the decoder layers this package supports.
_MLP_NAMES = ("mlp", "feed_forward")


def _last_layer(layer: torch.nn.Module, rows_per_lane: int) -> torch.nn.Module:
    """A shallow copy of ``layer`` (parameters shared) whose MLP computes only every
    ``rows_per_lane``-th row (the last of each lane); ``layer`` itself if it has no known MLP or
    an instance-level forward (accelerate's hooks on a model split over GPUs call the original)."""
    name = next((name for name in _MLP_NAMES if isinstance(layer._modules.get(name), torch.nn.Module)), None)
    if name is None or "forward" in layer.__dict__:
        return layer
    trimmed = copy.copy(layer)
    trimmed._modules = {**layer._modules, name: _LastRowsOnly(layer._modules[name], rows_per_lane)}
    return trimmed


def _run_layer(layer: torch.nn.Module, hidden: torch.Tensor, inputs: dict) -> torch.Tensor:
    """One decoder layer's output hidden states."""
    output = layer(hidden, **inputs)
    return output[0] if isinstance(output, tuple) else output


_COMPILED_RUN_LAYER = None
#: Compiled variants dynamo may keep per code object. HF's shared wrappers (the decoder layer's
#: and the attention's ``deprecate_kwarg`` wrapper are one function) get one per caller, per
#: batch size 1 / more and per family in the process, and the trimmed last layer its own; the
#: default (8) runs out within one sweep of a few families. Raised process-wide, once.
_RECOMPILE_LIMIT = 64


def _compiled_run_layer():
    """``_run_layer`` compiled by ``torch.compile`` (dynamic shapes; the attention function
    itself runs uncompiled), built once per process. Its input rows are handed over as a fresh
    tensor: dynamo guards on the layout of a view's base, which changes from call to call."""
    global _COMPILED_RUN_LAYER
    if _COMPILED_RUN_LAYER is None:
        config = torch._dynamo.config
        limit = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"  # torch < 2.7
        setattr(config, limit, max(getattr(config, limit), _RECOMPILE_LIMIT))
        compiled = torch.compile(_run_layer, dynamic=True)
        failed = []

        def run_compiled(layer: torch.nn.Module, hidden: torch.Tensor, inputs: dict) -> torch.Tensor:
            if not failed:
                try:
                    return compiled(layer, hidden.clone() if hidden._base is not None else hidden, inputs)
                except torch._dynamo.exc.BackendCompilerFailed as error:  # e.g. no C compiler for Triton
                    failed.append(error)
                    lines = [line for line in str(error).splitlines() if line.strip()]
                    reason = lines[0][:300] if lines else type(error).__name__
                    warnings.warn(f"torch.compile failed, so the sweep engine runs uncompiled (same results, slower): "
                                  f"{reason}")  # fmt: skip
            return _run_layer(layer, hidden, inputs)

        _COMPILED_RUN_LAYER = run_compiled
    return _COMPILED_RUN_LAYER


class Engine:
    """Runs knockout interventions on one model; see the module docstring.

    Args:
        model: a HookedVideoLLM.
        compile: run the decoder layers through ``torch.compile`` (fuses the norms, rotary
            embedding and MLP element-wise work; the first sweep pays the compilation).
    """

    def __init__(self, model, compile: bool = False) -> None:
        self.model = model
        language_model = model.hf_model.model.language_model
        self.layers = [layer_module(block) for block in language_model.layers]
        self.norm = language_model.norm
        self.head = model.hf_model.lm_head
        self.compile = compile
        self._run_layer = _compiled_run_layer() if compile else _run_layer

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
        lanes = _Lanes(trace, q0, len(chunk))
        starts = [(start, index) for _, start, index in chunk]
        last = len(self.layers) - 1
        for layer_index, layer in enumerate(self.layers):
            joining = [index for start, index in starts if start == layer_index]
            if not lanes.members and not joining:
                continue
            masks = lanes.advance(layer_index, joining, lambda index: interventions[index].get(layer_index))
            hidden, masks = lanes.packed(masks)
            module = _last_layer(layer, lanes.m) if layer_index == last else layer
            lanes.unpack(self._run_layer(module, hidden, lanes.inputs(layer_index, masks, hidden)), layer_index)
        rows = lanes.last_rows()[:, None].to(self.norm.weight.device)
        logits = self.head(self.norm(rows).to(self.head.weight.device))[:, -1]
        lane_of = {index: lane for lane, items in enumerate(lanes.members) for index in items}
        return logits[[lane_of[index] for _, _, index in chunk]]
