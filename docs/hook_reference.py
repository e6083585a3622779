"""The hook reference page (``hooks.md``), measured on tiny random-weight models of every
architecture when the site is built: which hooks a video prompt reaches (and, for the rest, which
flag or prompt does, or why none does), their shapes, whether an edit changes the output, whether
the fast path of a forward honours them, and TransformerLens' aliases. The meaning of each hook
comes from ``hook_kinds.py``."""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from hook_kinds import KINDS, KINDS_BY_PART, SYMBOLS, Kind, kind_of, reason_for

QUESTION, OPTIONS, ANSWER = "which way does the ball move ?", ["left", "right"], 1
#: TransformerLens flags that make more hooks fire (set with ``model.<flag>(True)``), tried in turn.
FLAGS = ("set_use_attn_result", "set_use_split_qkv_input", "set_use_attn_in", "set_use_hook_mlp_in")
VIDEO = "the video prompt"
SKIP = {"llava_next_image", "videollama3_official"}  # the image baseline; the same class as video_llama_3


def frames() -> np.ndarray:
    """The 4 frames of 32 x 32 pixels of every prompt on the page."""
    return np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)


def archs() -> list[str]:
    from hooked_video.zoo.tiny import BUILDERS

    return sorted(set(BUILDERS) - SKIP)


def build_models(root: Path) -> dict:
    """arch -> a tiny HookedVideoLLM (4 vision layers, so that the first vision block is not one
    whose output the projector skips)."""
    from hooked_video import HookedVideoLLM
    from hooked_video.zoo.tiny import TinySizes, build_tiny

    return {arch: HookedVideoLLM.from_pretrained(build_tiny(arch, Path(root) / arch, TinySizes(vision_layers=4)))
            for arch in archs()}  # fmt: skip


def video_prompt(model):
    return model.prepare(frames(), QUESTION, OPTIONS, answer=ANSWER, num_frames=None)


def other_prompts(model) -> dict:
    """Prompts without video: label -> inputs (those the model's processor can build)."""
    from PIL import Image

    processor, built = model.processor, {}
    try:
        built["a text-only prompt"] = dict(processor(text=QUESTION, return_tensors="pt"))
        token = processor.image_token
        image = Image.fromarray(frames()[0])
        built["an image prompt"] = dict(processor(text=f"{token} {QUESTION}", images=[image], return_tensors="pt"))
    except Exception:  # noqa: BLE001  a processor that takes no text-only or image call: the others are tried
        return built
    return built


def flag_label(flag: str) -> str:
    return f"`model.{flag}(True)`"


@dataclass
class Hook:
    """One listed hook point of one architecture, as measured."""

    name: str
    kind: Kind | None
    alias_of: str | None = None
    shape: tuple | None = None
    reached_by: str | None = None  # VIDEO, a flag's label, or another prompt's label
    reason: str | None = None  # why it never fires
    editable: bool | None = None
    fast: str | None = None  # "yes", or what differs on the fast path


@dataclass
class Survey:
    arch: str
    model_class: str
    prompt: str
    n_hooks: int
    n_lm_hooks: int
    hooks: list[Hook]
    aliases: dict[str, str]  # alias -> canonical, layers written {l}
    tried: list[str] = field(default_factory=list)  # other prompts run
    unread: list[str] = field(default_factory=list)  # vision blocks whose hook_out edits change nothing
    n_vision_blocks: int = 0


def listed(name: str) -> bool:
    """Hooks of the first block of each stack (and everything outside blocks): blocks repeat."""
    return not any(p.isdigit() and p != "0" for p in name.split("."))


def layer_pattern(name: str) -> str:
    return re.sub(r"\.\d+\.", ".{l}.", name)


def _run_cache(model, inputs, flag: str | None = None) -> dict:
    if flag:
        getattr(model, flag)(True)
    try:
        with torch.no_grad():
            _, cache = model.run_with_cache(inputs)
        return {name: tuple(act.shape) for name, act in cache.items()}
    finally:
        if flag:
            getattr(model, flag)(False)


def survey(arch: str, model) -> Survey:
    """Everything the page says about one architecture, measured on ``model``."""
    from transformer_lens.model_bridge.bridge_core import build_alias_to_canonical_map

    prompt = video_prompt(model)
    names = sorted(n for n in model.hook_dict if listed(n))
    aliases = build_alias_to_canonical_map(model.hook_dict)
    hooks = {n: Hook(n, kind_of(n), alias_of=aliases.get(n)) for n in names}
    conditions = [(VIDEO, prompt, None)] + [(flag_label(f), prompt, f) for f in FLAGS]
    tried, bases = [], {}
    for label, inputs, flag in conditions + [(label, inputs, None) for label, inputs in other_prompts(model).items()]:
        silent = [h for h in hooks.values() if h.reached_by is None]
        if not silent:
            break
        try:
            shapes = _run_cache(model, inputs, flag)
        except Exception:  # noqa: BLE001  a flag or prompt this architecture refuses reaches nothing
            if label == VIDEO:
                raise
            continue
        tried += [label] if flag is None and label != VIDEO else []
        for hook in silent:
            if hook.name in shapes:
                hook.reached_by, hook.shape = label, shapes[hook.name]
                if flag or label == VIDEO:
                    _probe(model, prompt, hook, flag, bases)
    for hook in hooks.values():
        if hook.reached_by is None:
            hook.reason = reason_for(hook.name, model)
    for hook in hooks.values():  # an alias behaves as the hook it names
        target = hooks.get(hook.alias_of or "")
        if target is not None and hook.editable is None:
            hook.editable, hook.fast = target.editable, target.fast
    outputs = [n for n in model.hook_dict if VISION_BLOCK_OUT.fullmatch(n)]
    if None not in bases:
        with torch.no_grad():
            bases[None] = model(prompt)
    return Survey(arch, type(model.hf_model).__name__, f"{prompt.n_positions} positions, {prompt.token_map!r}",
                  len(model.hook_dict), len(model.lm_hook_names), sorted(hooks.values(), key=_order),
                  {layer_pattern(a): layer_pattern(c) for a, c in sorted(aliases.items())}, tried,
                  [n for n in outputs if not _changes_output(model, prompt, n, bases[None])], len(outputs))  # fmt: skip


VISION_BLOCK_OUT = re.compile(r"vision_encoder\.(encoder_layers|blocks)\.\d+\.hook_out")


def _changes_output(model, prompt, name: str, base: torch.Tensor) -> bool:
    with torch.no_grad():
        edited = model.run_with_hooks(prompt, fwd_hooks=[(name, lambda act, hook: _edit(act))])
    return not torch.allclose(edited, base, atol=1e-4)


def _order(hook: Hook) -> tuple:
    return (KINDS.index(hook.kind) if hook.kind else len(KINDS), hook.name)


def _edit(act: torch.Tensor) -> torch.Tensor:
    """Random factors around 1 on every finite entry (masked scores stay masked)."""
    noise = torch.randn(act.shape, generator=torch.Generator().manual_seed(0)).to(act.device, act.dtype)
    return torch.where(act.abs() < 1e4, act * (1 + 0.5 * noise), act)


def _probe(model, prompt, hook: Hook, flag: str | None, bases: dict) -> None:
    """Editable: the edit changes the logits (reference attention path). Fast: with only this hook,
    the default path fires it with the same shape and the edit gives the same logits."""
    from hooked_video.runtime.attention import reference_attention

    if hook.alias_of is not None and listed(hook.alias_of) or hook.shape is None:
        return  # an alias copies its target's result
    seen: list[tuple] = []

    def edit(act, hook):
        seen.append(tuple(act.shape) if act.is_floating_point() else None)
        return _edit(act) if act.is_floating_point() else act

    if flag:
        getattr(model, flag)(True)
    try:
        with torch.no_grad():
            if flag not in bases:
                bases[flag] = model(prompt)  # the unhooked logits, once per flag
            fast = model.run_with_hooks(prompt, fwd_hooks=[(hook.name, edit)])
            n_fast = len(seen)
            with reference_attention():
                reference = model.run_with_hooks(prompt, fwd_hooks=[(hook.name, edit)])
    finally:
        if flag:
            getattr(model, flag)(False)
    if None in seen:
        return  # token ids: not a float to edit
    hook.editable = not torch.allclose(reference, bases[flag], atol=1e-4)
    if not n_fast:
        hook.fast = "not fired"
    elif seen[0] != hook.shape:
        hook.fast = f"fires as {seen[0]}"
    elif not torch.allclose(fast, reference, atol=1e-3):
        hook.fast = "edit differs"
    else:
        hook.fast = "yes"


# ----- the page ---------------------------------------------------------------------------------
INTRO = """# Hook reference

Every hook point of each supported architecture: what it holds, its shape, whether editing it
changes the output, and whether the fast path honours it. Everything but the meaning is measured
when this site is built, on a tiny random-weight model of each architecture and one prompt
(4 frames of 32 x 32 pixels, a question with two options). Shapes scale with a real model's sizes.

**Names.** Blocks repeat: the tables list block 0 of the language model and of the vision tower
and stand for every `blocks.{l}`. `model.lm_hook_names` lists the language model's hooks (the
embedding, `blocks.*`, the final norm, the unembedding, `hook_video_embeds`); filter with it, not
with a suffix test: `name.endswith("hook_resid_post")` also matches `vision_encoder.*` hooks.

```python
lm = set(model.lm_hook_names)
_, cache = model.run_with_cache(prompt, names_filter=lambda name: name in lm and name.endswith("hook_resid_post"))
```

**Aliases.** TransformerLens 4 gives many hooks a second, TransformerLens-style name
(`blocks.3.attn.hook_z` is the hook point `blocks.3.attn.o.hook_in`). Both names work in
`run_with_hooks` and `run_with_cache`, but inside a hook function `hook.name` is the canonical
name (`"blocks.3.attn.o.hook_in"`). Each architecture's aliases are listed under its table.

**Editable** (measured): a forward hook multiplies the activation by random factors around 1, and
the logits change. "no" marks read-only copies (a vision attention pattern copied from Hugging
Face's weights) and tensors the model does not read on: the input the rotary embedding takes only
its dtype from, and a vision tower's final output where the model reads another tensor (LLaVA-family
models the hidden states of layer `vision_feature_layer`, before the final norm; Qwen-VL models
the merged output). Those hidden states are recorded by Hugging Face as the layer returns them,
before TransformerLens' `hook_out`: on LLaVA-family models an edit of that layer's `hook_out`
(`hook_resid_post`), or of anything in a later layer, changes nothing. Edit inside that layer
(its `mlp.hook_out`, say) or an earlier layer's output. The tables list block 0; each
architecture's vision blocks whose `hook_out` edits are lost are named under its table.

**Fast path** (measured): `from_pretrained` gives each block a plain Hugging Face copy and the
language model's attention an SDPA path, which run where no hook is registered. "yes": with only
this hook registered, the default forward fires it with the shape in the table, and its edit gives
the same logits as on TransformerLens' reference path. "Leaves the fast path" says what a hook
there takes off it: its block (it runs through the TransformerLens bridge instead), and for
attention scores, patterns and the layer's rotary tables also that layer's SDPA attention
(TransformerLens' reference attention materialises the N x N scores). The sweep engine of
`flow.sweep` (`engine="fast"` or `"compiled"`) honours no hook: with any hook registered, or
`fwd_hooks` given, `engine="auto"` takes the hook path and `"fast"` refuses.
"""


def _cell(text: str) -> str:
    """Text for a table cell: pipes outside code spans escaped (a table keeps those inside)."""
    parts = text.split("`")
    return "`".join(p if i % 2 else p.replace("|", "\\|") for i, p in enumerate(parts))


def _names(kind: Kind) -> str:
    return "<br>".join(f"`{n}`" for n in kind.names)  # a table keeps the pipes of code spans


def _measured(hooks: list[tuple[str, Hook]], attribute: str, show) -> str:
    """A measured column over every architecture: the most common value, then the exceptions
    (which hooks, on which architectures)."""
    values = [(show(getattr(h, attribute)), layer_pattern(h.name), arch) for arch, h in hooks
              if getattr(h, attribute) is not None]  # fmt: skip
    if not values:
        return "—"
    counts: dict[str, int] = {}
    for value, _, _ in values:
        counts[value] = counts.get(value, 0) + 1
    common = max(counts, key=counts.get)
    exceptions: dict[tuple[str, str], list[str]] = {}
    for value, name, arch in values:
        if value != common:
            exceptions.setdefault((value, name), []).append(arch)
    notes = [f"{value}: `{name}` ({', '.join(sorted(set(a)))})" for (value, name), a in sorted(exceptions.items())]
    return "<br>".join([common, *notes])


def kinds_section(surveys: list[Survey]) -> list[str]:
    by_kind: dict[str, list[tuple[str, Hook]]] = {}
    for s in surveys:
        for hook in s.hooks:
            if hook.kind is not None:
                by_kind.setdefault(hook.kind.label, []).append((s.arch, hook))
    lines = ["## Kinds of hooks", "",
             ("By name pattern (`{l}`: a layer; `{layers}`: `encoder_layers` or `blocks`, as the vision tower names "
             "them). Editable and fast path are measured over every architecture; \"—\" where no prompt reaches "
             "the kind. Vision shapes vary with the tower: the architecture tables give each."), ""]  # fmt: skip
    for part, kinds in KINDS_BY_PART.items():
        lines += [f"### The {part}", "", "| kind | names | holds | shape | editable | fast path | leaves the fast path |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        for kind in kinds:
            hooks = by_kind.get(kind.label, [])
            editable = _measured(hooks, "editable", lambda v: "yes" if v else "no")
            fast = _measured(hooks, "fast", lambda v: "other layout" if v.startswith("fires as") else v)
            lines.append(f'| <a id="{kind.anchor}"></a>{kind.label} | {_names(kind)} | {_cell(kind.holds)} | '
                         f"{kind.shape} | {editable} | {_cell(fast)} | {kind.cost} |")  # fmt: skip
        lines.append("")
    lines += ["Shape symbols: " + "; ".join(f"`{s}` {meaning}" for s, meaning in SYMBOLS.items()) + ".", ""]
    return lines


def arch_section(s: Survey) -> list[str]:
    extra = sum(h.reached_by in s.tried for h in s.hooks)
    others = (f" For the hooks the video prompt and the flags leave silent, also run: {' and '.join(s.tried)} "
              f"(reaching {extra or 'none'} of them)." if s.tried else "")  # fmt: skip
    lines = [f"## {s.model_class} (`{s.arch}`)", "",
             (f"{s.n_hooks} hook points, {s.n_lm_hooks} of them the language model's (`model.lm_hook_names`). "
             f"Prompt: {s.prompt}.{others} Rows follow the kinds table."), "",
             "| hook point | kind | shape | editable | fast path |", "|---|---|---|---|---|"]  # fmt: skip
    for h in s.hooks:
        name = f"`{h.name}`" + (f" = `{h.alias_of}`" if h.alias_of else "")
        kind = f"[{h.kind.label}](#{h.kind.anchor})" if h.kind else "?"
        if h.reached_by is None:
            shape = f"never fires: {h.reason or 'reason unknown'}"
        else:
            shape = str(h.shape) + ("" if h.reached_by == VIDEO else f"<br>with {h.reached_by}")
        editable = "—" if h.editable is None else "yes" if h.editable else "no"
        lines.append(f"| {name} | {kind} | {_cell(shape)} | {editable} | {h.fast or '—'} |")
    if s.unread:
        lines += ["", f"Of the {s.n_vision_blocks} vision blocks' `hook_out`, editing these changes nothing: "
                  + ", ".join(f"`{n}`" for n in s.unread) + " (see *Editable* above)."]  # fmt: skip
    lines += ["", f'??? note "Aliases of {s.arch} ({len(s.aliases)}, every layer written {{l}})"', "",
              "    | alias | hook point |", "    |---|---|"]  # fmt: skip
    lines += [f"    | `{a}` | `{c}` |" for a, c in s.aliases.items()]
    return lines + [""]


def page(surveys: list[Survey]) -> str:
    lines = [INTRO, *kinds_section(surveys)]
    for s in surveys:
        lines += arch_section(s)
    return "\n".join(lines)


def surveys(models: dict) -> list[Survey]:
    """Every architecture's survey (one thread: tiny models run fastest on one)."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings():  # the probes' edits of read-only hooks, which TransformerLens reports
            warnings.simplefilter("ignore")
            return [survey(arch, model) for arch, model in models.items()]
    finally:
        torch.set_num_threads(threads)


def build_page(root: Path) -> str:
    """The whole page, tiny models built under ``root``."""
    return page(surveys(build_models(root)))
