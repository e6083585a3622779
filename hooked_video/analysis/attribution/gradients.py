"""One forward and one backward: every layer's attention pattern and the gradient of the metric
(log P(answer) at the last position) with respect to it.

The patterns are read at ``blocks.{l}.attn.hook_pattern`` (the reference attention path, so the
softmax is materialised); the backward goes through the whole model, so a pattern's gradient
counts its effect through every later layer, attention patterns included. With ``gates``, each
batch item multiplies the pattern's entries of a gated edge set by its own ``alpha`` and
renormalises each row (a soft knockout: ``alpha = 0`` is the knockout itself): the points of an
integrated-gradients path, one per batch item.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float


@dataclass
class PatternGradients:
    """Patterns of every layer and their entries weighted by d log P(answer) / d entry (float32).

    Attributes:
        pattern: (n_layers, batch, heads, N, N) attention patterns.
        weighted: the same shape: each entry times the metric's gradient with respect to it.
        log_prob: (batch,) log P(answer) at the last position.
        alphas: (batch,) the gate value of each batch item (1: the clean model).
        probs: (vocab,) the first batch item's softmax at the last position (float64, CPU).
        answer: the token whose log-probability is the metric.
    """

    pattern: Float[torch.Tensor, "layer batch head query key"]
    weighted: Float[torch.Tensor, "layer batch head query key"]
    log_prob: Float[torch.Tensor, "batch"]
    alphas: Float[torch.Tensor, "batch"]
    probs: Float[torch.Tensor, "vocab"]
    answer: int


def pattern_gradients(model, embedded, answer: int | None = None, gate: Bool[torch.Tensor, "query key"] | None = None,
                      alphas: Float[torch.Tensor, "batch"] | None = None,
                      blocked: dict[int, Bool[torch.Tensor, "query key"]] | None = None) -> PatternGradients:  # fmt: skip
    """Patterns and their gradients for one embedded prompt (``model.embed(prompt)``).

    Args:
        answer: the token whose log-probability at the last position is the metric (None: the
            first batch item's argmax, the baseline answer when that item is the clean model).
        gate: edges (query, key) scaled by ``alphas`` in every layer (None: no gate).
        alphas: one gate value per batch item (default: one item at 1, the clean model).
        blocked: layer -> edges knocked out there (their entries zeroed and the rows
            renormalised, which is the knockout's softmax): the gradients of a pruned model.
    """
    n_layers = model.cfg.n_layers
    alphas = torch.ones(1) if alphas is None else torch.as_tensor(alphas, dtype=torch.float32).reshape(-1)
    kept: dict[int, torch.Tensor] = {}
    device = model.device  # masks live there; a layer on another GPU (a split model) moves its own
    faded = None if gate is None else (1 - alphas.to(device).view(-1, 1, 1, 1)) * gate.to(device)  # share removed
    knocked = {layer: mask.to(device) for layer, mask in (blocked or {}).items() if mask.any()}

    def keep(pattern, hook):
        if hook.layer() in knocked:
            pattern = without(pattern, knocked[hook.layer()].to(pattern.device))
        if faded is not None:
            pattern = without(pattern, faded.to(pattern.device))
        if not pattern.requires_grad:  # a frozen model: the pattern is where the graph starts
            pattern.requires_grad_(True)
        kept[hook.layer()] = pattern
        return pattern

    hooks = [(f"blocks.{layer}.attn.hook_pattern", keep) for layer in range(n_layers)]
    with torch.enable_grad():
        logits = model.run_with_hooks(embedded.expand(len(alphas)), fwd_hooks=hooks, logits_to_keep=1)
        log_probs = logits[:, -1].double().log_softmax(-1)  # float64 as the sweep's (flow.last_position_probs)
        answer = int(log_probs[0].argmax()) if answer is None else answer
        log_prob = log_probs[:, answer]
        patterns = [kept[layer] for layer in range(n_layers)]
        grads = torch.autograd.grad(log_prob.sum(), patterns, allow_unused=True)
    pattern = torch.empty((n_layers, *patterns[0].shape), dtype=torch.float32, device=patterns[0].device)
    weighted = torch.zeros_like(pattern)
    for layer, (p, g) in enumerate(zip(patterns, grads)):  # filled in place: no second copy of every layer
        pattern[layer] = p.detach()
        if g is not None:
            weighted[layer] = g.float() * pattern[layer]
    return PatternGradients(pattern, weighted, log_prob.detach().cpu(), alphas, log_probs[0].detach().exp().cpu(), answer)


def without(pattern: Float[torch.Tensor, "*batch query key"],
            removed: Float[torch.Tensor, "*batch query key"] | Bool[torch.Tensor, "query key"]) -> Float[torch.Tensor, "*batch query key"]:  # fmt: skip
    """The pattern with each weight scaled down by the share ``removed`` of it (1 or True: the
    edge knocked out) and each row it touches renormalised in float32, which is a knockout's
    softmax where whole edges go; rows it does not touch come back exactly as they were."""
    probs = pattern.float()
    removed = removed.to(probs.dtype)
    weights = probs * (1 - removed)
    renormalised = weights / weights.sum(-1, keepdim=True).clamp_min(1e-12)
    return torch.where((removed != 0).any(-1, keepdim=True), renormalised, probs).to(pattern.dtype)
