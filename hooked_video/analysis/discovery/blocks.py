"""Every attention edge of every layer in groups of token blocks, and a pathway that closes some.

A prompt's positions fall into blocks: ``prefix`` (the text before the video: system prompt and
template), ``frame 0`` ... ``frame T-1`` (each frame's video tokens with its text), ``question``
(the question block with its options), ``text`` (any other text, e.g. the answer template) and
``last``. A group is ``(source block, target block, layer)``: the edges from the source block's
keys to the target block's queries in that layer, each token's own edge (query = key) left out.
The groups of one layer and the diagonal partition its causal triangle, so closing every group
leaves one edge per row, the token's own, and a pathway can be anything from the full model down
to that floor (2 / (N + 1) of the edges).

    pathway = BlockPathway(closed=(("prefix", "last", 3), ("frame 0", "frame 5", 7)), n_layers=16)
    pathways.evaluate(model, samples, pathway)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Bool, Int

from hooked_video.analysis import knockout as ko
from hooked_video.core.checks import InvalidInputError
from hooked_video.model.tokens import TokenMap

BlockGroup = tuple[str, str, int]  # (source block, target block, layer)


def blocks(tm: TokenMap) -> dict[str, Int[torch.Tensor, "positions"]]:
    """Block name -> its positions, in the order the blocks start (empty blocks left out)."""
    n, start = tm.n_positions, int(tm.video_group.min())
    owner = ["prefix" if p < start else "text" for p in range(n)]
    for i in range(tm.n_frames):
        for p in tm.frame_group(i).tolist():
            owner[p] = f"frame {i}"
    for p in tm.question.tolist():
        owner[p] = "question"
    for p in tm.last.tolist():
        owner[p] = "last"
    names = list(dict.fromkeys(owner))
    return {name: torch.tensor([p for p in range(n) if owner[p] == name]) for name in names}


def block_ids(tm: TokenMap) -> tuple[list[str], Int[torch.Tensor, "N"]]:
    """The block names and, per position, the index of its block in that list."""
    named = blocks(tm)
    ids = torch.empty(tm.n_positions, dtype=torch.long)
    for i, positions in enumerate(named.values()):
        ids[positions] = i
    return list(named), ids


def _strictly_causal(n: int) -> Bool[torch.Tensor, "N N"]:
    return torch.ones(n, n, dtype=torch.bool).tril(-1)


def group_sizes(tm: TokenMap) -> Int[torch.Tensor, "target source"]:
    """Edges of each (target block, source block) pair in one layer, own edges left out."""
    names, ids = block_ids(tm)
    onehot = torch.nn.functional.one_hot(ids, len(names)).float()
    return (onehot.T @ _strictly_causal(tm.n_positions).float() @ onehot).round().long()


def layer_groups(tm: TokenMap) -> list[tuple[str, str]]:
    """(source, target) of every block pair with at least one edge in a layer."""
    names = list(blocks(tm))
    sizes = group_sizes(tm)
    return [(names[s], names[t]) for t in range(len(names)) for s in range(len(names)) if sizes[t, s] > 0]


@dataclass(frozen=True)
class BlockPathway:
    """Attention with some block groups closed (see the module docstring); nothing else blocked.

    Attributes:
        closed: (source block, target block, layer) groups closed.
        n_layers: the depth of the model it was found on.
    """

    closed: tuple[BlockGroup, ...]
    n_layers: int

    def __post_init__(self) -> None:
        closed = tuple((str(s), str(t), int(layer)) for s, t, layer in self.closed)
        bad = [g for g in closed if not 0 <= g[2] < self.n_layers]
        if bad:
            raise InvalidInputError(f"block group {bad[0]!r} closes layer {bad[0][2]}, outside 0..{self.n_layers - 1}")
        object.__setattr__(self, "closed", closed)

    random_fraction = None  # the random baseline prunes the pathway's own share

    def check_model(self, model) -> None:
        if model.cfg.n_layers != self.n_layers:
            raise InvalidInputError(f"this block pathway was found on a model of {self.n_layers} layers; the model has "
                                    f"{model.cfg.n_layers}: find one on this model (discovery.size_curve)")  # fmt: skip

    def layer_edges(self, tm: TokenMap, n_layers: int) -> dict[int, ko.EdgeSet]:
        """Blocked edges of every layer: the closed groups' edges, own edges left open."""
        names, ids = block_ids(tm)
        index = {name: i for i, name in enumerate(names)}
        missing = sorted({b for s, t, _ in self.closed for b in (s, t)} - set(index))
        if missing:
            raise InvalidInputError(f"this pathway closes edges of blocks {missing}, which the prompt does not have "
                                    f"(its blocks: {names}): block pathways belong to one layout (number of frames)")  # fmt: skip
        pairs = torch.zeros(n_layers, len(names), len(names), dtype=torch.bool)
        for source, target, layer in self.closed:
            pairs[layer, index[target], index[source]] = True
        strict = _strictly_causal(tm.n_positions)
        return {layer: ko.EdgeSet(pairs[layer][ids[:, None], ids[None, :]] & strict) for layer in range(n_layers)}

    def open_groups(self, tm: TokenMap) -> list:
        """No named flows: ``pathways.faithfulness`` reports only the pathway as a whole ("outside")."""
        return []

    def settings(self) -> dict:
        """The pathway as a results folder records it (``from_settings`` rebuilds it)."""
        return {"granularity": "blocks", "n_layers": self.n_layers, "closed": [list(g) for g in self.closed]}

    @classmethod
    def from_settings(cls, settings: dict) -> "BlockPathway":
        return cls(tuple(tuple(g) for g in settings["closed"]), settings["n_layers"])

    def describe(self) -> str:
        return f"{len(self.closed)} block groups closed"
