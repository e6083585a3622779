"""Learned continuous gates with a sparsity penalty (Edge Pruning, Bhaskar et al. 2024) at the
paper's granularity: one gate per (flow, layer), learned on the samples, as the order in which
``discover(method="gates")`` tries to close layers.

Gate ``g = sigmoid(theta)`` scales the attention weights of its flow's edges in its layer and each
row is renormalised, as a knockout renormalises (``g = 0`` is the knockout itself, ``g = 1`` the
clean model). The model's weights stay frozen; ``theta`` minimises, over the samples,

    -log P_gated(the full model's top token) + sparsity * (the gated flows' edges kept, as a share)

with Adam, each step on a batch of ``BATCH`` samples (the next ones, in turn), starting from the
search's first step (every searched flow open everywhere, what the union rule always blocks
blocked: last -> last, and video -> last unless it is searched). A gate the penalty
drives down is a layer the answer does not need; the ranking is ``-theta`` (the most closed
first). Every figure of the search that uses it is still exact.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Sequence

import torch
from jaxtyping import Bool, Float
from tqdm.auto import tqdm

from hooked_video.analysis.attribution.gradients import without
from hooked_video.analysis.pathways import FLOWS, PathwaySpec
from hooked_video.data.prefetch import PromptPreparer

#: Samples per Adam step (each a forward and a backward).
BATCH = 8
#: The names ``PathwaySpec.open_groups`` gives each flow.
_FLOW_OF = {"cross-frame": "inter", "video->question": "v2q", "question->last": "q2l", "video->last": "v2l"}


@contextmanager
def _frozen(model):
    """The model's parameters without gradients for the duration (only the gates learn)."""
    params = [p for p in model.hf_model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def flow_masks(tm, flows: Sequence[str], n_layers: int) -> Bool[torch.Tensor, "flow query key"]:
    """Each flow's edges (``PathwaySpec.open_groups``) as a boolean mask, in the order of ``flows``."""
    groups = {_FLOW_OF[name]: edges.mask for name, edges, _ in _everywhere(flows, n_layers).open_groups(tm)}
    return torch.stack([groups[f] for f in flows])


def _everywhere(flows: Sequence[str], n_layers: int) -> PathwaySpec:
    """The search's first step: ``flows`` open in every layer, the others closed."""
    return PathwaySpec(**{f: ((0, n_layers - 1) if f in flows else None) for f in FLOWS})


def gate_hooks(theta: Float[torch.Tensor, "flow layer"], masks: Bool[torch.Tensor, "flow query key"],
               blocked: Bool[torch.Tensor, "query key"] | None = None) -> list[tuple]:  # fmt: skip
    """``hook_pattern`` hooks that scale each flow's attention weights in each layer by
    ``sigmoid(theta[flow, layer])`` and renormalise the rows they touch, as a knockout does (0: the
    flow knocked out there); ``blocked`` edges are knocked out in every layer. Rows no gate or block
    touches stay exactly as they were; a layer's masks move to its pattern's device (a model split
    over GPUs)."""
    placed: dict = {}

    def on(device) -> tuple:
        if device not in placed:
            placed[device] = (masks.to(device).float(), None if blocked is None else blocked.to(device))
        return placed[device]

    def gate(pattern, hook):
        flow_masks, hard = on(pattern.device)
        closed = 1 - torch.sigmoid(theta[:, hook.layer()].to(pattern.device))  # (flows,)
        removed = torch.einsum("f,fqk->qk", closed, flow_masks)  # share of each weight taken away
        if hard is not None:
            removed = torch.where(hard, 1.0, removed)
        return without(pattern, removed)

    return [(f"blocks.{layer}.attn.hook_pattern", gate) for layer in range(theta.shape[1])]


def gate_logits(model, items: list, flows: Sequence[str], num_frames: int | None, steps: int = 30,
                sparsity: float = 0.5, lr: float = 0.2, progress: bool = False) -> Float[torch.Tensor, "flow layer"]:  # fmt: skip
    """The learned gate logits ``theta`` (flows, layers) over ``items`` ((id, task, sample) triples),
    trained from the search's first step (what the union rule blocks there stays blocked)."""
    n_layers, device = model.cfg.n_layers, model.device
    theta = torch.full((len(flows), n_layers), 3.0, device=device, requires_grad=True)
    first = _everywhere(flows, n_layers)
    samples = []
    with PromptPreparer(model, items, num_frames) as preparer:
        for sample_id, _, _ in items:
            prompt = preparer.prompt(sample_id)
            embedded = model.embed(prompt)
            with torch.no_grad():
                top = int(model(embedded, logits_to_keep=1)[0, -1].argmax())
            masks = flow_masks(prompt.token_map, flows, n_layers)
            blocked = first.layer_edges(prompt.token_map, n_layers)[0].mask  # the same in every layer at the first step
            samples.append((embedded, top, gate_hooks(theta, masks, blocked), masks.sum((1, 2)).float().to(device)))
    optimizer = torch.optim.Adam([theta], lr=lr)
    with _frozen(model), torch.enable_grad():
        batch = min(BATCH, len(samples))
        for step in tqdm(range(steps), desc="learning gates", disable=not progress):
            optimizer.zero_grad()
            for k in range(step * batch, (step + 1) * batch):  # the batch's mean gradient
                embedded, top, hooks, edges = samples[k % len(samples)]
                logits = model.run_with_hooks(embedded, fwd_hooks=hooks, logits_to_keep=1)
                kept = (torch.sigmoid(theta) * edges[:, None]).sum() / (edges.sum() * n_layers)
                loss = -logits[0, -1].float().log_softmax(-1)[top] + sparsity * kept.to(logits.device)
                (loss / batch).backward()
            optimizer.step()
    return theta.detach().cpu()


def gate_ranking(model, items: list, flows: Sequence[str], num_frames: int | None, steps: int = 30,
                 sparsity: float = 0.5, progress: bool = False) -> dict[tuple[str, int], float]:  # fmt: skip
    """(flow, layer) -> ``-theta``: ``greedy``'s ranking, the gate the penalty closed most first."""
    theta = gate_logits(model, items, flows, num_frames, steps, sparsity, progress=progress)
    return {(f, layer): -float(theta[i, layer]) for i, f in enumerate(flows) for layer in range(theta.shape[1])}
