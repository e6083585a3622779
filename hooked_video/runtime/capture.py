"""Read activations during one forward without keeping a full cache."""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch


def capture(model, prompt, names: Sequence[str], reduce: Callable | Mapping[str, Callable] = lambda act: act,
            fwd_hooks=(), logits_to_keep: int = 1) -> tuple[dict[str, torch.Tensor], torch.Tensor]:  # fmt: skip
    """One forward of ``prompt``; for each hook name, ``reduce(act[0])`` (batch item 0, detached).

    Returns (activations keyed by the requested name, logits of the last ``logits_to_keep``
    positions). TransformerLens may resolve an alias to another hook's name, hence the keys.
    ``reduce`` (one function, or one per name) runs inside the hook, so only what it returns
    is kept.
    """
    store: dict[str, torch.Tensor] = {}

    def keeper(name: str):
        fn = reduce[name] if isinstance(reduce, Mapping) else reduce

        def keep(act, hook):
            store[name] = fn(act[0].detach())

        return keep

    with torch.no_grad():
        hooks = list(fwd_hooks) + [(name, keeper(name)) for name in names]
        logits = model.run_with_hooks(prompt, fwd_hooks=hooks, logits_to_keep=logits_to_keep)
    return store, logits


def stacked_on_host(per_layer: list[torch.Tensor]) -> torch.Tensor:
    """Per-layer results stacked and copied to the host at once (layers may sit on several GPUs)."""
    return torch.stack([t.to(per_layer[0].device) for t in per_layer]).cpu()
