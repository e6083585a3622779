"""Plain Hugging Face speed for the blocks nobody hooks.

Every TransformerLens bridge component adds Python work to a forward (hook points, conversions,
a re-implemented norm that also computes its hook statistics). For a block of the language model
with no hook registered anywhere inside it, none of that is needed: ``install_fast_blocks`` gives
each block a "shadow", the HF decoder layer rebuilt from the bridges' original modules (shallow
copies: the parameters are the same tensors), and the block runs it whenever its hook points
are all empty, the model is in eval mode and ``attention.reference_attention()`` is not active.
Attention inside the shadow is the fast path of ``attention.py`` (SDPA, edge masks, rotary hooks
already checked empty). A hook on any of the block's hook points sends that block back through
the bridge, so TransformerLens semantics are unchanged.
"""

from __future__ import annotations

import copy

import torch
from transformer_lens.hook_points import HookPoint
from transformer_lens.model_bridge.generalized_components.base import GeneralizedComponent

from hooked_video.runtime import attention


def shadow(module: torch.nn.Module) -> torch.nn.Module:
    """The HF module behind a bridge, with every bridge below it replaced the same way; shallow
    copies share parameters and buffers with the originals."""
    if isinstance(module, GeneralizedComponent):
        module = module.original_component
    if "forward" in module.__dict__:  # an instance-level forward (e.g. accelerate offload hooks)
        raise ValueError("modules with a wrapped forward cannot be shadowed")
    clone = copy.copy(module)
    clone._modules = {name: shadow(child) if child is not None else None for name, child in module._modules.items()}
    return clone


def _has_hooks(hook_point: HookPoint) -> bool:
    return bool(hook_point._forward_hooks or hook_point._backward_hooks)


#: The bridge block's methods its shadow path reuses (TransformerLens' own handling of a block's
#: boundary): without them a hooked block takes the bridge path.
_BOUNDARY_METHODS = ("_maybe_inject_start_residual", "_check_stop_at_layer", "_hook_input_hidden_states",
                     "_apply_output_hook", "_is_standalone_hidden_state_call")  # fmt: skip


class FastBlockMixin:
    """Runs the block's shadow when none of its hook points has a hook, or when only its boundary
    ones do (``hook_in`` / ``hook_out``, i.e. ``hook_resid_pre`` / ``hook_resid_post``): those fire
    around the shadow. ``stop_at_layer`` and ``start_at_layer`` act on either path."""

    def shadow_mode(self) -> str | None:
        """"plain" (no hook), "boundary" (hooks on hook_in / hook_out only), or None: the bridge path
        (a hook inside the block, training, or the reference path)."""
        if self.training or attention._STATE.reference:
            return None
        hooked = [hp for hp in self._hooked_video_hook_points if _has_hooks(hp)]
        if not hooked:
            return "plain"
        boundary = (getattr(self, "hook_in", None), getattr(self, "hook_out", None))
        if all(hp is boundary[0] or hp is boundary[1] for hp in hooked) and all(hasattr(self, m) for m in _BOUNDARY_METHODS):
            return "boundary"
        return None

    def use_shadow(self) -> bool:
        """True when the block runs its plain HF shadow (with its boundary hooks, if any)."""
        return self.shadow_mode() is not None

    def forward(self, *args, **kwargs):
        """The shadow's forward when ``shadow_mode()`` allows, the bridge's otherwise."""
        mode = self.shadow_mode()
        if mode is None:
            return super().forward(*args, **kwargs)
        kwargs.pop("output_attentions", None)
        if hasattr(self, "_check_stop_at_layer"):  # the bridge's forward(stop_at_layer=, start_at_layer=)
            args, kwargs = self._maybe_inject_start_residual(args, kwargs)
            self._check_stop_at_layer(*args, **kwargs)
        if mode == "plain":
            return self._hooked_video_shadow(*args, **kwargs)
        args, kwargs = self._hook_input_hidden_states(args, kwargs)
        standalone = self._is_standalone_hidden_state_call(args, kwargs)
        return self._apply_output_hook(self._hooked_video_shadow(*args, **kwargs), force_tuple_for_bare_tensor=standalone)


_FAST_CLASSES: dict[type, type] = {}


def install_fast_blocks(blocks) -> int:
    """Give every block of ``blocks`` (the bridge's ``blocks``) a shadow; returns how many."""
    installed = 0
    for block in blocks:
        if isinstance(block, FastBlockMixin):
            continue
        try:
            block_shadow = shadow(block)
        except ValueError:
            continue
        cls = type(block)
        if cls not in _FAST_CLASSES:
            _FAST_CLASSES[cls] = type(f"Fast{cls.__name__}", (FastBlockMixin, cls), {})
        object.__setattr__(block, "_hooked_video_shadow", block_shadow)  # not a registered child
        object.__setattr__(block, "_hooked_video_hook_points", [m for m in block.modules() if isinstance(m, HookPoint)])
        block.__class__ = _FAST_CLASSES[cls]
        installed += 1
    return installed


def layer_module(block) -> torch.nn.Module:
    """The module that computes a block: its shadow, or the HF layer behind the bridge."""
    return getattr(block, "_hooked_video_shadow", None) or getattr(block, "original_component", block)
