"""The random baseline's draw: per layer, a seeded uniform order of the causal pairs at or after
the video start; random pruning of ``b`` edges blocks the first ``b`` pairs of that order.

The order sorts the pairs by a keyed hash of their index (a bijection of 32-bit integers, so no
two pairs tie), computed with exact integer arithmetic: a seed gives the same edges on the CPU and
on any GPU, and the draw runs where the model is (no (layers, N, N) table built on the host and
copied over).
"""

from __future__ import annotations

import zlib

import torch
from jaxtyping import Int

from hooked_video.analysis import knockout as ko
from hooked_video.model.tokens import TokenMap

_MASK32 = 0xFFFFFFFF
#: The draw's name in results stores: rows of another draw (the earlier seeded ``randperm``) are not reused.
RANDOM_DRAW = "hash32"


def hash32(x):
    """A bijection of 32-bit unsigned integers that mixes their bits (xor-shift-multiply with the
    constant 0x45D9F3B); ``x``: a Python int or an int64 tensor of values in [0, 2**32). The
    products stay below 2**59: exact in int64 on every device."""
    x = ((x >> 16) ^ x) * 0x45D9F3B & _MASK32
    x = ((x >> 16) ^ x) * 0x45D9F3B & _MASK32
    return (x >> 16) ^ x


def stream_keys(seed: int, layer: int) -> tuple[int, int]:
    """The two 32-bit keys of one (seed, layer) stream."""
    base = hash32((seed & _MASK32) ^ hash32(layer & _MASK32))
    return hash32(base ^ 0x5BD1E995), hash32(base ^ 0x1B873593)


def pair_keys(count: int, seed: int, layer: int, device=None) -> Int[torch.Tensor, "count"]:
    """Sort keys of candidate pairs 0..count-1 in one layer's order: distinct values in [0, 2**32)."""
    first, second = stream_keys(seed, layer)
    return hash32(hash32(torch.arange(count, dtype=torch.int64, device=device) ^ first) ^ second)


def candidate_pairs(tm: TokenMap, device=None) -> tuple[Int[torch.Tensor, "count"], Int[torch.Tensor, "count"]]:
    """(query, key) of the pairs a random draw picks from, in a fixed order: the causal pairs
    whose query and key are both at or after the video start."""
    start = int(tm.video_group.min())
    k = tm.n_positions - start
    if k * (k + 1) // 2 >= 2**32:
        raise ValueError(f"{k * (k + 1) // 2} candidate pairs per layer: the random draw handles fewer than 2**32")
    query, key = torch.tril_indices(k, k, device=device) + start
    return query, key


def random_ranks(tm: TokenMap, n_layers: int, seed: int, device=None) -> Int[torch.Tensor, "layer N N"]:
    """Per layer, the place of each candidate pair (``candidate_pairs``) in a uniform random order
    (seeded; a fresh order per layer; the same on every device); other pairs get the largest
    int32. Random pruning of ``b`` edges blocks the pairs placed below ``b``."""
    n = tm.n_positions
    query, key = candidate_pairs(tm, device)
    count = query.shape[0]
    ranks = torch.full((n_layers, n, n), torch.iinfo(torch.int32).max, dtype=torch.int32, device=device)
    place = torch.empty(count, dtype=torch.int32, device=device)
    steps = torch.arange(count, dtype=torch.int32, device=device)
    for layer in range(n_layers):
        place[pair_keys(count, seed, layer, device).argsort()] = steps  # candidates in the order they are blocked
        ranks[layer, query, key] = place
    return ranks


def random_layer_edges(tm: TokenMap, n_layers: int, fraction: float, seed: int,
                       ranks: Int[torch.Tensor, "layer N N"] | None = None, device=None) -> dict[int, ko.EdgeSet]:  # fmt: skip
    """Per layer, ``int(fraction * N(N+1)/2)`` causal edges drawn uniformly without replacement
    among pairs whose query and key are both at or after the video start; a fresh draw per layer:
    the first edges of ``random_ranks``' order. ``ranks``: that order, computed once for several
    fractions (their draws nest). ``device``: where the draw runs and the masks live (default: the
    CPU; the same edges anywhere)."""
    n = tm.n_positions
    n_block = int(fraction * causal_edges(n))
    query, key = candidate_pairs(tm, device if ranks is None else ranks.device)
    if n_block > query.shape[0]:
        raise ValueError(f"cannot block {n_block} edges per layer: only {query.shape[0]} pairs start at the video")
    if ranks is not None:
        return {layer: ko.EdgeSet(ranks[layer] < n_block) for layer in range(n_layers)}
    edges = {}
    for layer in range(n_layers):  # the n_block smallest keys (distinct), without sorting them all
        mask = torch.zeros(n, n, dtype=torch.bool, device=device)
        if n_block:
            keys = pair_keys(query.shape[0], seed, layer, device)
            chosen = keys <= keys.kthvalue(n_block).values
            mask[query[chosen], key[chosen]] = True
        edges[layer] = ko.EdgeSet(mask)
    return edges


def causal_edges(n_positions: int) -> int:
    """Edges of one layer's causal triangle, diagonal included: N(N+1)/2."""
    return n_positions * (n_positions + 1) // 2


def sample_seed(seed: int, sample_id: str) -> int:
    """A per-sample seed independent of sample order (so a resumed run draws the same edges)."""
    return zlib.crc32(f"{seed}:{sample_id}".encode())
