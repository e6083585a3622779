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


def _layer_chunks(grads: PatternGradients, bytes_per_layer: int) -> list[slice]:
    """Slices of the layers, as many at once as ``CHUNK_BYTES`` allows: each is read with a few
    large operations instead of one small one per layer (fewer kernel launches on a GPU)."""
    n_layers = grads.shape[0]
    size = max(1, min(n_layers, CHUNK_BYTES // max(1, bytes_per_layer)))
    return [slice(start, min(start + size, n_layers)) for start in range(0, n_layers, size)]


def mask_effects(grads: PatternGradients, masks: list[Bool[torch.Tensor, "query key"]], per_head: bool = False,
                 integrated: bool = False) -> list[Float[torch.Tensor, "layer *head"]]:  # fmt: skip
    """Effect on log P(answer) of blocking each mask's edges, per layer (mean over the batch's path
    points). The masks' rows share few distinct key sets (a frame's rows all lose the same earlier
    frames): the layers are read once, by one matmul against every distinct key set."""
    device = grads.device
    masks = [m.to(device) for m in masks]
    rows = [m.any(-1).nonzero().squeeze(-1) for m in masks]
    keysets, inverse = torch.unique(torch.cat([m[r] for m, r in zip(masks, rows)]), dim=0, return_inverse=True)
    columns = inverse.split([len(r) for r in rows])
    onehot = keysets.T.float()  # (N, distinct key sets)
    alphas = grads.alphas.to(device)
    _, batch, heads, n, _ = grads.shape
    every_row = torch.cat(rows).unique()  # only rows some mask touches are read
    position = torch.full((n,), -1, dtype=torch.long, device=device)
    position[every_row] = torch.arange(len(every_row), device=device)
    rows = [position[r] for r in rows]
    per_layer = 4 * batch * heads * len(every_row) * (2 * onehot.shape[1] + 1) + grads.bytes_per_layer(len(every_row))
    values: list[list[torch.Tensor]] = [[] for _ in masks]
    for layers in _layer_chunks(grads, per_layer):
        pattern, weighted = grads.layers(layers, every_row)
        s_groups, p_groups = weighted @ onehot, pattern @ onehot  # (layers, batch, heads, rows, sets)
        s_all = weighted.sum(-1)
        for i, (q, c) in enumerate(zip(rows, columns)):
            effect = _effect(s_groups[..., q, c], p_groups[..., q, c], s_all[..., q], alphas, integrated)
            values[i].append(effect.sum(-1).mean(1))  # (layers, heads)
    out = [torch.cat(v).cpu() for v in values]
    return out if per_head else [v.sum(-1) for v in out]


def group_effects(grads: PatternGradients, mask: Bool[torch.Tensor, "query key"], per_head: bool = False,
                  integrated: bool = False) -> Float[torch.Tensor, "layer *head"]:  # fmt: skip
    """``mask_effects`` of one mask."""
    return mask_effects(grads, [mask], per_head, integrated)[0]


def pair_effects(grads: PatternGradients, query_groups: list[torch.Tensor], key_groups: list[torch.Tensor],
                 per_head: bool = False, integrated: bool = False,
                 self_edges: bool = True) -> Float[torch.Tensor, "layer *head qgroup kgroup"]:  # fmt: skip
    """Effect of blocking key group j from query group i, for every (i, j) at once, per layer:
    (layer, [head,] n_query_groups, n_key_groups); a pair with no causal edge is 0.
    ``self_edges=False``: each query keeps its own edge (query = key) open."""
    device = grads.device
    _, batch, heads, n, _ = grads.shape
    onehot = torch.zeros(n, len(key_groups), device=device)
    for j, positions in enumerate(key_groups):
        onehot[torch.as_tensor(positions, device=device), j] = 1
    alphas = grads.alphas.to(device)
    queries = [torch.as_tensor(positions, device=device).reshape(-1) for positions in query_groups]
    widest = max(len(q) for q in queries)
    out = []
    per_layer = 4 * batch * heads * widest * (2 * n + 3 * len(key_groups)) + grads.bytes_per_layer(widest)
    for layers in _layer_chunks(grads, per_layer):
        per_group = []
        for q in queries:  # keys after a query hold no mass: non-causal pairs add 0
            probs, weighted = grads.layers(layers, q)  # (layers, batch, heads, rows, N)
            s_k, p_k, s = weighted @ onehot, probs @ onehot, weighted.sum(-1, keepdim=True)
            if not self_edges:  # take each row's own entry out of the key groups that hold it
                rows = torch.arange(len(q), device=device)
                own = onehot[q]  # (rows, key groups)
                s_k = s_k - weighted[..., rows, q, None] * own
                p_k = p_k - probs[..., rows, q, None] * own
            per_group.append(_effect(s_k, p_k, s, alphas, integrated).sum(-2).mean(1))  # (layers, heads, key groups)
        out.append(torch.stack(per_group, -2))  # (layers, heads, query groups, key groups)
    stacked = torch.cat(out).cpu()
    return stacked if per_head else stacked.sum(1)


def key_effects(grads: PatternGradients, query: int, keys: torch.Tensor, per_head: bool = False,
                integrated: bool = False) -> Float[torch.Tensor, "layer *head key"]:  # fmt: skip
    """Effect of blocking each single key of ``keys`` from query position ``query``, per layer."""
    groups = [torch.as_tensor([int(k)]) for k in torch.as_tensor(keys).reshape(-1)]
    return pair_effects(grads, [torch.as_tensor([query])], groups, per_head, integrated).select(-2, 0)
