"""The hook reference (``docs/hook_reference.py``, the site's ``hooks.md``) tells the truth: the
hooks it lists as reached fire, with the listed shapes, under the listed condition; the hooks it
says never fire do not; every hook name of every architecture has a kind, and the language
model's shapes fit the kinds' symbols; every alias it lists is the hook it names."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch

DOCS = Path(__file__).resolve().parents[1] / "docs"
sys.path.insert(0, str(DOCS))
import hook_kinds  # noqa: E402
import hook_reference  # noqa: E402

sys.path.remove(str(DOCS))

ROW = re.compile(r"^\| `(?P<name>[^`]+)`(?: = `(?P<canon>[^`]+)`)? \| \[(?P<kind>[^\]]+)\]\([^)]*\) \| (?P<shape>[^|]+) \|")
ALIAS = re.compile(r"^    \| `(?P<alias>[^`]+)` \| `(?P<canon>[^`]+)` \|$")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The tiny models and the page generated from them, once."""
    models = hook_reference.build_models(tmp_path_factory.mktemp("hook_reference"))
    return models, hook_reference.page(hook_reference.surveys(models))


@pytest.fixture(scope="module")
def tables(built) -> dict[str, dict]:
    """arch -> {"rows": {name: (shape cell, kind label)}, "aliases": {alias: canonical}}, from the page."""
    found: dict[str, dict] = {}
    arch = None
    for line in built[1].splitlines():
        if m := re.match(r"^## \w+ \(`(\w+)`\)$", line):
            arch = m[1]
            found[arch] = {"rows": {}, "aliases": {}}
        elif arch and (m := ROW.match(line)):
            found[arch]["rows"][m["name"]] = (m["shape"].strip(), m["kind"])
        elif arch and (m := ALIAS.match(line)):
            found[arch]["aliases"][m["alias"]] = m["canon"]
        elif arch and "editing these changes nothing:" in line:
            found[arch]["unread"] = re.findall(r"`(vision_encoder\.[^`]+)`", line)
    return found


def condition(shape_cell: str) -> str | None:
    """The prompt or flag a row says reaches the hook; None for one that never fires."""
    if shape_cell.startswith("never fires"):
        return None
    return shape_cell.split("<br>with ")[1] if "<br>with " in shape_cell else hook_reference.VIDEO


def run_cache(model, label: str) -> dict:
    """run_with_cache under a row's condition, written from the label alone."""
    prompt = hook_reference.video_prompt(model)
    flag = re.fullmatch(r"`model\.(\w+)\(True\)`", label)
    inputs = prompt if label == hook_reference.VIDEO or flag else hook_reference.other_prompts(model)[label]
    if flag:
        getattr(model, flag[1])(True)
    try:
        with torch.no_grad():
            _, cache = model.run_with_cache(inputs)
    finally:
        if flag:
            getattr(model, flag[1])(False)
    return cache


def test_every_architecture_has_a_table(built, tables):
    assert set(tables) == set(hook_reference.archs()) == set(built[0])
    for arch, table in tables.items():
        listed = {n for n in built[0][arch].hook_dict if hook_reference.listed(n)}
        assert set(table["rows"]) == listed, arch


def test_listed_hooks_fire_as_listed(built, tables, one_thread):
    for arch, table in tables.items():
        model, by_condition = built[0][arch], {}
        for name, (shape, _) in table["rows"].items():
            by_condition.setdefault(condition(shape), []).append((name, shape))
        for label, rows in by_condition.items():
            if label is None:
                continue
            cache = run_cache(model, label)
            for name, shape in rows:
                assert name in cache, f"{arch}: {name} does not fire with {label}"
                assert str(tuple(cache[name].shape)) == shape.split("<br>")[0], f"{arch}: {name}"
        silent = [name for name, _ in by_condition.get(None, [])]
        cache = run_cache(model, hook_reference.VIDEO)
        assert not [n for n in silent if n in cache], f"{arch}: listed as never firing, but fire"
        assert all("reason unknown" not in table["rows"][n][0] for n in silent), f"{arch}: a silent hook without a reason"


def test_vision_outputs_said_unread_are(built, tables, one_thread):
    """The vision blocks whose hook_out edits the page says are lost are exactly those (noise, not an
    affine edit: the norms that follow undo those)."""

    def noise(act, hook):
        return act + 0.3 * act.std() * torch.randn(act.shape, generator=torch.Generator().manual_seed(1))

    for arch, model in built[0].items():
        prompt = hook_reference.video_prompt(model)
        with torch.no_grad():
            base = model(prompt)
            unread = []
            for name in [n for n in model.hook_dict if hook_reference.VISION_BLOCK_OUT.fullmatch(n)]:
                edited = model.run_with_hooks(prompt, fwd_hooks=[(name, noise)])
                unread += [name] if torch.allclose(edited, base, atol=1e-4) else []
        assert unread == tables[arch].get("unread", []), arch


def shape_fits(shape: tuple, written: str, sizes: dict) -> bool:
    """Whether a measured shape is one of those a kind writes in symbols ("a or b" per axis,
    alternatives after "name:" separated by ";")."""
    for alternative in re.findall(r"\(([^)]*)\)", written):
        axes = [axis.strip() for axis in alternative.split(",")]
        if len(axes) == len(shape) and all(
            any(str(size) == option.strip() or sizes.get(option.strip()) == size for option in axis.split(" or "))
            for axis, size in zip(axes, shape)
        ):
            return True
    return False


def test_every_hook_has_a_kind_and_language_model_shapes_fit(built, tables):
    from hooked_video.analysis.knockout import attn_scores_hook_name

    lm_kinds = {kind.label: kind for kind in hook_kinds.KINDS_BY_PART[hook_kinds.LM]}
    for arch, model in built[0].items():
        missing = [name for name in model.hook_dict if hook_kinds.kind_of(name) is None]
        assert not missing, f"{arch}: hooks without a kind in docs/hook_kinds.py: {missing}"
        assert not [n for n in model.lm_hook_names if hook_kinds.kind_of(n).label not in lm_kinds], arch
        prompt, cfg = hook_reference.video_prompt(model), model.cfg
        sizes = {"batch": 1, "pos": prompt.n_positions, "n_video": len(prompt.token_map.video), "d_model": cfg.d_model,
                 "n_heads": cfg.n_heads, "n_kv_heads": getattr(cfg, "n_key_value_heads", None) or cfg.n_heads,
                 "d_head": cfg.d_head, "d_rot": cfg.d_head, "d_mlp": cfg.d_mlp, "d_vocab": cfg.d_vocab_out}  # fmt: skip
        for name, (shape, label) in tables[arch]["rows"].items():
            if label in lm_kinds and condition(shape) is not None:
                measured = tuple(int(s) for s in re.findall(r"\d+", shape.split("<br>")[0]))
                written = lm_kinds[label].shape
                assert shape_fits(measured, written, sizes), f"{arch}: {name} is {measured}, its kind says {written}"
    assert hook_kinds.kind_of(attn_scores_hook_name(3)).label == "attention scores"  # the knockout hook
    assert {kind.anchor for kind in hook_kinds.KINDS} <= set(re.findall(r'<a id="([^"]+)"></a>', built[1]))


def layers(name: str) -> str:
    return re.sub(r"\.\d+\.", ".{l}.", name)


def test_aliases_are_the_hooks_they_name(built, tables):
    for arch, model in built[0].items():
        aliases = tables[arch]["aliases"]
        hooks = model.hook_dict
        expected = {layers(name): layers(hook.name) for name, hook in hooks.items() if hook.name != name}
        assert aliases == expected, f"{arch}: the page's aliases differ from the bridge's"
        last = max(model.cfg.n_layers - 1, 0)
        for alias, canonical in aliases.items():
            for layer in (0, last):
                a, c = alias.replace("{l}", str(layer)), canonical.replace("{l}", str(layer))
                assert a in hooks and c in hooks and hooks[a] is hooks[c], f"{arch}: {a} -> {c}"
