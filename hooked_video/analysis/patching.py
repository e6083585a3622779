"""Activation patching over video positions: whole frames, grid cells, or any position sets.

For every layer and every position set, the corrupted prompt is run with the clean prompt's
activation written into that set's positions of one hook (``resid_pre``, ``resid_mid``,
``resid_post``, ``attn_out`` or ``mlp_out``), and a metric of the final logits is recorded.

    clean = model.prepare(frames, q, options, answer=0)
    corrupted = patching.reverse_frames(model, clean)
    result = patching.frame_patching(model, clean, corrupted)        # (n_layers, n_frames)
    result.normalized()                                             # 0 = corrupted, 1 = clean

Why not ``transformer_lens.patching``: it runs on a video prompt (and equals this module where
both apply), but it patches one position index per forward over every position of the prompt,
about 40,000 forwards for a 7B video prompt; it warns with that number before it starts. Here both
prompts are embedded once (``model.embed``, so the vision encoder runs twice in total) and several
position sets are patched per batched forward. The hook names
and the patching rule are TransformerLens' own.

Qwen3-VL adds DeepStack features of the video to the residual stream after its first decoder
layers; patching the residual stream of those layers keeps the corrupted prompt's DeepStack
features, so it does not fully restore the clean run there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from jaxtyping import Float
from tqdm.auto import tqdm

COMPONENTS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
Metric = Callable[[torch.Tensor, object], torch.Tensor]


def logit_diff(logits: Float[torch.Tensor, "batch pos vocab"], prompt) -> Float[torch.Tensor, "batch"]:
    """Default metric: true letter's logit minus the mean logit of the false letters (last position)."""
    last = logits[:, -1].float()
    letters = torch.tensor(prompt.option_token_ids, device=last.device)
    true = prompt.answer
    false = torch.tensor([i for i in range(len(letters)) if i != true], device=last.device)
    return last[:, letters[true]] - last[:, letters[false]].mean(-1)


def hook_name(component: str, layer: int) -> str:
    """The hook name of ``component`` (one of ``COMPONENTS``) in decoder layer ``layer``."""
    if component not in COMPONENTS:
        raise ValueError(f"component must be one of {COMPONENTS}, got {component!r}")
    return f"blocks.{layer}.hook_{component}"


@dataclass
class PatchingResult:
    """Metric after patching each position set at each layer.

    Attributes:
        values: (n_layers, n_sets) metric of the patched corrupted run.
        clean, corrupted: metric of the unpatched clean and corrupted runs.
        labels: a name per position set (e.g. "frame 3" or a (t, h, w) cell).
        layers, component: where the patches were applied.
    """

    values: Float[torch.Tensor, "layer sets"]
    clean: float
    corrupted: float
    labels: list
    layers: list[int]
    component: str

    def normalized(self) -> torch.Tensor:
        """(patched - corrupted) / (clean - corrupted): 0 = corrupted behaviour, 1 = clean."""
        gap = self.clean - self.corrupted
        if abs(gap) < 1e-12:
            raise ZeroDivisionError("the clean and corrupted metrics are equal: the corruption changes nothing to normalise by")
        return (self.values - self.corrupted) / gap

    def __repr__(self) -> str:
        return f"PatchingResult({self.component}, layers={len(self.layers)}, sets={len(self.labels)}, clean={self.clean:.4g}, corrupted={self.corrupted:.4g})"


@torch.no_grad()
def _position_set(positions, n_positions: int, index: int) -> torch.Tensor:
    """Position set ``index`` as a flat LongTensor of positions inside the prompt (never coerced)."""
    tensor = torch.as_tensor(positions)
    if tensor.numel() and (tensor.dtype == torch.bool or tensor.is_floating_point()):
        raise ValueError(f"position set {index} holds {tensor.dtype} values; give whole positions (e.g. tm.frame(2))")
    tensor = tensor.long().reshape(-1)
    outside = tensor[(tensor < 0) | (tensor >= n_positions)]
    if len(outside):
        raise ValueError(f"position set {index} holds position(s) {outside[:5].tolist()} outside the prompt's "
                         f"{n_positions} positions (0..{n_positions - 1})")  # fmt: skip
    return tensor


@torch.no_grad()
def patch_positions(
    model,
    clean,
    corrupted,
    position_sets: Sequence[torch.Tensor],
    labels: Sequence | None = None,
    component: str = "resid_pre",
    layers: Sequence[int] | None = None,
    metric: Metric = logit_diff,
    batch_size: int = 8,
    logits_to_keep: int | None = 1,
    progress: bool = True,
) -> PatchingResult:
    """Patch clean activations into the corrupted run, one position set at a time, per layer.

    Args:
        clean, corrupted: VideoPrompts of identical layout (same length and token map shape).
        position_sets: each a LongTensor of positions patched together.
        component: which hook of each block is patched (see COMPONENTS).
        metric: ``fn(logits (batch, pos, vocab), clean_prompt) -> (batch,)``; default: logit
            difference of the true versus the false option letters.
        logits_to_keep: the metric sees the logits of the last this-many positions (None: all).
    """
    a, b = clean.token_map, corrupted.token_map
    if a.role != b.role or not torch.equal(a.frame_of, b.frame_of) or not torch.equal(a.cell, b.cell):
        raise ValueError(
            f"clean and corrupted prompts have different layouts (N = {clean.n_positions} vs "
            f"{corrupted.n_positions}, or tokens in other places); patching needs the same layout: "
            "corrupt the video (reverse_frames, shuffle_frames, with_frames), not the text."
        )
    layers = list(range(model.cfg.n_layers)) if layers is None else list(layers)
    bad_layers = [l for l in layers if isinstance(l, bool) or not isinstance(l, int) or not 0 <= l < model.cfg.n_layers]
    if bad_layers:
        raise ValueError(f"layers {bad_layers} are not layers of this model (0..{model.cfg.n_layers - 1})")
    sets = [_position_set(s, clean.n_positions, i) for i, s in enumerate(position_sets)]
    names = {layer: hook_name(component, layer) for layer in layers}
    clean_embedded, corrupted_embedded = model.embed(clean), model.embed(corrupted)
    keep = {} if logits_to_keep is None else {"logits_to_keep": logits_to_keep}
    clean_logits, cache = model.run_with_cache(clean_embedded, names_filter=lambda n: n in names.values(), **keep)
    clean_metric = float(metric(clean_logits, clean)[0])
    corrupted_metric = float(metric(model(corrupted_embedded, **keep), clean)[0])

    values = torch.zeros(len(layers), len(sets))
    jobs = [(li, si) for li in range(len(layers)) for si in range(len(sets))]
    for start in tqdm(range(0, len(jobs), batch_size), desc=f"patching {component}", disable=not progress):
        chunk = jobs[start : start + batch_size]
        hooks = _patch_hooks(chunk, layers, names, sets, cache)
        logits = model.run_with_hooks(corrupted_embedded.expand(len(chunk)), fwd_hooks=hooks, **keep)
        for (li, si), value in zip(chunk, metric(logits, clean)):
            values[li, si] = float(value)
    labels = list(labels) if labels is not None else list(range(len(sets)))
    return PatchingResult(values, clean_metric, corrupted_metric, labels, layers, component)


def _patch_hooks(chunk, layers, names, sets, cache) -> list:
    """One hook per layer in the chunk; batch item b gets its own position set."""
    by_layer: dict[int, list[tuple[int, torch.Tensor]]] = {}
    for b, (li, si) in enumerate(chunk):
        by_layer.setdefault(layers[li], []).append((b, sets[si]))

    def make(layer: int, items):
        clean_act = cache[names[layer]]

        def hook(act, hook=None):
            act = act.clone()
            for b, positions in items:
                act[b, positions] = clean_act[0, positions].to(act.dtype)
            return act

        return hook

    return [(names[layer], make(layer, items)) for layer, items in by_layer.items()]


def frame_patching(model, clean, corrupted, **kwargs) -> PatchingResult:
    """Patch each temporal slot's video tokens: values (n_layers, n_frames)."""
    tm = clean.token_map
    return patch_positions(model, clean, corrupted, [tm.frame(i) for i in range(tm.n_frames)],
                           labels=[f"frame {i}" for i in range(tm.n_frames)], **kwargs)  # fmt: skip


def cell_patching(model, clean, corrupted, **kwargs) -> PatchingResult:
    """Patch each (t, h, w) video cell alone: values (n_layers, T*H*W), labels the cells."""
    tm = clean.token_map
    positions = [p for p in tm.grid.reshape(-1) if p >= 0]
    cells = [tuple(int(x) for x in tm.cell[p]) for p in positions]
    return patch_positions(model, clean, corrupted, [p.reshape(1) for p in positions], labels=cells, **kwargs)


# ----- corrupted prompts -----------------------------------------------------------------------
def with_frames(model, prompt, frames) -> object:
    """The same question, options, template, fps and processor settings over other frames."""
    return model.prepare(frames, prompt.question, prompt.options, prompt.answer, template=prompt.template,
                         num_frames=None, fps=prompt.fps, processor_kwargs=prompt.processor_kwargs,
                         frame_times=prompt.frame_times if len(frames) == len(prompt.frames) else None)  # fmt: skip


def reverse_frames(model, prompt):
    """The prompt with its video played backwards."""
    return with_frames(model, prompt, np.ascontiguousarray(np.asarray(prompt.frames)[::-1]))


def shuffle_frames(model, prompt, seed: int = 0):
    """The prompt with its frames in a random (seeded) order, never the original order."""
    frames = np.asarray(prompt.frames)
    rng = np.random.default_rng(seed)
    order = np.arange(len(frames))
    while len(frames) > 1 and (order == np.arange(len(frames))).all():
        order = rng.permutation(len(frames))
    return with_frames(model, prompt, frames[order])
