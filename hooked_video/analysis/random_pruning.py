"""The random baseline's draw: per layer, a seeded uniform order of the causal pairs at or after
the video start; random pruning of ``b`` edges blocks the first ``b`` pairs of that order.

The order sorts the pairs by a keyed hash of their index (a bijection of 32-bit integers, so no
two pairs tie), computed with exact integer arithmetic: a seed gives the same edges on the CPU and
on any GPU, and the draw runs where the model is (no (layers, N, N) table built on the host and
copied over).
"""

from __future__ import annotations

import zlib
from typing import Iterator

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


def pair_keys(count: int, seed: int, layers: range, device=None) -> Int[torch.Tensor, "layer count"]:
    """Sort keys of candidate pairs 0..count-1 in each layer's order: distinct values in [0, 2**32)."""
    index = torch.arange(count, dtype=torch.int64, device=device)
    keys = torch.empty(len(layers), count, dtype=torch.int64, device=device)
    for row, layer in enumerate(layers):
        first, second = stream_keys(seed, layer)
        keys[row] = hash32(hash32(index ^ first) ^ second)
    return keys


def candidate_pairs(tm: TokenMap, device=None) -> tuple[Int[torch.Tensor, "count"], Int[torch.Tensor, "count"]]:
    """(query, key) of the pairs a random draw picks from, in a fixed order: the causal pairs
    whose query and key are both at or after the video start."""
    start = int(tm.video_group.min())
    k = tm.n_positions - start
    if k * (k + 1) // 2 >= 2**32:
        raise ValueError(f"{k * (k + 1) // 2} candidate pairs per layer: the random draw handles fewer than 2**32")
    query, key = torch.tril_indices(k, k, device=device) + start
    return query, key


def _orders(count: int, seed: int, n_layers: int, device) -> Iterator[tuple[range, torch.Tensor]]:
    """(layers, their candidates in blocking order (layers, count)), a few layers at a time: one
    batched sort each, no host round trip (about 2**25 keys per sort)."""
    step = max(1, 2**25 // max(count, 1))
    for first in range(0, n_layers, step):
        layers = range(first, min(first + step, n_layers))
        yield layers, pair_keys(count, seed, layers, device).argsort(dim=-1)


def random_ranks(tm: TokenMap, n_layers: int, seed: int, device=None) -> Int[torch.Tensor, "layer N N"]:
    """Per layer, the place of each candidate pair (``candidate_pairs``) in a uniform random order
    (seeded; a fresh order per layer; the same on every device); other pairs get the largest
    int32. Random pruning of ``b`` edges blocks the pairs placed below ``b``."""
    n = tm.n_positions
    query, key = candidate_pairs(tm, device)
    count = query.shape[0]
    ranks = torch.full((n_layers, n, n), torch.iinfo(torch.int32).max, dtype=torch.int32, device=device)
    steps = torch.arange(count, dtype=torch.int32, device=device).expand(1, count)
    for layers, order in _orders(count, seed, n_layers, device):
        place = torch.empty(order.shape, dtype=torch.int32, device=device).scatter_(1, order, steps.expand(order.shape))
        ranks[layers.start:layers.stop, query, key] = place
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
    masks = torch.zeros(n_layers, n, n, dtype=torch.bool, device=device)
    for layers, order in _orders(query.shape[0], seed, n_layers, device):
        chosen = order[:, :n_block]  # (layers, n_block): the first candidates of each order
        rows = torch.arange(layers.start, layers.stop, device=device)[:, None].expand(chosen.shape)
        masks[rows, query[chosen], key[chosen]] = True
    return {layer: ko.EdgeSet(masks[layer]) for layer in range(n_layers)}


def causal_edges(n_positions: int) -> int:
    """Edges of one layer's causal triangle, diagonal included: N(N+1)/2."""
    return n_positions * (n_positions + 1) // 2


def sample_seed(seed: int, sample_id: str) -> int:
    """A per-sample seed independent of sample order (so a resumed run draws the same edges)."""
    return zlib.crc32(f"{seed}:{sample_id}".encode())
