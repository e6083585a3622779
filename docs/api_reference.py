"""The API reference: an index page (``api.md``: the names a researcher uses daily, then every
module by section) and one page per module (``api/<module>.md``): its docstring, its classes and
functions (mkdocstrings), then its constants in a table with their ``#:`` comments."""

from __future__ import annotations

import functools
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: Modules of the API reference, one section per layer of the package, top-down as a reader meets them
#: (every public name of each is documented).
API_MODULES = [
    ("model/: the model side", ["hooked_video.model.hooked", "hooked_video.model.prompt", "hooked_video.model.tokens",
                                "hooked_video.model.families", "hooked_video.model.embedded",
                                "hooked_video.model.habits"]),
    ("model/: loading checkpoints", ["hooked_video.model.loading", "hooked_video.model.weights", "hooked_video.model.errors",
                                     "hooked_video.model.formats.pllava", "hooked_video.model.formats.pllava_processing",
                                     "hooked_video.model.formats.internvl_chat",
                                     "hooked_video.model.formats.internvl_chat_processing",
                                     "hooked_video.model.formats.videollama3_official",
                                     "hooked_video.model.formats.conversion", "hooked_video.model.adapters"]),
    ("analysis/: the analyses", ["hooked_video.analysis.knockout", "hooked_video.analysis.flow.sweep",
                                 "hooked_video.analysis.flow.targets", "hooked_video.analysis.flow.summary",
                                 "hooked_video.analysis.flow.records", "hooked_video.analysis.flow.open_ended",
                                 "hooked_video.analysis.attribution.run", "hooked_video.analysis.attribution.compare",
                                 "hooked_video.analysis.attribution.groups", "hooked_video.analysis.attribution.heads",
                                 "hooked_video.analysis.attribution.estimates",
                                 "hooked_video.analysis.attribution.gradients",
                                 "hooked_video.analysis.lens.core", "hooked_video.analysis.lens.run",
                                 "hooked_video.analysis.lens.answer", "hooked_video.analysis.lens.keywords",
                                 "hooked_video.analysis.patching", "hooked_video.analysis.pathways",
                                 "hooked_video.analysis.random_pruning", "hooked_video.analysis.discovery",
                                 "hooked_video.analysis.discovery.search", "hooked_video.analysis.discovery.curve",
                                 "hooked_video.analysis.discovery.scoring", "hooked_video.analysis.discovery.refine",
                                 "hooked_video.analysis.discovery.groups", "hooked_video.analysis.discovery.gates",
                                 "hooked_video.analysis.discovery.blocks", "hooked_video.analysis.discovery.ranked",
                                 "hooked_video.analysis.accuracy"]),
    ("data/: datasets", ["hooked_video.data.mcqa", "hooked_video.data.layout", "hooked_video.data.benchmarks",
                         "hooked_video.data.synthetic", "hooked_video.data.prefetch"]),
    ("runtime/: how forwards run", ["hooked_video.runtime.edges", "hooked_video.runtime.attention",
                                    "hooked_video.runtime.fastpath", "hooked_video.runtime.engine",
                                    "hooked_video.runtime.capture", "hooked_video.runtime.store",
                                    "hooked_video.runtime.store_format", "hooked_video.runtime.identity",
                                    "hooked_video.runtime.results",
                                    "hooked_video.runtime.distributed"]),
    ("core/: checks, video, versions", ["hooked_video.core.checks", "hooked_video.core.video", "hooked_video.core.versions"]),
    ("viz/ and app/: figures and reports", ["hooked_video.viz.plots", "hooked_video.viz.attribution", "hooked_video.viz.attention",
                                            "hooked_video.viz.blueprint", "hooked_video.viz.pathways", "hooked_video.viz.html",
                                            "hooked_video.app.report", "hooked_video.app.outputs", "hooked_video.app.reproduce",
                                            "hooked_video.app.demo"]),
    ("zoo/: toy and tiny models", ["hooked_video.zoo", "hooked_video.zoo.tiny", "hooked_video.zoo.tiny_parts",
                                   "hooked_video.zoo.tiny_families", "hooked_video.zoo.tiny_paper", "hooked_video.zoo.train", "hooked_video.zoo.scenes",
                                   "hooked_video.zoo.planted"]),
]
MODULES = [module for _, modules in API_MODULES for module in modules]

#: The names a researcher uses daily: (how they are written in code, the objects they link to, what for).
#: ``hooked_video.<analysis>`` is ``hooked_video.analysis.<analysis>``.
NAMES = [
    ("HookedVideoLLM.from_pretrained", ["hooked_video.model.hooked.HookedVideoLLM.from_pretrained"],
     "load a checkpoint (folder, hub id or bundled zoo name) as a hooked model"),
    ("model.prepare", ["hooked_video.model.hooked.HookedVideoLLM.prepare"],
     "a video, a question and options -> a `VideoPrompt`"),
    ("model.run_with_cache, model.lm_hook_names", ["hooked_video.model.hooked.HookedVideoLLM.run_with_cache",
                                                   "hooked_video.model.hooked.HookedVideoLLM.lm_hook_names"],
     "TransformerLens forwards on a prompt; the language model's hook names (see the hook reference)"),
    ("VideoPrompt", ["hooked_video.model.prompt.VideoPrompt"], "a prepared prompt: inputs, token map, option token ids"),
    ("TokenMap", ["hooked_video.model.tokens.TokenMap"],
     "which position is which role, frame and grid cell (the positions analyses select)"),
    ("load_video", ["hooked_video.core.video.load_video"], "read a video file and sample its frames"),
    ("knockout.hooks", ["hooked_video.analysis.knockout.hooks"],
     "forward hooks that block attention edges in chosen layers (at `hook_attn_scores`)"),
    ("knockout.between, within, cross_frame, window", ["hooked_video.analysis.knockout.between",
                                                        "hooked_video.analysis.knockout.within",
                                                        "hooked_video.analysis.knockout.cross_frame",
                                                        "hooked_video.analysis.knockout.window"],
     "edge sets from a token map, and the layers a swept window blocks"),
    ("flow.sweep, flow.summarize", ["hooked_video.analysis.flow.sweep.sweep", "hooked_video.analysis.flow.summary.summarize"],
     "knockout sweeps over a dataset (the paper's information-flow curves) and their summary"),
    ("attribution.attribute, attribution.compare, attribution.head_knockouts",
     ["hooked_video.analysis.attribution.run.attribute", "hooked_video.analysis.attribution.compare.compare",
      "hooked_video.analysis.attribution.heads.head_knockouts"],
     "the sweep's rows (and frame pairs, tokens, cells, heads) estimated from gradients, checked against exact ones"),
    ("lens.logit_lens, lens.answer_probability_by_layer, lens.run",
     ["hooked_video.analysis.lens.core.logit_lens", "hooked_video.analysis.lens.answer.answer_probability_by_layer",
      "hooked_video.analysis.lens.run.run"],
     "the logit lens over video tokens, the answer's probability by layer, both over a dataset"),
    ("patching.frame_patching, cell_patching", ["hooked_video.analysis.patching.frame_patching",
                                                 "hooked_video.analysis.patching.cell_patching"],
     "activation patching of whole frames or single video cells, layer by layer"),
    ("pathways.evaluate", ["hooked_video.analysis.pathways.evaluate"],
     "accuracy with only the effective pathways kept, against full attention and random pruning"),
    ("discovery.discover, discover_each, refine, viz.faithfulness_curve",
     ["hooked_video.analysis.discovery.search.discover", "hooked_video.analysis.discovery.search.discover_each",
      "hooked_video.analysis.discovery.refine.refine", "hooked_video.viz.pathways.faithfulness_curve"],
     "the smallest faithful pathway found from data (layers closed one at a time, exact), per model, task or "
     "sample, its faithfulness-size curve against random pruning and the preset, and the frame pairs, "
     "question tokens or video cells inside it"),
    ("discovery.size_curve, BlockPathway", ["hooked_video.analysis.discovery.ranked.size_curve",
                                            "hooked_video.analysis.discovery.blocks.BlockPathway"],
     "the faithfulness-size curve over every attention edge, down to one edge per row: block groups ranked by "
     "attribution, each size exact, beside random pruning and the preset"),
    ("pathways.faithfulness", ["hooked_video.analysis.pathways.faithfulness"],
     "is a pathway enough (everything outside it knocked out) and is each of its flows needed (each cut)"),
    ("accuracy.accuracy", ["hooked_video.analysis.accuracy.accuracy"], "multiple-choice accuracy per task"),
    ("viz.knockout_curves, attention_to_video_figure, attention_pattern, flow_blueprint",
     ["hooked_video.viz.plots.knockout_curves", "hooked_video.viz.attention.attention_to_video_figure",
      "hooked_video.viz.attention.attention_pattern", "hooked_video.viz.blueprint.flow_blueprint"],
     "the paper's figures from sweep results, attention maps over frames"),
    ("data.open_dataset, TVBench, TOMATO, MCQADataset", ["hooked_video.data.benchmarks.open_dataset",
                                                          "hooked_video.data.benchmarks.TVBench",
                                                          "hooked_video.data.benchmarks.TOMATO",
                                                          "hooked_video.data.mcqa.MCQADataset"],
     "benchmark folders and your own multiple-choice data as samples"),
    ("load_results", ["hooked_video.runtime.results.load_results"], "a saved sweep or lens run as a DataFrame"),
    ("hooked_video.zoo", ["hooked_video.zoo"], "bundled toy models that load by name, offline"),
]


def page_of(module: str) -> str:
    """The site path of a module's page."""
    return f"api/{module}.md"


@functools.lru_cache(maxsize=1)
def _package():
    import griffe

    return griffe.load("hooked_video", search_paths=[str(ROOT)], resolve_aliases=False)


def _get(package, path: str):
    return package if path == "hooked_video" else package[path[len("hooked_video.") :]]


def summary(obj) -> str:
    """The first sentence of an object's docstring, on one line."""
    text = obj.docstring.value.split("\n\n")[0] if obj.docstring else ""
    text = " ".join(text.split())
    end = text.find(". ")
    return text if end < 0 or len(text) < 160 else text[: end + 1]


def home_of(identifier: str) -> str | None:
    """The module whose page documents ``identifier`` (the longest listed module it starts with)."""
    prefixes = [m for m in MODULES if identifier == m or identifier.startswith(m + ".")]
    return max(prefixes, key=len) if prefixes else None


def members(module) -> tuple[list[str], list, list[str]]:
    """(classes and functions to render, constants, re-exported names documented on another page)."""
    exported = [str(name) for name in getattr(module, "exports", None) or []]
    rendered, constants, elsewhere = [], [], []
    for name, member in module.members.items():
        if name.startswith("_"):
            continue
        if member.is_alias:  # imported: documented here only when exported and not on another page
            target = member.target_path
            if name not in exported or home_of(target) == target:
                continue
            if home_of(target) not in (None, module.path):
                elsewhere.append(target)
            else:
                rendered.append(name)
        elif member.is_attribute:
            constants.append(member)
        elif not member.is_module:
            rendered.append(name)
    return rendered, constants, elsewhere


def _comment(lines: list[str], lineno: int) -> str:
    """The ``#:`` comment lines just above line ``lineno`` (1-based), joined."""
    found = []
    index = lineno - 2
    while index >= 0 and lines[index].lstrip().startswith("#:"):
        found.insert(0, lines[index].lstrip()[2:].strip())
        index -= 1
    return " ".join(found)


def _cell(text: str) -> str:
    """Text for a table cell: pipes outside code spans escaped (a table keeps those inside)."""
    parts = text.split("`")
    return "`".join(p if i % 2 else p.replace("|", "\\|") for i, p in enumerate(parts))


def _value(member) -> str:
    value = " ".join(str(member.value).split()) if member.value is not None else ""
    return f"`{value}`" if value and len(value) <= 60 and "`" not in value else "(long; in the source)"


def module_page(path: str, section: str) -> str:
    module = _get(_package(), path)
    rendered, constants, elsewhere = members(module)
    lines = [f"# {path}", "", f"[API reference](../api.md) › {section}", "",
             f"::: {path}", "    options:", "      show_root_heading: false", "      show_root_toc_entry: false",
             "      heading_level: 2", f"      members: [{', '.join(rendered)}]", ""]  # fmt: skip
    if elsewhere:
        links = ", ".join(f"[`{t.rsplit('.', 1)[1]}`]({home_of(t)}.md)" for t in elsewhere)
        lines += [f"Also importable from here: {links}.", ""]
    if constants:
        source = Path(module.filepath).read_text().splitlines()
        lines += ["## Constants", "", "| name | value | what it is |", "|---|---|---|"]
        for c in constants:
            text = _comment(source, c.lineno) or summary(c) or "—"
            lines.append(f"| `{c.name}` | {_value(c)} | {_cell(text)} |")
        lines.append("")
    return "\n".join(lines)


def index_page() -> str:
    package = _package()
    lines = ["# API reference", "",
             ("One page per module, from its docstrings. Start with the names below; the analyses are also "
             "reachable as `hooked_video.<analysis>` (`from hooked_video import knockout, flow, lens, patching, "
             "pathways`), and `HookedVideoLLM`, `VideoPrompt`, `TokenMap` and `load_video` import from "
             "`hooked_video` itself. Every hook point is on the [hook reference](hooks.md)."), "",
             "## Names you need", "", "| name | what for |", "|---|---|"]  # fmt: skip
    for shown, targets, purpose in NAMES:
        if targets == ["hooked_video.zoo"]:
            name = f"[`{shown}`]({page_of('hooked_video.zoo')})"
        else:
            parts = shown.split(", ")
            name = ", ".join(f"[`{part}`][{target}]" for part, target in zip(parts, targets))
        lines.append(f"| {name} | {purpose} |")
    for section, modules in API_MODULES:
        lines += ["", f"## {section}", "", "| module | what it holds |", "|---|---|"]
        for path in modules:
            lines.append(f"| [{path}]({page_of(path)}) | {_cell(summary(_get(package, path)))} |")
    return "\n".join(lines) + "\n"


def pages() -> dict[str, str]:
    """Site path -> markdown of every API page."""
    built = {"api.md": index_page()}
    for section, modules in API_MODULES:
        for path in modules:
            built[page_of(path)] = module_page(path, section)
    return built
