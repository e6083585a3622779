"""One forward and one backward: every layer's attention pattern and the gradient of the metric
(log P(answer) at the last position) with respect to it.

A layer's attention output is O_q = sum_k A[q, k] V_k, so the gradient with respect to a pattern
entry is dO_q . V_k, with dO the gradient at that output. Two paths give the same numbers:

- ``"fast"``: the forward runs the fast attention path (SDPA: no N x N pattern is held, memory
  linear in N), keeping each layer's queries, keys, values and output; the backward gives every
  dO. The patterns and their gradients are recomputed from these, a few layers (or rows) at a
  time, when the estimates read them (``PatternGradients.layers``).
- ``"reference"``: the patterns are read at ``blocks.{l}.attn.hook_pattern`` (TransformerLens'
  reference attention) and differentiated directly; every layer's (batch, heads, N, N) pattern
  and gradient are held. Taken where a hook or a TransformerLens flag needs that path.

The backward goes through the whole model, so a pattern's gradient counts its effect through every
later layer, attention patterns included. With ``gate``, each batch item multiplies the pattern's
entries of a gated edge set by its own ``alpha`` and renormalises each row (a soft knockout:
``alpha = 0`` is the knockout itself): on the fast path an additive log(alpha) on those scores,
which is the same softmax. These are the points of an integrated-gradients path, one per batch item.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float

from hooked_video.runtime import attention

PATHS = ("auto", "fast", "reference")


class _FastPathUnavailable(Exception):
    """A layer ran the reference attention, or a gated row would lose every key."""


@dataclass
class _Held:
    """Patterns and weighted gradients held whole, (n_layers, batch, heads, N, N) float32."""

    pattern: torch.Tensor
    weighted: torch.Tensor

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.pattern.shape)

    def bytes_per_layer(self, rows: int) -> int:
        return 0  # slices are views

    def layers(self, layers: slice, rows: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        pattern, weighted = self.pattern[layers], self.weighted[layers]
        return (pattern, weighted) if rows is None else (pattern[..., rows, :], weighted[..., rows, :])


@dataclass
class _Layer:
    """What the fast path keeps of one layer: rotated queries (batch, heads, N, d), keys and
    values (batch, kv_heads, N, d), the additive mask its softmax used (float32, broadcasting to
    (batch, 1, N, N)), the scale, and the gradient at its output (batch, N, heads, d)."""

    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    bias: torch.Tensor
    scaling: float
    grad: torch.Tensor | None = None


class _Recomputed:
    """Patterns and weighted gradients recomputed from each layer's queries, keys, values and
    output gradient, on the device of the first layer."""

    def __init__(self, kept: list[_Layer], device: torch.device) -> None:
        self.kept, self.device = kept, device
        batch, heads, n, _ = kept[0].query.shape
        self.shape = (len(kept), batch, heads, n, n)

    def bytes_per_layer(self, rows: int) -> int:
        _, batch, heads, _, n = self.shape
        return 4 * 4 * batch * heads * rows * n  # scores, pattern, gradient, product

    def layers(self, layers: slice, rows: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        chosen = self.kept[layers]
        _, batch, heads, n, _ = self.shape
        width = n if rows is None else len(rows)
        pattern = torch.empty(len(chosen), batch, heads, width, n, device=self.device)
        weighted = torch.empty_like(pattern)
        for i, layer in enumerate(chosen):
            if layer.query.device == self.device:
                _recompute(layer, rows, pattern[i], weighted[i])
            else:  # a layer on another GPU of a split model computes there
                there = [torch.empty(pattern.shape[1:], device=layer.query.device) for _ in range(2)]
                _recompute(layer, rows, *there)
                pattern[i], weighted[i] = there
        return pattern, weighted


def _products(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b^T in float32, (batch, heads, rows, N) from (batch, heads, rows, d) and (batch, heads, N, d):
    half-precision inputs on a GPU multiply on its tensor cores with float32 accumulation (their
    products are exact in float32, as the upcast inputs' would be)."""
    if a.is_cuda and a.dtype in (torch.float16, torch.bfloat16):
        try:
            out = torch.bmm(a.flatten(0, 1), b.flatten(0, 1).transpose(1, 2), out_dtype=torch.float32)
            return out.view(*a.shape[:-1], b.shape[-2])
        except torch.OutOfMemoryError:
            raise
        except (TypeError, RuntimeError, NotImplementedError):  # a torch without half-in, float32-out products
            pass
    return torch.matmul(a.float(), b.float().transpose(-1, -2))


def _recompute(layer: _Layer, rows: torch.Tensor | None, pattern: torch.Tensor, weighted: torch.Tensor) -> None:
    """Writes one layer's pattern and pattern x gradient, (batch, heads, rows, N) float32, into
    ``pattern`` and ``weighted``."""
    query, bias = layer.query, layer.bias
    if rows is not None:
        rows = rows.to(query.device)
        query, bias = query[:, :, rows], bias[..., rows, :]
    groups = query.shape[1] // layer.key.shape[1]
    scores = _products(query, _per_head(layer.key, groups))
    torch.add(bias.to(scores.device), scores, alpha=layer.scaling, out=scores)  # scale and mask in one pass
    torch.softmax(scores, -1, out=pattern)
    if layer.grad is None:
        weighted.zero_()
        return
    grad = layer.grad.transpose(1, 2)  # (batch, heads, N, d)
    grad = grad if rows is None else grad[:, :, rows]
    torch.mul(_products(grad, _per_head(layer.value, groups)), pattern, out=weighted)


def _per_head(kv: torch.Tensor, groups: int) -> torch.Tensor:
    """Keys or values (batch, kv_heads, N, d) for every query head (GQA); as they are without grouping."""
    return kv if groups == 1 else kv.repeat_interleave(groups, dim=1)


@dataclass
class PatternGradients:
    """Every layer's attention pattern and its entries weighted by d log P(answer) / d entry.

    Read them with ``layers``; ``pattern`` and ``weighted`` hold all layers at once,
    (n_layers, batch, heads, N, N) float32 each (large for long prompts: on the fast path they
    are recomputed on each read).

    Attributes:
        log_prob: (batch,) log P(answer) at the last position.
        alphas: (batch,) the gate value of each batch item (1: the clean model).
        probs: (vocab,) the first batch item's softmax at the last position (float64, CPU).
        answer: the token whose log-probability is the metric.
        path: "fast" or "reference", the path that computed them.
    """

    source: _Held | _Recomputed
    log_prob: Float[torch.Tensor, "batch"]
    alphas: Float[torch.Tensor, "batch"]
    probs: Float[torch.Tensor, "vocab"]
    answer: int
    path: str

    @property
    def shape(self) -> tuple[int, ...]:
        """(n_layers, batch, heads, N, N)."""
        return tuple(self.source.shape)

    @property
    def device(self) -> torch.device:
        return self.source.device if isinstance(self.source, _Recomputed) else self.source.pattern.device

    def bytes_per_layer(self, rows: int) -> int:
        """Bytes that reading ``rows`` query rows of one layer allocates."""
        return self.source.bytes_per_layer(rows)

    def layers(self, layers: slice | int, rows: torch.Tensor | None = None,
               ) -> tuple[Float[torch.Tensor, "layer batch head row key"], Float[torch.Tensor, "layer batch head row key"]]:  # fmt: skip
        """(pattern, pattern x gradient) of ``layers`` (a slice, or one layer), only query ``rows`` if given."""
        single = isinstance(layers, int)
        if single:
            layers = range(self.shape[0])[layers]  # a negative index counts from the last layer
        pattern, weighted = self.source.layers(slice(layers, layers + 1) if single else layers, rows)
        return (pattern[0], weighted[0]) if single else (pattern, weighted)

    @property
    def pattern(self) -> Float[torch.Tensor, "layer batch head query key"]:
        return self.layers(slice(None))[0]

    @property
    def weighted(self) -> Float[torch.Tensor, "layer batch head query key"]:
        return self.layers(slice(None))[1]


def pattern_gradients(model, embedded, answer: int | None = None, gate: Bool[torch.Tensor, "query key"] | None = None,
                      alphas: Float[torch.Tensor, "batch"] | None = None,
                      blocked: dict[int, Bool[torch.Tensor, "query key"]] | None = None,
                      path: str = "auto") -> PatternGradients:  # fmt: skip
    """Patterns and their gradients for one embedded prompt (``model.embed(prompt)``).

    Args:
        answer: the token whose log-probability at the last position is the metric (None: the
            first batch item's argmax, the baseline answer when that item is the clean model).
        gate: edges (query, key) scaled by ``alphas`` in every layer (None: no gate).
        alphas: one gate value per batch item (default: one item at 1, the clean model).
        blocked: layer -> edges knocked out there (their entries zeroed and the rows
            renormalised, which is the knockout's softmax): the gradients of a pruned model.
        path: "fast", "reference" (see the module docstring) or "auto": fast unless a hook or
            flag puts a layer on the reference path, or a gated row would lose every key.
    """
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    alphas = torch.ones(1) if alphas is None else torch.as_tensor(alphas, dtype=torch.float32).reshape(-1)
    device = model.device  # masks live there; a layer on another GPU (a split model) moves its own
    faded = None if gate is None else (1 - alphas.to(device).view(-1, 1, 1, 1)) * gate.to(device)  # share removed
    knocked = {layer: mask.to(device) for layer, mask in (blocked or {}).items() if mask.any()}
    if path != "reference":
        try:
            return _fast(model, embedded, answer, alphas, faded, knocked)
        except _FastPathUnavailable as error:
            if path == "fast":
                raise ValueError(f"the fast path cannot compute these gradients: {error}; use path='reference'") from None
    return _reference(model, embedded, answer, alphas, faded, knocked)


def _metric(logits: torch.Tensor, answer: int | None) -> tuple[torch.Tensor, int]:
    """log P at the last position (float64, as ``flow.last_position_probs``) and the answer token."""
    log_probs = logits[:, -1].double().log_softmax(-1)
    return log_probs, int(log_probs[0].argmax()) if answer is None else answer


def _result(source, log_probs, answer: int, alphas, path: str) -> PatternGradients:
    return PatternGradients(source, log_probs[:, answer].detach().cpu(), alphas, log_probs[0].detach().exp().cpu(),
                            answer, path)  # fmt: skip


def _bias(attention_mask, q_len: int, k_len: int, blocked, faded, device) -> torch.Tensor:
    """The additive float32 mask of one layer's softmax: HF's mask (None: causal), -inf on the
    ``blocked`` edges, log(1 - share) on the gated ones."""
    if attention_mask is None:
        allowed = torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril(k_len - q_len)
        bias = torch.zeros(1, 1, q_len, k_len, device=device).masked_fill(~allowed, -torch.inf)
    elif attention_mask.dtype == torch.bool:
        bias = torch.zeros(attention_mask.shape, device=device).masked_fill(~attention_mask.to(device), -torch.inf)
    else:
        bias = attention_mask.to(device, torch.float32)
    if blocked is not None:
        blocked = blocked[..., -q_len:, :k_len].to(device)
        bias = bias.masked_fill(blocked if blocked.ndim == 2 else blocked[:, None], -torch.inf)
    if faded is not None:
        bias = bias + torch.log1p(-faded[..., -q_len:, :k_len].to(device))
    if (bias <= torch.finfo(torch.float32).min / 2).all(-1).any():  # -inf, or HF's finfo.min of a float mask
        raise _FastPathUnavailable("a row would lose every key")
    return bias


def _reference_needed(model) -> str | None:
    """Why a layer's attention would not run the fast path in this forward (None: every layer's does)."""
    if attention._STATE.blocked:
        return "edge_masks() is active"
    for block in model.bridge.blocks:
        attn = getattr(block, "attn", None)
        if not isinstance(attn, attention.FastAttentionMixin) or attn.needs_reference({}):
            return "a hook or a TransformerLens flag puts a layer on the reference attention path"
    return None


def _fast(model, embedded, answer, alphas, faded, knocked) -> PatternGradients:
    kept: dict[int, _Layer] = {}
    outputs: dict[int, torch.Tensor] = {}
    biases: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}  # layers with the same masks on one device share one

    def keep(module, layer, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
        blocked = knocked.get(layer)
        key_of = (id(attention_mask), id(blocked), query.device, query.dtype)
        if key_of not in biases:
            bias = _bias(attention_mask, query.shape[-2], key.shape[-2], blocked, faded, query.device)
            biases[key_of] = bias, bias.to(query.dtype)
        bias, in_dtype = biases[key_of]
        plain = blocked is None and faded is None
        mask = attention_mask if plain else in_dtype  # plain: HF's own mask, flash kernels
        output = attention.attend(module, query, key, value, mask, dropout, scaling, **kwargs)
        if not output.requires_grad:  # a frozen model: the first layer's output is where the graph starts
            output.requires_grad_(True)
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        kept[layer] = _Layer(query.detach(), key.detach(), value.detach(), bias, scale)
        outputs[layer] = output
        return output

    n_layers = model.cfg.n_layers
    reason = _reference_needed(model)
    if reason is not None:
        raise _FastPathUnavailable(reason)
    with torch.enable_grad(), attention.intercepted(keep):
        logits = model(embedded.expand(len(alphas)), logits_to_keep=1)
        if sorted(kept) != list(range(n_layers)):
            raise _FastPathUnavailable("a hook or a TransformerLens flag puts a layer on the reference attention path")
        log_probs, answer = _metric(logits, answer)
        grads = torch.autograd.grad(log_probs[:, answer].sum(), [outputs[l] for l in range(n_layers)], allow_unused=True)
    layers = [kept[l] for l in range(n_layers)]
    for layer, grad in zip(layers, grads):
        layer.grad = grad
    return _result(_Recomputed(layers, model.device), log_probs, answer, alphas, "fast")


def _reference(model, embedded, answer, alphas, faded, knocked) -> PatternGradients:
    n_layers = model.cfg.n_layers
    kept: dict[int, torch.Tensor] = {}

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
        log_probs, answer = _metric(logits, answer)
        patterns = [kept[layer] for layer in range(n_layers)]
        grads = torch.autograd.grad(log_probs[:, answer].sum(), patterns, allow_unused=True)
    pattern = torch.empty((n_layers, *patterns[0].shape), dtype=torch.float32, device=patterns[0].device)
    weighted = torch.zeros_like(pattern)
    for layer, (p, g) in enumerate(zip(patterns, grads)):  # filled in place: no second copy of every layer
        pattern[layer] = p.detach()
        if g is not None:
            weighted[layer] = g.float() * pattern[layer]
    return _result(_Held(pattern, weighted), log_probs, answer, alphas, "reference")


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
