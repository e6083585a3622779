"""EdgeSet: blocked attention edges, the mask type every execution path applies (the hook path,
the fast attention and the sweep engine). ``analysis.knockout`` builds edge sets from token maps."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from jaxtyping import Bool, Int


class KnockoutError(ValueError):
    """A knockout that cannot be applied (e.g. it would leave a query with nothing to read)."""


RowsBuilder = Callable[[int, int, int], torch.Tensor]  # (N, start, stop) -> (*batch, stop - start, N)


class EdgeSet:
    """Blocked attention edges: ``mask[..., target, source]`` is True where target may not
    attend to source. Shape (N, N), or (batch, N, N) for one edge set per batch item; only
    causal pairs (source <= target) are ever included.

    Combine with ``|`` (union), ``-`` (difference) and ``&`` (intersection). A set built from
    positions alone (``between(tm.video, tm.last)``) learns the prompt length N from the set it
    is combined with, or from the attention scores when its hook runs. Sets built from token
    maps are lazy: ``rows(N, start, stop)`` computes a band of query rows without the full
    N x N mask (long videos); ``mask`` builds and caches the full mask.

    Args:
        mask_or_rows: a boolean (N, N) or (batch, N, N) mask, or a function
            ``(N, start, stop) -> (*batch, stop - start, N)`` giving blocked query rows.
        n_positions: N, when known.
    """

    def __init__(self, mask_or_rows: torch.Tensor | RowsBuilder, n_positions: int | None = None) -> None:
        if isinstance(mask_or_rows, torch.Tensor):
            mask = mask_or_rows
            if mask.ndim not in (2, 3) or mask.shape[-2] != mask.shape[-1]:
                raise ValueError(f"an EdgeSet mask must be (N, N) or (batch, N, N), got {tuple(mask.shape)}")
            n_positions = mask.shape[-1]
            self._rows: RowsBuilder = lambda n, start, stop: mask[..., start:stop, :]
        else:
            self._rows = mask_or_rows
        self._n = n_positions
        self._masks: dict[int, torch.Tensor] = {}

    # ----- construction ------------------------------------------------------------------
    @classmethod
    def empty(cls, n_positions: int | None = None) -> "EdgeSet":
        """An edge set that blocks nothing."""
        return cls(lambda n, start, stop: torch.zeros(stop - start, n, dtype=torch.bool), n_positions)

    @classmethod
    def stack(cls, edge_sets: Sequence["EdgeSet"]) -> "EdgeSet":
        """One edge set per batch item, from unbatched edge sets."""
        n = next((e._n for e in edge_sets if e._n is not None), None)
        return cls(lambda m, start, stop: torch.stack([e.rows(m, start, stop) for e in edge_sets]), n)

    # ----- masks -------------------------------------------------------------------------
    def _check_length(self, n_positions: int) -> None:
        if self._n is not None and n_positions != self._n:
            raise KnockoutError(
                f"this edge set was built for {self._n} positions but the prompt has {n_positions}; "
                "build edges from the token map of the prompt you run."
            )

    def rows(self, n_positions: int, start: int, stop: int) -> Bool[torch.Tensor, "*batch rows N"]:
        """Blocked keys of the query rows ``start .. stop - 1`` (causal pairs only)."""
        self._check_length(n_positions)
        if n_positions in self._masks:
            return self._masks[n_positions][..., start:stop, :]
        band = self._rows(n_positions, start, stop).bool()
        causal = torch.arange(n_positions, device=band.device)[None, :] <= torch.arange(start, stop, device=band.device)[:, None]
        return band & causal

    def rows_at(self, n_positions: int, queries: Sequence[int]) -> Bool[torch.Tensor, "*batch q N"]:
        """Blocked keys of the given query positions (any order)."""
        return torch.cat([self.rows(n_positions, int(q), int(q) + 1) for q in queries], dim=-2)

    def mask_for(self, n_positions: int) -> Bool[torch.Tensor, "*batch N N"]:
        """The boolean mask for a prompt of ``n_positions`` tokens (cached)."""
        self._check_length(n_positions)
        if n_positions not in self._masks:
            self._masks[n_positions] = self.rows(n_positions, 0, n_positions)
        return self._masks[n_positions]

    @property
    def mask(self) -> Bool[torch.Tensor, "*batch N N"]:
        if self._n is None:
            raise KnockoutError(
                "this edge set does not know the prompt length: call .mask_for(N), or combine it "
                "with a set built from a TokenMap (e.g. knockout.cross_frame(tm))."
            )
        return self.mask_for(self._n)

    @property
    def n_positions(self) -> int | None:
        return self._n

    def _combine(self, other: "EdgeSet", op: Callable) -> "EdgeSet":
        if self._n is not None and other._n is not None and self._n != other._n:
            raise KnockoutError(f"cannot combine edge sets for {self._n} and {other._n} positions")
        return EdgeSet(lambda n, start, stop: op(self.rows(n, start, stop), other.rows(n, start, stop)), self._n or other._n)

    def __or__(self, other: "EdgeSet") -> "EdgeSet":
        return self._combine(other, torch.logical_or)

    def __and__(self, other: "EdgeSet") -> "EdgeSet":
        return self._combine(other, torch.logical_and)

    def __sub__(self, other: "EdgeSet") -> "EdgeSet":
        return self._combine(other, lambda a, b: a & ~b)

    def __eq__(self, other) -> bool:
        return isinstance(other, EdgeSet) and torch.equal(self.mask, other.mask)

    __hash__ = None

    # ----- inspection --------------------------------------------------------------------
    @property
    def n_edges(self) -> int | list[int]:
        """Number of blocked edges (per batch item for a batched set)."""
        counts = self.mask.sum((-2, -1))
        return counts.tolist() if counts.ndim else int(counts)

    def pairs(self) -> Int[torch.Tensor, "n_edges 2"]:
        """(target, source) position pairs of an unbatched set."""
        if self.mask.ndim != 2:
            raise ValueError("pairs() is defined for an unbatched EdgeSet; index a batch item first")
        return self.mask.nonzero()

    def __getitem__(self, i: int) -> "EdgeSet":
        return EdgeSet(self.mask[i])

    def additive_mask(self, n_positions: int | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """A 4D additive attention mask (batch, 1, N, N): 0 where allowed, dtype-min where
        blocked or acausal. This is how the paper's released code applies a knockout."""
        mask = self.mask if n_positions is None else self.mask_for(n_positions)
        n = mask.shape[-1]
        blocked = mask | ~torch.ones(n, n, dtype=torch.bool, device=mask.device).tril()
        blocked = blocked if blocked.ndim == 3 else blocked[None]
        zeros = torch.zeros(blocked.shape, dtype=dtype, device=blocked.device)
        return zeros.masked_fill(blocked, torch.finfo(dtype).min)[:, None]

    def check_no_empty_rows(self, n_positions: int | None = None) -> None:
        """Raise if some query would have every causal key blocked (its softmax would be NaN)."""
        mask = self.mask if n_positions is None else self.mask_for(n_positions)
        n = mask.shape[-1]
        full = mask.sum(-1) >= torch.arange(1, n + 1, device=mask.device)
        if bool(full.any()):
            rows = full.nonzero()[:, -1].unique()[:5].tolist()
            raise KnockoutError(
                f"the knockout blocks every key of query position(s) {rows}; such a row has "
                "nothing to attend to. Keep at least its own edge or an untyped (system) token open."
            )

    def __repr__(self) -> str:
        if self._n is None:
            return "EdgeSet(N unknown until applied)"
        shape = "x".join(map(str, self.mask.shape))
        return f"EdgeSet({shape}, edges={self.n_edges})"
