"""EmbeddedPrompt: a prompt after the vision pathway, ready for many language-model passes.

Knockout sweeps and patching run the same prompt dozens of times with different hooks on the
language model. ``HookedVideoLLM.embed(prompt)`` runs the vision encoder and projector once and
keeps what the language model receives; passing the result to the model skips the vision
pathway and gives the same logits bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from jaxtyping import Bool, Float

from hooked_video.model.tokens import TokenMap


@dataclass
class EmbeddedPrompt:
    """Language-model inputs of a video prompt.

    Attributes:
        inputs_embeds: (batch, pos, d_model) token and video embeddings, before
            ``hook_video_embeds``.
        position_ids: position ids the model computed (Qwen-VL: M-RoPE, (3, batch, pos)),
            or None where the language model derives them itself.
        attention_mask: (batch, pos) padding mask or None.
        feature_mask: (batch, pos) True at positions carrying video features.
        prompt: the VideoPrompt this came from (token map, option letters, answer).
        deepstack: Qwen3-VL's DeepStack features, added to the residual stream after decoder
            layer k at the video positions: (visual_pos_masks (batch, pos), [per layer
            (batch * n_visual, d_model)]), or None.
    """

    inputs_embeds: Float[torch.Tensor, "batch pos d_model"]
    position_ids: torch.Tensor | None
    attention_mask: torch.Tensor | None
    feature_mask: Bool[torch.Tensor, "batch pos"]
    prompt: object = None
    deepstack: tuple[torch.Tensor, list[torch.Tensor]] | None = None

    @classmethod
    def from_captured(cls, kwargs: dict, feature_mask: torch.Tensor, prompt) -> "EmbeddedPrompt":
        """An EmbeddedPrompt from the language model's captured keyword arguments."""
        deepstack = None
        if kwargs.get("deepstack_visual_embeds") is not None:
            deepstack = (kwargs["visual_pos_masks"], list(kwargs["deepstack_visual_embeds"]))
        return cls(
            inputs_embeds=kwargs["inputs_embeds"],
            position_ids=kwargs.get("position_ids"),
            attention_mask=kwargs.get("attention_mask"),
            feature_mask=feature_mask,
            prompt=prompt if not isinstance(prompt, dict) else None,
            deepstack=deepstack,
        )

    @property
    def token_map(self) -> TokenMap:
        return self.prompt.token_map

    @property
    def batch_size(self) -> int:
        return self.inputs_embeds.shape[0]

    def expand(self, n: int) -> "EmbeddedPrompt":
        """The same single prompt repeated n times along the batch (no copy)."""
        if self.batch_size != 1:
            raise ValueError(f"expand() needs a single prompt, this one has batch {self.batch_size}")
        position_ids = self.position_ids
        if position_ids is not None:  # (batch, pos) or (sections, batch, pos)
            dim = position_ids.ndim - 2
            position_ids = position_ids.expand(*position_ids.shape[:dim], n, position_ids.shape[-1])
        deepstack = None
        if self.deepstack is not None:
            mask, features = self.deepstack
            deepstack = (mask.expand(n, -1), [f.repeat(n, 1) for f in features])
        return replace(
            self,
            inputs_embeds=self.inputs_embeds.expand(n, -1, -1),
            position_ids=position_ids,
            attention_mask=None if self.attention_mask is None else self.attention_mask.expand(n, -1),
            feature_mask=self.feature_mask.expand(n, -1),
            deepstack=deepstack,
        )

    def append(self, embeds: Float[torch.Tensor, "batch new d_model"]) -> "EmbeddedPrompt":
        """This prompt followed by text token embeddings (greedy decoding without a cache):
        their positions continue from the last one (all three M-RoPE sections alike)."""
        n_new = embeds.shape[1]
        position_ids = self.position_ids
        if position_ids is not None:
            step = torch.arange(1, n_new + 1, device=position_ids.device)
            position_ids = torch.cat([position_ids, position_ids[..., -1:] + step], dim=-1)
        attention_mask = self.attention_mask
        if attention_mask is not None:
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones(attention_mask.shape[0], n_new)], dim=-1)
        deepstack = self.deepstack
        if deepstack is not None:
            mask, features = deepstack
            deepstack = (torch.cat([mask, mask.new_zeros(mask.shape[0], n_new)], dim=-1), features)
        return replace(
            self, inputs_embeds=torch.cat([self.inputs_embeds, embeds.to(self.inputs_embeds)], dim=1),
            position_ids=position_ids, attention_mask=attention_mask,
            feature_mask=torch.cat([self.feature_mask, self.feature_mask.new_zeros(self.feature_mask.shape[0], n_new)], dim=-1),
            deepstack=deepstack,
        )  # fmt: skip

    def lm_kwargs(self, device) -> dict:
        """Keyword arguments (besides the embeddings) for the bridge forward."""
        kwargs = {"position_ids": self.position_ids, "attention_mask": self.attention_mask}
        return {k: v.to(device) for k, v in kwargs.items() if v is not None}

    def language_model_kwargs(self, device) -> dict:
        """What the language model needs besides the top-level inputs (DeepStack features)."""
        if self.deepstack is None:
            return {}
        mask, features = self.deepstack
        return {"visual_pos_masks": mask.to(device), "deepstack_visual_embeds": [f.to(device) for f in features]}

    def residual_additions(self) -> dict[int, Float[torch.Tensor, "pos d_model"]]:
        """Per decoder layer, what is added to the residual stream after it (DeepStack), for a
        single prompt: {layer: (pos, d_model)}."""
        if self.deepstack is None:
            return {}
        mask, features = self.deepstack
        additions = {}
        for layer, feature in enumerate(features):
            added = self.inputs_embeds.new_zeros(self.inputs_embeds.shape[1:])
            added[mask[0]] = feature.to(added)
            additions[layer] = added
        return additions

    def __repr__(self) -> str:
        b, n, d = self.inputs_embeds.shape
        return f"EmbeddedPrompt(batch={b}, N={n}, d_model={d})"
