"""Attention knockout (docs/method.md, "Attention knockout"): blocked edges as masks, applied by plain hooks.

An edge ``source -> target`` lets the target position's query read the source position's key.
Knocking it out sets that pre-softmax attention score to the dtype's minimum in every head of
the chosen layers (or in chosen heads: ``hooks(..., heads=[3])``), through TransformerLens hooks
on ``blocks.{l}.attn.hook_attn_scores`` (which fire after the causal mask, before the softmax)::

    edges = knockout.cross_frame(tm) | knockout.between(tm.video, tm.last)
    hooks = knockout.hooks(edges, layers=knockout.window(center=12, k=9, n_layers=32))
    logits = model.run_with_hooks(prompt, fwd_hooks=hooks)

An ``EdgeSet`` (``runtime.edges``, the type every execution path takes) is a boolean mask
``[target, source]`` (optionally with a leading batch axis, one edge set per batch item),
restricted to causal pairs (source <= target). Every constructor here builds it from a token
map's index tensors; nothing loops over pairs.
"""

from __future__ import annotations

import numbers
from typing import Callable, Iterable, Mapping, Sequence

import torch
from jaxtyping import Bool, Int

from hooked_video.model.tokens import TokenMap
from hooked_video.runtime.edges import EdgeSet, KnockoutError, RowsBuilder  # noqa: F401 (importable here, as in 0.2)

Positions = Int[torch.Tensor, "n"] | Sequence[int]


# ----- constructors from a TokenMap ----------------------------------------------------------
def _as_positions(group: Positions) -> torch.Tensor:
    """Positions as a flat LongTensor; fractions, booleans and negative positions are refused, not coerced."""
    positions = torch.as_tensor(group)
    if positions.numel() == 0:
        return positions.reshape(-1).long()
    if positions.dtype == torch.bool or positions.is_floating_point() or positions.is_complex():
        raise KnockoutError(f"positions must be whole numbers (a LongTensor or a list of ints), got {positions.dtype} "
                            f"values such as {positions.reshape(-1)[0].item()!r}; index with tm.video, tm.frame(i), ...")  # fmt: skip
    positions = positions.long().reshape(-1)
    if int(positions.min()) < 0:
        raise KnockoutError(f"position {int(positions.min())} is negative; positions count from 0 (the last one is "
                            "tm.n_positions - 1, or tm.last)")  # fmt: skip
    return positions


def _n_of(tm: TokenMap | int | None) -> int | None:
    return tm.n_positions if isinstance(tm, TokenMap) else tm


def _flags(positions: torch.Tensor, n: int) -> torch.Tensor:
    if len(positions) and int(positions.max()) >= n:
        raise KnockoutError(f"position {int(positions.max())} is outside a prompt of {n} positions")
    flags = torch.zeros(n, dtype=torch.bool)
    flags[positions] = True
    return flags


def between(source: Positions, target: Positions, tm: TokenMap | int | None = None) -> EdgeSet:
    """``source -/-> target``: every query in ``target`` is blocked from every key in ``source``."""
    source, target = _as_positions(source), _as_positions(target)

    def rows(n: int, start: int, stop: int) -> torch.Tensor:
        return _flags(target, n)[start:stop, None] & _flags(source, n)[None, :]

    return EdgeSet(rows, _n_of(tm))


def within(group: Positions, tm: TokenMap | int | None = None) -> EdgeSet:
    """``group -/-> group``: all edges inside a group, its diagonal (self-edges) included."""
    return between(group, group, tm)


def self_edges(group: Positions, tm: TokenMap | int | None = None) -> EdgeSet:
    """Each position's edge to itself, for the positions of ``group`` (e.g. ``last -/-> last``)."""
    group = _as_positions(group)

    def rows(n: int, start: int, stop: int) -> torch.Tensor:
        queries = torch.arange(start, stop)
        return (queries[:, None] == torch.arange(n)[None, :]) & _flags(group, n)[start:stop, None]

    return EdgeSet(rows, _n_of(tm))


def cross_frame(tm: TokenMap) -> EdgeSet:
    """For every frame i >= 1, frame i's tokens -/-> from all tokens of frames 0..i-1.

    Intra-frame edges are kept. Frames are the token map's temporal slots.
    """
    frame = tm.frame_of  # -1 outside the video

    def rows(n: int, start: int, stop: int) -> torch.Tensor:
        queries = frame[start:stop, None]
        return (queries >= 0) & (frame[None, :] >= 0) & (frame[None, :] < queries)

    return EdgeSet(rows, tm.n_positions)


# ----- layers ---------------------------------------------------------------------------------
#: Window styles: which layers are blocked when layer c is swept.
WINDOW_STYLES = {
    "center": "the k layers centred on c (clipped at the ends)",
    "inverse": "every layer except the k layers centred on c",
    "top_down": "c and every layer above it",
    "bottom_up": "layer 0 up to and including c",
}


def window(center: int, k: int, n_layers: int, style: str = "center", even: str = "above") -> list[int]:
    """The layers blocked when layer ``center`` is swept (0-based, ascending).

    ``style="center"`` (the paper's): ``max(0, c - (k-1)/2) .. min(L-1, c + (k-1)/2)`` for odd
    k (k = 9: c-4 .. c+4). For even k, ``even="above"`` puts the extra layer above the centre,
    ``even="below"`` below it (the released code's ``range(c - k//2, c - (-k//2))``). Other
    styles: see ``WINDOW_STYLES`` (``inverse`` uses the centred window's rule; ``top_down`` and
    ``bottom_up`` ignore k).
    """
    if not 0 <= center < n_layers:
        raise ValueError(f"window centre {center} is outside layers 0..{n_layers - 1}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"window size k must be an integer >= 1, got {k!r}")
    if style not in WINDOW_STYLES:
        raise ValueError(f"window style must be one of {sorted(WINDOW_STYLES)}, got {style!r}")
    if even not in ("above", "below"):
        raise ValueError(f"even must be 'above' or 'below', got {even!r}")
    if style == "top_down":
        return list(range(center, n_layers))
    if style == "bottom_up":
        return list(range(0, center + 1))
    below = k // 2 if even == "below" else (k - 1) // 2
    centred = list(range(max(0, center - below), min(n_layers - 1, center - below + k - 1) + 1))
    if style == "inverse":
        return [l for l in range(n_layers) if l not in centred]
    return centred


def attn_scores_hook_name(layer: int) -> str:
    """The pre-softmax attention-score hook of decoder layer ``layer``."""
    return f"blocks.{layer}.attn.hook_attn_scores"


def _blocking_hook(edges: EdgeSet, active: torch.Tensor | None, shared: dict,
                   heads: tuple[int, ...] | None = None) -> Callable:  # fmt: skip
    """A hook that fills blocked (batch, query, key) entries of the scores with dtype-min, in every
    head or in ``heads`` only.

    ``shared`` holds one checked device copy of the mask (and of the head selection) for all
    layers of one ``hooks()`` call.
    """

    def hook(scores: torch.Tensor, hook=None) -> torch.Tensor:
        key = (id(edges), scores.device, scores.shape[-1])
        if key not in shared:
            edges.check_no_empty_rows(scores.shape[-1])
            m = edges.mask_for(scores.shape[-1]).to(scores.device)
            shared[key] = m if m.ndim == 3 else m[None]
        m = shared[key]
        if m.shape[0] not in (1, scores.shape[0]):
            raise KnockoutError(f"the edge set has {m.shape[0]} batch items but the forward has {scores.shape[0]}")
        if active is not None:
            m = m & active.to(scores.device)[:, None, None]
        m = m[:, None]  # broadcast over heads
        if heads is not None:
            m = m & _head_selection(heads, scores.shape[1], scores.device, shared)
        return scores.masked_fill(m, torch.finfo(scores.dtype).min)

    return hook


def _head_selection(heads: tuple[int, ...], n_heads: int, device, shared: dict) -> Bool[torch.Tensor, "head 1 1"]:
    """The chosen heads as a (heads, 1, 1) selector, checked and built once per device."""
    key = ("heads", device, n_heads)
    if key not in shared:
        if max(heads) >= n_heads:
            raise KnockoutError(f"heads {list(heads)} asked for, but this layer has {n_heads} heads")
        chosen = torch.zeros(n_heads, dtype=torch.bool, device=device)
        chosen[list(heads)] = True
        shared[key] = chosen[:, None, None]
    return shared[key]


def hooks(
    edges: EdgeSet | Mapping[int, EdgeSet],
    layers: Iterable[int] | Bool[torch.Tensor, "batch n_layers"] | None = None,
    heads: Iterable[int] | int | None = None,
) -> list[tuple[str, Callable]]:
    """TransformerLens forward hooks that block ``edges`` in every head of ``layers`` (or in ``heads`` only).

    Args:
        edges: one EdgeSet for all chosen layers, or ``{layer: EdgeSet}`` for per-layer edges
            (then ``layers`` defaults to its keys).
        layers: layer indices; or a bool tensor (batch, n_layers) saying, per batch item, in
            which layers its (batched) edge set is blocked. Items whose flag is False run that
            layer unmodified, so one forward can hold many (condition, window) passes.
        heads: block in these heads only (head indices as TransformerLens counts them, the
            query heads where keys and values are shared); None: every head, the paper's knockout.

    Returns:
        ``[(hook_name, hook_fn), ...]`` for ``run_with_hooks(fwd_hooks=...)`` or ``hooks()``.
        Edge sets that know their length are checked here for fully blocked query rows, the
        others on first use.
    """
    heads = check_heads(heads)
    if isinstance(edges, Mapping):
        if layers is not None:
            raise ValueError("pass layers either as the keys of a {layer: EdgeSet} dict or as layers=, not both")
        per_layer = {int(l): e for l, e in edges.items()}
    elif isinstance(layers, torch.Tensor):
        if layers.dtype != torch.bool or layers.ndim != 2:
            raise ValueError("a layers tensor must be bool of shape (batch, n_layers)")
        used, shared = layers.any(0).nonzero().reshape(-1).tolist(), {}
        return [(attn_scores_hook_name(l), _blocking_hook(edges, layers[:, l], shared, heads)) for l in used]
    elif layers is None:
        raise ValueError("say which layers to block: layers=knockout.window(...) or a list of layers")
    else:
        per_layer = {int(l): edges for l in layers}
    for edge_set in {id(e): e for e in per_layer.values()}.values():
        if edge_set.n_positions is not None:
            edge_set.check_no_empty_rows()
    shared: dict = {}
    return [(attn_scores_hook_name(l), _blocking_hook(e, None, shared, heads)) for l, e in sorted(per_layer.items())]


def check_heads(heads) -> tuple[int, ...] | None:
    """``heads`` as a tuple of head indices (None stays None), or a ValueError saying what is wrong
    (whether they exist is checked against the model: ``hooks`` on first use)."""
    if heads is None:
        return None
    chosen = (heads,) if isinstance(heads, numbers.Integral) else tuple(heads) if isinstance(heads, Iterable) else ()
    if not chosen or not all(isinstance(h, numbers.Integral) and not isinstance(h, bool) and h >= 0 for h in chosen):
        raise ValueError(f"heads must be head indices (ints >= 0), or None for every head; got {heads!r}")
    return tuple(int(h) for h in chosen)
