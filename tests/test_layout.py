"""The package shows its architecture: every module sits in a folder that names its layer, a layer
imports only from the layers below it, no two modules import each other (directly or through a
cycle), and the public surface still imports as it always did. Imports are read with ``ast``
(function-level imports included), so a lazy import cannot hide a circle."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import sys
from pathlib import Path

import pytest

import hooked_video

PACKAGE = Path(hooked_video.__file__).parent
ROOT = PACKAGE.parent
#: layer -> the layers it may import from (its own included), as docs/design.md draws them.
LAYERS = {
    "core": {"core"},
    "runtime": {"runtime", "core"},
    "model": {"model", "runtime", "core"},
    "data": {"data", "model", "core"},
    "analysis": {"analysis", "data", "model", "runtime", "core"},
    "zoo": {"zoo", "analysis", "data", "model", "runtime", "core"},
    "viz": {"viz", "analysis", "data", "model", "runtime", "core"},
    "app": {"app", "viz", "zoo", "analysis", "data", "model", "runtime", "core"},
}
#: The bundled-model registry (plain data) that loading consults to resolve a name like "toy-video-ft".
REGISTRY = "hooked_video.zoo"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(name: str) -> set[str]:
    """Package modules that module ``name`` imports anywhere in its body."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        found.update(t for t in targets if t in MODULES and t != name)
    return found


GRAPH = {name: imports(name) for name in MODULES}


def layer(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else None


def test_every_module_sits_in_a_layer_folder():
    loose = [n for n in MODULES if layer(n) not in LAYERS and n not in ("hooked_video", "hooked_video.__main__")]
    assert not loose, f"modules outside the layer folders {sorted(LAYERS)}: {loose}"
    assert {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()} == set(LAYERS)


@pytest.mark.parametrize("folder", sorted(LAYERS))
def test_each_layer_says_what_belongs_there(folder):
    doc = ast.get_docstring(ast.parse((PACKAGE / folder / "__init__.py").read_text()))
    assert doc and len(doc) > 80, f"hooked_video/{folder}/__init__.py: say what belongs in this folder"


def test_layers_import_only_from_below():
    wrong = []
    for name, targets in GRAPH.items():
        if layer(name) not in LAYERS:
            continue
        for target in targets:
            if target == REGISTRY or layer(target) is None:
                continue
            if layer(target) not in LAYERS[layer(name)]:
                wrong.append(f"{name} -> {target}")
    assert not wrong, "imports against the layer order:\n" + "\n".join(sorted(wrong))


def test_no_import_circles():
    """Strongly connected components of the import graph all have one module."""
    index, low, stack, on_stack, circles = {}, {}, [], set(), []
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(GRAPH)))

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in GRAPH:
        if v not in index:
            visit(v)
    assert not circles, f"import circles: {circles}"


def test_the_checks_would_see_a_circle_and_a_wrong_layer():
    """The graph reader finds function-level imports (the ones a circle hides in)."""
    assert "hooked_video.model.loading" in GRAPH["hooked_video.model.hooked"]  # imported inside from_pretrained
    assert "hooked_video.runtime.edges" in GRAPH["hooked_video.analysis.knockout"]


def test_the_public_surface_imports_as_before():
    from hooked_video import HookedVideoLLM, flow, knockout, lens, patching, pathways, viz  # noqa: F401

    for name in hooked_video.__all__:
        assert getattr(hooked_video, name) is not None
    for short in hooked_video.ANALYSES:  # hooked_video.flow is hooked_video.analysis.flow, under every spelling
        real = importlib.import_module(f"hooked_video.analysis.{short}")
        assert importlib.import_module(f"hooked_video.{short}") is real is getattr(hooked_video, short)
        assert real.__spec__.name == f"hooked_video.analysis.{short}"
    from hooked_video.flow.sweep import sweep

    assert sweep is flow.sweep and sys.modules["hooked_video.flow.sweep"] is sys.modules["hooked_video.analysis.flow.sweep"]
    from hooked_video.model import HookedVideoLLM as again

    assert again is HookedVideoLLM


def api_names() -> list[tuple[str, str]]:
    """(module, public name) for every module the API reference lists."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("api_reference", ROOT / "docs" / "api_reference.py")
    api_reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(api_reference)
    listed = api_reference.MODULES
    pairs = []
    for module in listed:
        imported = importlib.import_module(module)
        names = getattr(imported, "__all__", None) or [
            n for n, v in vars(imported).items()
            if not n.startswith("_") and getattr(v, "__module__", None) == imported.__name__
        ]  # fmt: skip
        pairs += [(module, n) for n in names]
    return pairs


def test_every_name_of_the_api_reference_imports():
    pairs = api_names()
    assert len(pairs) > 150
    for module, name in pairs:
        namespace: dict = {}
        exec(f"from {module} import {name}", namespace)
        assert namespace[name] is not None, f"{module}.{name}"


def test_every_name_of_the_flat_layout_imports_from_its_old_path():
    """Code written against 0.2 (``hooked_video.loading``, ``hooked_video.models.pllava``,
    ``hooked_video.store``, ...) keeps working: each public name its modules defined (listed from
    the 0.2 sources in tests/data/api_0_2.json) imports from the old path, as the same object."""
    import json

    old_api = json.loads((Path(__file__).parent / "data" / "api_0_2.json").read_text())
    assert len(old_api) > 40 and sum(map(len, old_api.values())) > 400
    missing = []
    for module, names in old_api.items():
        imported = importlib.import_module(module)
        for name in names:
            if not hasattr(imported, name):
                missing.append(f"{module}.{name}")
    assert not missing, f"names of 0.2 that no longer import from their path: {missing}"
    import hooked_video.loading
    import hooked_video.models.pllava
    from hooked_video.model.formats import pllava
    from hooked_video.model.loading import load_checkpoint

    assert hooked_video.models.pllava is pllava and hooked_video.loading.load_checkpoint is load_checkpoint
