"""Read activations during one forward without keeping a full cache."""

from __future__ import annotations

from typing import Callable, Sequence

import torch


def capture(model, prompt, names: Sequence[str], reduce: Callable = lambda act: act, fwd_hooks=()) -> dict[str, torch.Tensor]:
    """One forward of ``prompt``; for each hook name, ``reduce(act[0])`` (batch item 0, detached).

    Results are keyed by the requested name (TransformerLens may resolve an alias to another
    hook's name). ``reduce`` runs inside the hook, so only what it returns is kept.
    """
    store: dict[str, torch.Tensor] = {}

    def keeper(name: str):
        def keep(act, hook):
            store[name] = reduce(act[0].detach())

        return keep

    with torch.no_grad():
        model.run_with_hooks(prompt, fwd_hooks=list(fwd_hooks) + [(name, keeper(name)) for name in names])
    return store
