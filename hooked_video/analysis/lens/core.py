"""The logit lens over video tokens.

Entries of the lens: entry i < L-1 is the residual stream entering block i (entry 0 is the input
embedding, i.e. the projected video features at video positions); entry L-1 is the final-norm
output. Three explicit projections (``VARIANTS``):

- ``"unembed"``: final norm, then W_U (the TransformerLens convention; entry L-1 gives the
  model's own logits).
- ``"unembed-raw"``: W_U without the norm at intermediate entries.
- ``"embed"``: the released code's projection onto the INPUT embedding matrix W_E, no norm at
  intermediate entries.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch
from jaxtyping import Float, Int

from hooked_video.analysis.accuracy import PAPER_RULE, predicted_option
from hooked_video.runtime.capture import capture, stacked_on_host
from hooked_video.model.tokens import TokenMap

VARIANTS = ("unembed", "unembed-raw", "embed")


def final_norm(model):
    """The language model's final norm (the HF module behind the bridge's ``ln_final``)."""
    return model.bridge.ln_final.original_component


def unembed(model):
    """The model's unembedding module (the HF ``lm_head``)."""
    return model.bridge.unembed.original_component


def embedding_matrix(model) -> Float[torch.Tensor, "vocab d_model"]:
    """W_E, the input embedding matrix."""
    return model.bridge.embed.original_component.weight


def apply(module, resid: torch.Tensor) -> torch.Tensor:
    """``module(resid)`` on the module's device (a split model keeps modules on several GPUs)."""
    weight = next(module.parameters())
    return module(resid.to(weight.device))


def lens_names(n_layers: int) -> list[str]:
    """Hooks of the lens entries: resid_pre of blocks 0..L-2, then resid_post of the last block."""
    return [f"blocks.{i}.hook_resid_pre" for i in range(n_layers - 1)] + [f"blocks.{n_layers - 1}.hook_resid_post"]


def lens_residuals(model, acts: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """The L lens inputs from captured ``lens_names`` activations (the last one final-normed)."""
    names = lens_names(model.cfg.n_layers)
    with torch.no_grad():
        final = apply(final_norm(model), acts[names[-1]])
    return [acts[n] for n in names[:-1]] + [final]


def project(model, resid: torch.Tensor, variant: str, is_final: bool) -> Float[torch.Tensor, "pos vocab"]:
    """Logits of one lens entry under a variant (the final entry is already normalised)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    with torch.no_grad():
        if variant == "embed":
            weight = embedding_matrix(model)
            return resid.to(weight.device) @ weight.T
        if variant == "unembed" and not is_final:
            resid = apply(final_norm(model), resid)
        return apply(unembed(model), resid)


@dataclass
class LensResult:
    """Top-k tokens of the logit lens at chosen positions of one prompt.

    Attributes:
        top_ids, top_probs: (n_layers, n_positions, k), tokens by decreasing probability.
        positions: the prompt positions (LongTensor, n_positions).
        token_map: the prompt's token map (frames and cells of video positions).
        variant: the projection used.
        str_vocab: decoded strings of every token id in top_ids.
        correct: whether the model answers the prompt correctly (paper's rule), None without
            an answer; ``keyword_frequencies(select=...)`` selects samples by it.
    """

    top_ids: Int[torch.Tensor, "layer pos k"]
    top_probs: Float[torch.Tensor, "layer pos k"]
    positions: Int[torch.Tensor, "pos"]
    token_map: TokenMap
    variant: str
    str_vocab: dict[int, str]
    correct: bool | None = None

    @property
    def n_layers(self) -> int:
        return self.top_ids.shape[0]

    def tokens(self, layer: int, rank: int = 0) -> list[str]:
        """Decoded rank-th token at every position for one lens entry."""
        return [self.str_vocab[int(i)] for i in self.top_ids[layer, :, rank]]

    def video_grid(self, rank: int = 0) -> tuple[Int[torch.Tensor, "layer T H W"], Float[torch.Tensor, "layer T H W"]]:
        """(ids, probs) of the rank-th token laid out on the (T, H, W) grid of video tokens
        (cells without a token, in compressed frames: id -1, probability NaN)."""
        grid = self.token_map.grid.reshape(-1)
        present = grid >= 0
        index = torch.full((self.token_map.n_positions,), -1, dtype=torch.long)
        index[self.positions] = torch.arange(len(self.positions))
        cells = index[grid[present]]
        if bool((cells < 0).any()):
            raise ValueError("video_grid() needs the lens to cover every video position (the default)")
        ids = torch.full((self.n_layers, len(grid)), -1, dtype=self.top_ids.dtype)
        probs = torch.full((self.n_layers, len(grid)), float("nan"), dtype=self.top_probs.dtype)
        ids[:, present], probs[:, present] = self.top_ids[:, cells, rank], self.top_probs[:, cells, rank]
        shape = (self.n_layers, *self.token_map.grid_shape)
        return ids.reshape(shape), probs.reshape(shape)

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
        return (f"LensResult(variant={self.variant!r}, layers={self.n_layers}, positions={len(self.positions)}, "
                f"k={self.top_ids.shape[-1]}, correct={self.correct})")  # fmt: skip


def top_tokens(model, residuals: list[torch.Tensor], variant: str, top_k: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(top ids, top probs) of shape (L, positions, k) and the strings of the ids seen."""
    ids, probs = [], []
    for i, resid in enumerate(residuals):
        logits = project(model, resid, variant, is_final=i == len(residuals) - 1).float()
        top = logits.topk(top_k, dim=-1)  # the softmax's top k: exp(logit - logsumexp), no division pass
        ids.append(top.indices)
        probs.append((top.values - logits.logsumexp(-1, keepdim=True)).exp())
    top_ids = stacked_on_host(ids)
    unique = top_ids.unique().tolist()
    names = model.tokenizer.convert_ids_to_tokens(unique)
    # rows of the unembedding past the tokenizer's vocabulary (padding rows, e.g. LLaVA-NeXT-7B's 32064 vs 32002)
    strings = [name if name is not None else f"<no token {i}>" for i, name in zip(unique, names)]
    return top_ids, stacked_on_host(probs), dict(zip(unique, strings))


def is_correct(model, prompt, last_logits: torch.Tensor, rule: str = PAPER_RULE) -> bool | None:
    """Whether the model answers a multiple-choice prompt correctly (None without an answer)."""
    if getattr(prompt, "answer", None) is None:
        return None
    return predicted_option(last_logits, prompt, model.tokenizer, rule) == prompt.answer


def logit_lens(model, prompt, positions: torch.Tensor | None = None, *, variant: str, top_k: int = 5,
               rule: str = PAPER_RULE) -> LensResult:  # fmt: skip
    """Logit lens at ``positions`` (default: all video tokens) of a VideoPrompt.

    Args:
        variant: required: "unembed" (final norm then W_U, the TransformerLens convention),
            "unembed-raw" (W_U, no norm) or "embed" (W_E, the released code's choice). It is
            recorded in the result.
        top_k: tokens kept per (layer, position); probabilities are a softmax over the full vocabulary.
        rule: the accuracy rule that sets ``result.correct`` (for prompts with an answer).
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    tm = prompt.token_map
    positions = tm.video if positions is None else torch.as_tensor(positions, dtype=torch.long).reshape(-1)
    acts, logits = capture(model, prompt, lens_names(model.cfg.n_layers), lambda act: act[positions.to(act.device)])
    top_ids, top_probs, str_vocab = top_tokens(model, lens_residuals(model, acts), variant, top_k)
    return LensResult(top_ids, top_probs, positions, tm, variant, str_vocab, is_correct(model, prompt, logits[0, -1], rule))
