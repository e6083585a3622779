"""hooked_video: TransformerLens for Video LLMs.

The package is layered; each folder's docstring says what belongs there (``docs/design.md``
draws the diagram). Lower layers never import higher ones:

    core/      input checks and their errors, video decoding, the tested versions
    runtime/   how forwards run: fast attention and blocks, the sweep engine, capture,
               the results store, data-parallel shards
    model/     HookedVideoLLM, prompts and token maps, architecture families, checkpoint
               loading, TransformerLens adapters, checkpoint formats
    data/      benchmarks and the synthetic temporal benchmark
    analysis/  knockout, flow, attribution, lens, patching, pathways, discovery, accuracy
    viz/       figures
    app/       the ``hooked-video`` command, the demo, ``reproduce`` and its report
    zoo/       the bundled toy models and tiny models of every architecture

The names below are imported on first use, so that ``import hooked_video`` (and the
``hooked-video`` command's ``--help``) does not wait for torch and transformers. The analyses
are reachable where they always were: ``hooked_video.flow`` is ``hooked_video.analysis.flow``
(also for ``import hooked_video.flow`` and ``from hooked_video.flow import ...``), and so is
every module of the flat layout of 0.2 (``MOVED``).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import pkgutil
import sys

__version__ = "0.2.0"

_EXPORTS = {
    "EmbeddedPrompt": "hooked_video.model.embedded",
    "HookedVideoLLM": "hooked_video.model.hooked",
    "UnsupportedArchitectureError": "hooked_video.model.errors",
    "PromptTemplate": "hooked_video.model.prompt",
    "VideoPrompt": "hooked_video.model.prompt",
    "PromptLayoutError": "hooked_video.model.tokens",
    "TokenMap": "hooked_video.model.tokens",
    "VideoError": "hooked_video.core.video",
    "load_video": "hooked_video.core.video",
    "save_video": "hooked_video.core.video",
    "InvalidInputError": "hooked_video.core.checks",
    "load_results": "hooked_video.runtime.store",
}
#: The analyses' short paths: ``hooked_video.<name>`` is ``hooked_video.analysis.<name>``.
ANALYSES = ("accuracy", "attribution", "discovery", "flow", "knockout", "lens", "patching", "pathways")
#: Where the modules of the flat layout (up to 0.2) went: each old path imports the very module
#: (submodules too, e.g. ``hooked_video.models.pllava``), so code written against it keeps working.
MOVED = {
    **{name: f"analysis.{name}" for name in ANALYSES},
    "checks": "core.checks", "video": "core.video",
    "attention": "runtime.attention", "fastpath": "runtime.fastpath", "engine": "runtime.engine",
    "capture": "runtime.capture", "store": "runtime.store", "distributed": "runtime.distributed",
    "prompt": "model.prompt", "tokens": "model.tokens", "families": "model.families", "embedded": "model.embedded",
    "loading": "model.loading", "adapters": "model.adapters", "models": "model.formats",
    "cli": "app.cli", "commands": "app.commands", "demo": "app.demo", "reproduce": "app.reproduce",
    "report": "app.report",
}  # fmt: skip
__all__ = sorted([*_EXPORTS, *ANALYSES, "viz"])


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif name in ANALYSES:
        value = importlib.import_module(f"hooked_video.analysis.{name}")
    else:
        raise AttributeError(f"module 'hooked_video' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])


class _MovedModule(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports ``hooked_video.flow`` as the very module ``hooked_video.analysis.flow`` (one module
    object under two names, so patching either patches both), and registers its submodules under
    the old name too, so ``import hooked_video.flow.sweep`` finds them without a second copy."""

    def __init__(self) -> None:
        self._specs: dict = {}

    def find_spec(self, fullname, path=None, target=None):
        parts = fullname.split(".")
        if len(parts) != 2 or parts[0] != __name__ or parts[1] not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        module = importlib.import_module(f"{__name__}.{MOVED[spec.name.split('.')[1]]}")
        self._specs[spec.name] = module.__spec__
        return module

    def exec_module(self, module) -> None:
        alias = module.__spec__.name
        module.__spec__ = self._specs.pop(alias)  # the import machinery set the alias's
        for info in pkgutil.walk_packages(getattr(module, "__path__", []), f"{module.__name__}."):
            sys.modules[alias + info.name[len(module.__name__) :]] = importlib.import_module(info.name)


if not any(isinstance(finder, _MovedModule) for finder in sys.meta_path):
    sys.meta_path.insert(0, _MovedModule())  # before the path finder, which would load a second copy


class _RegisterAdaptersWithTransformerLens(importlib.abc.MetaPathFinder):
    """Once ``transformer_lens`` is imported (after ``hooked_video``), register this package's
    adapters with it, so that TransformerLens' own entry points (``TransformerBridge.boot_transformers``,
    its benchmark suite) know the architectures it lacks. Waiting for TransformerLens keeps
    ``import hooked_video`` light; it runs after TransformerLens' package has finished importing."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "transformer_lens":
            return None
        sys.meta_path.remove(self)  # find the real spec, once
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            execute = spec.loader.exec_module

            def exec_then_register(module) -> None:
                execute(module)
                _register_adapters()

            spec.loader.exec_module = exec_then_register
        return spec


def _register_adapters() -> None:
    try:
        importlib.import_module("hooked_video.model.adapters")  # registers on import
    except Exception as err:  # never break the user's import of transformer_lens
        import warnings

        warnings.warn(f"hooked_video could not register its TransformerLens adapters ({type(err).__name__}: {err}); "
                      "HookedVideoLLM still works", stacklevel=2)  # fmt: skip


if "transformer_lens" in sys.modules:
    _register_adapters()
elif not any(isinstance(finder, _RegisterAdaptersWithTransformerLens) for finder in sys.meta_path):
    sys.meta_path.insert(0, _RegisterAdaptersWithTransformerLens())
