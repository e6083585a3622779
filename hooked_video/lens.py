"""Logit lens over video tokens and answer probability by layer (METHOD.md sections 5 and 6).

Layers of the lens (METHOD.md section 5): entry i < L-1 is the residual stream entering block i
(entry 0 is the input embedding, i.e. the projected video features at video positions); entry
L-1 is the final-norm output. Three explicit projections:

- ``"unembed"``: final norm, then W_U (the TransformerLens convention; entry L-1 gives the
  model's own logits).
- ``"unembed-raw"``: W_U without the norm at intermediate entries.
- ``"embed"``: the paper code's projection onto the INPUT embedding matrix W_E, no norm at
  intermediate entries.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Mapping, Sequence

import pandas as pd
import torch
from jaxtyping import Float, Int

from hooked_video.capture import capture
from hooked_video.prompt import LETTERS
from hooked_video.tokens import TokenMap

VARIANTS = ("unembed", "unembed-raw", "embed")


def _final_norm(model):
    return model.bridge.ln_final.original_component


def _unembed(model):
    return model.bridge.unembed.original_component


def _embedding_matrix(model) -> Float[torch.Tensor, "vocab d_model"]:
    return model.bridge.embed.original_component.weight


def lens_residuals(model, prompt, positions: torch.Tensor) -> list[torch.Tensor]:
    """METHOD.md's lens inputs at ``positions``: resid_pre of blocks 0..L-2, then the
    final-norm output; a list of L tensors (n_positions, d_model)."""
    n_layers = model.cfg.n_layers
    names = [f"blocks.{i}.hook_resid_pre" for i in range(n_layers - 1)] + [f"blocks.{n_layers - 1}.hook_resid_post"]
    acts = capture(model, prompt, names, lambda act: act[positions.to(act.device)])
    with torch.no_grad():
        norm = _final_norm(model)
        final = norm(acts[names[-1]].to(norm.weight.device))
    return [acts[n] for n in names[:-1]] + [final]


def project(model, resid: torch.Tensor, variant: str, is_final: bool) -> Float[torch.Tensor, "pos vocab"]:
    """Logits of one lens entry under a variant (the final entry is already normalised)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    with torch.no_grad():
        if variant == "embed":
            weight = _embedding_matrix(model)
            return resid.to(weight.device) @ weight.T
        if variant == "unembed" and not is_final:
            resid = _final_norm(model)(resid.to(_final_norm(model).weight.device))
        return _unembed(model)(resid.to(_unembed(model).weight.device))


@dataclass
class LensResult:
    """Top-k tokens of the logit lens at chosen positions of one prompt.

    Attributes:
        top_ids, top_probs: (n_layers, n_positions, k), tokens by decreasing probability.
        positions: the prompt positions (LongTensor, n_positions).
        token_map: the prompt's token map (frames and cells of video positions).
        variant: the projection used.
        str_vocab: decoded strings of every token id in top_ids.
    """

    top_ids: Int[torch.Tensor, "layer pos k"]
    top_probs: Float[torch.Tensor, "layer pos k"]
    positions: Int[torch.Tensor, "pos"]
    token_map: TokenMap
    variant: str
    str_vocab: dict[int, str]

    @property
    def n_layers(self) -> int:
        return self.top_ids.shape[0]

    def tokens(self, layer: int, rank: int = 0) -> list[str]:
        """Decoded rank-th token at every position for one lens entry."""
        return [self.str_vocab[int(i)] for i in self.top_ids[layer, :, rank]]

    def video_grid(self, rank: int = 0) -> tuple[Int[torch.Tensor, "layer T H W"], Float[torch.Tensor, "layer T H W"]]:
        """(ids, probs) of the rank-th token laid out on the (T, H, W) grid of video tokens."""
        grid = self.token_map.grid
        index = torch.full((self.token_map.n_positions,), -1, dtype=torch.long)
        index[self.positions] = torch.arange(len(self.positions))
        cells = index[grid.reshape(-1)]
        if bool((cells < 0).any()):
            raise ValueError("video_grid() needs the lens to cover every video position (the default)")
        shape = (self.n_layers, *grid.shape)
        return self.top_ids[:, cells, rank].reshape(shape), self.top_probs[:, cells, rank].reshape(shape)

    def to_frame(self) -> pd.DataFrame:
        """Long table: layer, position, frame, h, w, rank, token_id, token, prob."""
        n_layers, n_pos, k = self.top_ids.shape
        layer, pos, rank = torch.meshgrid(torch.arange(n_layers), torch.arange(n_pos), torch.arange(k), indexing="ij")
        positions = self.positions[pos.reshape(-1)]
        cells = self.token_map.cell[positions]
        ids = self.top_ids.reshape(-1).tolist()
        return pd.DataFrame({
            "layer": layer.reshape(-1).numpy(), "position": positions.numpy(),
            "frame": self.token_map.frame_of[positions].numpy(), "h": cells[:, 1].numpy(), "w": cells[:, 2].numpy(),
            "rank": rank.reshape(-1).numpy(), "token_id": ids, "token": [self.str_vocab[i] for i in ids],
            "prob": self.top_probs.reshape(-1).float().numpy(),
        })  # fmt: skip

    def __repr__(self) -> str:
        return f"LensResult(variant={self.variant!r}, layers={self.n_layers}, positions={len(self.positions)}, k={self.top_ids.shape[-1]})"


def logit_lens(model, prompt, positions: torch.Tensor | None = None, *, variant: str, top_k: int = 5) -> LensResult:
    """Logit lens at ``positions`` (default: all video tokens) of a VideoPrompt.

    Args:
        variant: required: "unembed" (final norm then W_U, the TransformerLens convention),
            "unembed-raw" (W_U, no norm) or "embed" (W_E, the paper code's choice). It is
            recorded in the result.
        top_k: tokens kept per (layer, position); probabilities are a softmax over the full vocabulary.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    tm = prompt.token_map
    positions = tm.video if positions is None else torch.as_tensor(positions, dtype=torch.long).reshape(-1)
    residuals = lens_residuals(model, prompt, positions)
    ids, probs = [], []
    for i, resid in enumerate(residuals):
        p = project(model, resid, variant, is_final=i == len(residuals) - 1).float().softmax(-1)
        top = p.topk(top_k, dim=-1)
        ids.append(top.indices.cpu())
        probs.append(top.values.cpu())
    top_ids = torch.stack(ids)
    unique = top_ids.unique().tolist()
    str_vocab = dict(zip(unique, model.tokenizer.convert_ids_to_tokens(unique)))
    return LensResult(top_ids, torch.stack(probs), positions, tm, variant, str_vocab)


# ----- keyword frequencies (Finding 2) ----------------------------------------------------------
@dataclass
class KeywordFrequencies:
    """Counts of keyword tokens among lens top-1 tokens, per layer bin.

    Attributes:
        raw: counts, rows = keywords (first sub-tokens) kept by the min-count filter plus "ALL"
            (their sum), columns = layer bins labelled 1-based ("1-5", "6-10", ...).
        normalized: each row of ``raw`` divided by its sum.
        average: mean of the normalised keyword rows (the bars of the paper's Fig. 4).
        dropped: keywords removed by the min-count filter.
    """

    raw: pd.DataFrame
    normalized: pd.DataFrame
    average: pd.Series
    dropped: list[str]


def _first_subtoken(tokenizer, text: str) -> str:
    return tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"][:1]).strip()


def first_subtokens(tokenizer, keywords: Sequence[str]) -> dict[str, set[str]]:
    """Each keyword's first sub-token (decoded, stripped) -> the strings that count as a hit.

    A keyword is tokenised alone and after a space (byte-level BPE tokenisers such as Qwen's
    split " walking" and "walking" differently; inside a sentence the spaced form is the one
    seen), and both first sub-tokens count for it.
    """
    table: dict[str, set[str]] = {}
    for keyword in keywords:
        first = _first_subtoken(tokenizer, keyword)
        if first:
            table.setdefault(first, set()).update({first} | ({_first_subtoken(tokenizer, " " + keyword)} - {""}))
    return dict(sorted(table.items()))


def layer_bins(n_layers: int, bin_size: int = 5, overlapping: bool = False) -> dict[str, range]:
    """Label -> layers of each bin. ``overlapping=True`` reproduces the released code, whose
    bins also take the next bin's first layer (a pandas label slice includes both ends)."""
    bins = {}
    for start in range(0, n_layers, bin_size):
        stop = min(start + bin_size + (1 if overlapping else 0), n_layers)
        bins[f"{start + 1}-{min(start + bin_size, n_layers)}"] = range(start, stop)
    return bins


def top1_counts(results: Sequence[LensResult]) -> list[Counter]:
    """Per lens entry, how often each top-1 token string occurs over all results."""
    n_layers = results[0].n_layers
    counters = [Counter() for _ in range(n_layers)]
    for result in results:
        for layer in range(n_layers):
            counters[layer].update(result.tokens(layer))
    return counters


def keyword_frequencies(
    results: LensResult | Sequence[LensResult],
    keywords: Sequence[str] | Mapping[str, Sequence[str]],
    tokenizer,
    bin_size: int = 5,
    overlapping_bins: bool = False,
    min_count: int = 100,
) -> KeywordFrequencies | dict[str, KeywordFrequencies]:
    """Keyword analysis of METHOD.md section 5 over lens results (one per sample).

    Args:
        keywords: a list of words, or ``{"spatial": [...], "temporal": [...]}`` for one table per group.
        tokenizer: reduces each keyword to its first sub-token; top-1 tokens are compared as
            decoded strings with SentencePiece/GPT-2 space markers removed ("▁open" counts as "open").
        bin_size: layers per bin. overlapping_bins: the released code's off-by-one bins.
        min_count: keywords with fewer hits over all bins are dropped.
    """
    results = [results] if isinstance(results, LensResult) else list(results)
    return keyword_table(top1_counts(results), keywords, tokenizer, bin_size, overlapping_bins, min_count)


def keyword_table(
    counts: Sequence[Counter],
    keywords: Sequence[str] | Mapping[str, Sequence[str]],
    tokenizer,
    bin_size: int = 5,
    overlapping_bins: bool = False,
    min_count: int = 100,
) -> KeywordFrequencies | dict[str, KeywordFrequencies]:
    """``keyword_frequencies`` from per-layer counts of top-1 token strings (see ``top1_counts``)."""
    if isinstance(keywords, Mapping):
        return {group: keyword_table(counts, words, tokenizer, bin_size, overlapping_bins, min_count)
                for group, words in keywords.items()}  # fmt: skip
    counters = [Counter({_strip_space_marker(k): v for k, v in c.items()}) for c in counts]
    words = first_subtokens(tokenizer, keywords)
    bins = layer_bins(len(counters), bin_size, overlapping_bins)
    raw = pd.DataFrame({label: [sum(counters[l][hit] for l in layers for hit in hits) for hits in words.values()]
                        for label, layers in bins.items()}, index=pd.Index(list(words), name="keyword"), dtype=float)  # fmt: skip
    keep = raw.sum(axis=1) >= min_count
    dropped = raw.index[~keep].tolist()
    raw = raw[keep]
    raw.loc["ALL"] = raw.sum(axis=0)
    normalized = raw.div(raw.sum(axis=1).where(lambda s: s > 0), axis=0)
    return KeywordFrequencies(raw, normalized, normalized.drop("ALL").mean(axis=0), dropped)


def _strip_space_marker(token: str) -> str:
    return token.replace("\u2581", " ").replace("\u0120", " ").strip()


# ----- answer probability by layer (Finding 3) --------------------------------------------------
def answer_probability_by_layer(model, prompt, final_norm: bool = True) -> pd.DataFrame:
    """Probability of each option letter at the last position after every block.

    resid_post(l) -> (final norm if ``final_norm``) -> W_U -> softmax over the full vocabulary.
    With the norm, the last layer's row is the model's own answer distribution.

    Returns:
        Rows layer (0-based), option (index), letter, is_true, prob, final_norm.
    """
    n_layers = model.cfg.n_layers
    names = [f"blocks.{l}.hook_resid_post" for l in range(n_layers)]
    last = prompt.token_map.last
    acts = capture(model, prompt, names, lambda act: act[last.to(act.device)])
    letters = prompt.option_token_ids
    if not letters:
        raise ValueError("answer_probability_by_layer needs a multiple-choice prompt (options=[...])")
    records = []
    with torch.no_grad():
        for layer, name in enumerate(names):
            resid = acts[name]
            resid = _final_norm(model)(resid.to(_final_norm(model).weight.device)) if final_norm else resid
            probs = _unembed(model)(resid.to(_unembed(model).weight.device)).float().softmax(-1)[0]
            for option, token in enumerate(letters):
                records.append({"layer": layer, "option": option, "letter": LETTERS[option],
                                "is_true": option == prompt.answer, "prob": float(probs[token]),
                                "final_norm": final_norm})  # fmt: skip
    return pd.DataFrame(records)
