"""TransformerLens habits on video prompts: token ids that stand for a prepared prompt, sampling
as ``generate`` samples, and ``test_prompt``'s report of the options.

TransformerLens' helpers pass token ids around (``to_tokens(prompt)``, then ``model(tokens)``).
Ids of a video prompt hold its placeholders but not its pixels; ``KnownPrompts`` remembers the
prompts whose ids were handed out, so those ids (and ids that continue them with text, as
``transformer_lens.utilities.test_prompt`` builds them) run with their video.
"""

from __future__ import annotations

import sys
import warnings
import weakref
from collections import OrderedDict

import torch
from jaxtyping import Float, Int

from hooked_video.model.prompt import VideoPrompt, extend_inputs


class KnownPrompts:
    """The last ``size`` prompts whose ids were handed out, found again by their ids."""

    def __init__(self, size: int = 4) -> None:  # each holds its frames and pixels: keep few
        self.size = size
        self._prompts: OrderedDict[tuple[int, ...], VideoPrompt] = OrderedDict()

    def remember(self, prompt: VideoPrompt) -> None:
        key = tuple(prompt.input_ids[0].tolist())
        self._prompts[key] = prompt
        self._prompts.move_to_end(key)
        while len(self._prompts) > self.size:
            self._prompts.popitem(last=False)

    def prompt_for(self, ids: Int[torch.Tensor, "batch pos"]) -> VideoPrompt | None:
        """The remembered prompt whose ids ``ids`` (one row) start with; None if none fits."""
        if ids.ndim != 2 or len(ids) != 1:
            return None
        row = ids[0].tolist()
        for key, prompt in reversed(self._prompts.items()):
            if tuple(row[: len(key)]) == key:
                return prompt
        return None


def inputs_of(prompt: VideoPrompt, ids: Int[torch.Tensor, "1 pos"]) -> dict:
    """The model inputs of ``ids`` that start with ``prompt``'s ids: its pixels, with the text after it."""
    extra = ids[0, prompt.n_positions :].tolist()
    return extend_inputs(prompt.inputs, extra) if extra else dict(prompt.inputs)


_WARNED_PATCH_RUNS: list[weakref.ref] = []  # the result tensors of runs already warned about


def warn_transformer_lens_patching(prompt: VideoPrompt, depth: int = 8) -> None:
    """Say once per ``transformer_lens.patching`` call on a video prompt how many forwards it will
    run (one per layer and index, every position of the prompt), and what patches video positions
    in fewer. Called where ids of a known video prompt are run; silent for any other caller."""
    if "transformer_lens.patching" not in sys.modules:  # every forward passes here: no stack walk unless it can matter
        return
    frame = sys._getframe(1)
    for _ in range(depth):
        frame = frame.f_back
        if frame is None:
            return
        if frame.f_code.co_name == "generic_activation_patch" and frame.f_globals.get("__name__") == "transformer_lens.patching":
            break
    else:
        return
    store, index_df = frame.f_locals.get("store"), frame.f_locals.get("index_df")
    _WARNED_PATCH_RUNS[:] = [ref for ref in _WARNED_PATCH_RUNS if ref() is not None]
    if store is None or index_df is None or any(ref() is store for ref in _WARNED_PATCH_RUNS):
        return
    _WARNED_PATCH_RUNS.append(weakref.ref(store))  # the run's result tensor lives as long as the run
    tm = prompt.token_map
    warnings.warn(
        f"transformer_lens.patching on a video prompt runs {len(index_df)} forwards, one per index "
        f"({', '.join(index_df.columns)}) over all {prompt.n_positions} positions, {len(tm.video)} of them video "
        f"tokens; hooked_video.patching patches whole frames (frame_patching: n_layers x {tm.n_frames} patches), "
        "grid cells or any position sets, several per batched forward, with the same hook names",
        stacklevel=2,
    )


def sample_next(
    logits: Float[torch.Tensor, "vocab"],
    do_sample: bool,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> int:
    """The next token: the argmax, or (``do_sample``) a draw from the softmax of
    ``logits / temperature`` kept to the ``top_k`` tokens and the ``top_p`` nucleus, as
    TransformerLens' and Hugging Face's samplers keep them."""
    if not do_sample or temperature == 0:
        return int(logits.argmax())
    logits = logits.float() / temperature
    if top_k is not None and top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        ordered, order = logits.sort(descending=True)
        probs = ordered.softmax(-1)
        drop = probs.cumsum(-1) - probs > top_p  # keep the smallest set reaching top_p
        logits = logits.scatter(0, order[drop], float("-inf"))
    probs = logits.softmax(-1)
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))


def option_report(prompt: VideoPrompt, logits: Float[torch.Tensor, "vocab"], tokenizer, top_k: int = 10) -> str:
    """``test_prompt``'s report for a multiple-choice video prompt: each option letter's rank,
    logit and probability at the last position (the true one marked), then the top tokens."""
    probs = logits.float().softmax(-1)
    lines = [f"Question: {prompt.question}"]
    for index, (option, token) in enumerate(zip(prompt.options, prompt.option_token_ids)):
        rank = int((logits > logits[token]).sum())  # 0: the top token
        mark = "  <- true" if index == prompt.answer else ""
        lines.append(f"  ({tokenizer.decode([token]).strip()}) {option!r}: rank {rank}, logit {float(logits[token]):.2f}, "
                     f"prob {100 * float(probs[token]):.2f}%{mark}")  # fmt: skip
    top = torch.topk(probs, min(top_k, probs.numel()))
    lines.append("Top tokens: " + ", ".join(f"{tokenizer.decode([int(t)])!r} {100 * float(p):.2f}%"
                                           for p, t in zip(top.values, top.indices)))  # fmt: skip
    return "\n".join(lines)
