"""First-order effects of knocking out edge groups, from patterns and their gradients.

A knockout of key set K on query row q removes K from the row and renormalises the rest:
p'(k) = p(k) / (1 - P_K) off K, 0 on K, with P_K the row's mass on K. Linear in the pattern
(the metric is linearised, the softmax is not: the saturation fix of AtP*), the metric changes by

    sum_k g(k) (p'(k) - p(k)) = -(S_K - P_K S) / (1 - P_K),   S_K = sum_{k in K} g p,  S = sum_k g p,

summed over the rows and heads the knockout touches. Along an integrated-gradients path (the
edges' weights scaled by alpha, rows renormalised) the derivative with respect to alpha is
(S_K - P_K S) / alpha at the path's point; its mean over the path's points estimates the effect.
Each function returns one value per layer (and per head with ``per_head``).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from jaxtyping import Bool, Float

from hooked_video.analysis.attribution.gradients import PatternGradients

#: Rows whose mass on the removed keys is this close to 1 are capped (a knockout there would leave
#: almost nothing to renormalise; exact knockouts never empty a row).
MIN_REMAINING = 1e-6


#: Bytes the estimates' temporaries may take at once; layers are read in chunks that fit.
CHUNK_BYTES = 1 << 30


def _effect(s_k, p_k, s, alphas, integrated: bool):
    """The per-row effect on the metric: exact renormalisation (AtP) or the path's derivative (IG);
    ``alphas`` broadcasts over the batch axis (axis 1, after the layers)."""
    if integrated:
        return -(s_k - p_k * s) / alphas.view(1, -1, *[1] * (s_k.ndim - 2))
    return -(s_k - p_k * s) / (1 - p_k).clamp_min(MIN_REMAINING)


def mask_effects(grads: PatternGradients, masks: list[Bool[torch.Tensor, "query key"]], per_head: bool = False,
                 integrated: bool = False) -> list[Float[torch.Tensor, "layer *head"]]:  # fmt: skip
    """Effect on log P(answer) of blocking each mask's edges, per layer (mean over the batch's path
    points). The masks' rows share few distinct key sets (a frame's rows all lose the same earlier
    frames): the layers are read once, by one matmul against every distinct key set; each mask's
    effect is then taken over many layers at once (a few kernels per mask, not per layer)."""
    device = grads.device
    rows = [m.any(-1).nonzero().squeeze(-1) for m in masks]
    keysets, inverse = _distinct_rows(torch.cat([m[r] for m, r in zip(masks, rows)]))
    columns = [c.to(device) for c in inverse.split([len(r) for r in rows])]
    onehot = keysets.T.float().to(device)  # (N, distinct key sets)
    alphas = grads.alphas.to(device)
    _, batch, heads, n, _ = grads.shape
    rows = [r.to(device) for r in rows]
    every_row = torch.cat(rows).unique()  # only rows some mask touches are read
    position = torch.full((n,), -1, dtype=torch.long, device=device)
    position[every_row] = torch.arange(len(every_row), device=device)
    rows = [position[r] for r in rows]
    values: list[list[torch.Tensor]] = [[] for _ in masks]
    for s_groups, p_groups, s_all in _block_sums(grads, every_row, onehot):
        for i, (q, c) in enumerate(zip(rows, columns)):
            effect = _effect(s_groups[..., q, c], p_groups[..., q, c], s_all[..., q], alphas, integrated)
            values[i].append(effect.sum(-1).mean(1))  # (layers, heads)
    out = torch.stack([torch.cat(v) for v in values]).cpu().unbind(0)  # one copy to the host
    return list(out) if per_head else [v.sum(-1) for v in out]


def _block_sums(grads: PatternGradients, rows: torch.Tensor, onehot: torch.Tensor,
                self_edges: bool = True) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:  # fmt: skip
    """Per block of layers: S and P of each key group (``onehot``, (N, groups)) and S of the whole
    row, for the query ``rows``: (layers, batch, heads, rows, groups) twice and (layers, batch,
    heads, rows). A block holds as many layers' sums as ``CHUNK_BYTES`` allows, recomputed in
    chunks of layers that fit beside them. ``self_edges=False``: each row's own entry (query =
    key) is left out of its key groups."""
    _, batch, heads, _, _ = grads.shape
    reduced = 4 * batch * heads * len(rows) * (2 * onehot.shape[1] + 1)  # bytes of one layer's sums
    own = torch.arange(len(rows), device=rows.device)
    for block in _blocks(slice(0, grads.shape[0]), reduced):
        sums: list[list[torch.Tensor]] = [[], [], []]
        for layers in _blocks(block, reduced + grads.bytes_per_layer(len(rows))):
            pattern, weighted = grads.layers(layers, rows)
            s_k, p_k = weighted @ onehot, pattern @ onehot
            if not self_edges:
                s_k -= weighted[..., own, rows, None] * onehot[rows]
                p_k -= pattern[..., own, rows, None] * onehot[rows]
            for kept, value in zip(sums, (s_k, p_k, weighted.sum(-1))):
                kept.append(value)
            del pattern, weighted
        yield tuple(torch.cat(kept) for kept in sums)


def _distinct_rows(rows: Bool[torch.Tensor, "rows N"]) -> tuple[Bool[torch.Tensor, "sets N"], torch.Tensor]:
    """The distinct rows of a boolean matrix and, per row, the index of its distinct row (on the
    host, each row packed to bytes and looked up in a dict: ``unique(dim=0)`` sorts whole rows)."""
    packed = np.packbits(rows.cpu().numpy(), axis=1)
    index_of: dict[bytes, int] = {}
    inverse, representatives = [], []
    for i, row in enumerate(packed):
        key = row.tobytes()
        if key not in index_of:
            index_of[key] = len(representatives)
            representatives.append(i)
        inverse.append(index_of[key])
    distinct = packed[representatives]
    keysets = torch.from_numpy(np.unpackbits(distinct, axis=1, count=rows.shape[1]).astype(bool))
    return keysets, torch.tensor(inverse, dtype=torch.long)


def _blocks(layers: slice, bytes_per_layer: int) -> list[slice]:
    """``layers`` cut into slices as large as ``CHUNK_BYTES`` allows at ``bytes_per_layer`` each
    (a few large operations instead of one small one per layer: fewer kernel launches on a GPU)."""
    size = max(1, CHUNK_BYTES // max(1, bytes_per_layer))
    return [slice(start, min(start + size, layers.stop)) for start in range(layers.start, layers.stop, size)]


def group_effects(grads: PatternGradients, mask: Bool[torch.Tensor, "query key"], per_head: bool = False,
                  integrated: bool = False) -> Float[torch.Tensor, "layer *head"]:  # fmt: skip
    """``mask_effects`` of one mask."""
    return mask_effects(grads, [mask], per_head, integrated)[0]


def pair_effects(grads: PatternGradients, query_groups: list[torch.Tensor], key_groups: list[torch.Tensor],
                 per_head: bool = False, integrated: bool = False,
                 self_edges: bool = True) -> Float[torch.Tensor, "layer *head qgroup kgroup"]:  # fmt: skip
    """Effect of blocking key group j from query group i, for every (i, j) at once, per layer:
    (layer, [head,] n_query_groups, n_key_groups); a pair with no causal edge is 0 (keys after a
    query hold no mass). ``self_edges=False``: each query keeps its own edge (query = key) open.
    The query groups' rows are read together, once per layer."""
    device = grads.device
    n = grads.shape[3]
    onehot = torch.zeros(n, len(key_groups), device=device)
    for j, positions in enumerate(key_groups):
        onehot[torch.as_tensor(positions, device=device), j] = 1
    alphas = grads.alphas.to(device)
    queries = [torch.as_tensor(positions, device=device).reshape(-1) for positions in query_groups]
    every_row = torch.cat(queries).unique()
    position = torch.full((n,), -1, dtype=torch.long, device=device)
    position[every_row] = torch.arange(len(every_row), device=device)
    queries = [position[q] for q in queries]
    out = []
    for s_k, p_k, s in _block_sums(grads, every_row, onehot, self_edges):
        per_group = [_effect(s_k[..., q, :], p_k[..., q, :], s[..., q, None], alphas, integrated).sum(-2).mean(1)
                     for q in queries]  # (layers, heads, key groups) each  # fmt: skip
        out.append(torch.stack(per_group, -2))  # (layers, heads, query groups, key groups)
    stacked = torch.cat(out).cpu()
    return stacked if per_head else stacked.sum(1)


def key_effects(grads: PatternGradients, query: int, keys: torch.Tensor, per_head: bool = False,
                integrated: bool = False) -> Float[torch.Tensor, "layer *head key"]:  # fmt: skip
    """Effect of blocking each single key of ``keys`` from query position ``query``, per layer."""
    groups = [torch.as_tensor([int(k)]) for k in torch.as_tensor(keys).reshape(-1)]
    return pair_effects(grads, [torch.as_tensor([query])], groups, per_head, integrated).select(-2, 0)
