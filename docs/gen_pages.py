"""Pages generated when the site is built (mkdocs-gen-files): the home page (the README), the API
reference, the hook reference of every architecture (from real tiny models), the tutorials and
the benchmarks."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import mkdocs_gen_files

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

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
                                 "hooked_video.analysis.lens.core", "hooked_video.analysis.lens.run",
                                 "hooked_video.analysis.lens.answer", "hooked_video.analysis.lens.keywords",
                                 "hooked_video.analysis.patching", "hooked_video.analysis.pathways",
                                 "hooked_video.analysis.accuracy"]),
    ("data/: datasets", ["hooked_video.data.mcqa", "hooked_video.data.benchmarks", "hooked_video.data.synthetic"]),
    ("runtime/: how forwards run", ["hooked_video.runtime.edges", "hooked_video.runtime.attention",
                                    "hooked_video.runtime.fastpath", "hooked_video.runtime.engine",
                                    "hooked_video.runtime.capture", "hooked_video.runtime.store",
                                    "hooked_video.runtime.store_format", "hooked_video.runtime.identity",
                                    "hooked_video.runtime.results",
                                    "hooked_video.runtime.distributed"]),
    ("core/: checks, video, versions", ["hooked_video.core.checks", "hooked_video.core.video", "hooked_video.core.versions"]),
    ("viz/ and app/: figures and reports", ["hooked_video.viz.plots", "hooked_video.viz.attention",
                                            "hooked_video.viz.blueprint", "hooked_video.viz.html",
                                            "hooked_video.app.report", "hooked_video.app.outputs", "hooked_video.app.reproduce",
                                            "hooked_video.app.demo"]),
    ("zoo/: toy and tiny models", ["hooked_video.zoo", "hooked_video.zoo.tiny", "hooked_video.zoo.tiny_parts",
                                   "hooked_video.zoo.tiny_families", "hooked_video.zoo.tiny_paper", "hooked_video.zoo.train"]),
]


def api_page() -> str:
    lines = ["# API reference", "", "Every public class and function, from its docstring.", ""]
    for section, modules in API_MODULES:
        lines += [f"## {section}", ""]
        for module in modules:
            lines += [f"::: {module}", "    options:", "      heading_level: 3", ""]
    return "\n".join(lines)


def hook_page() -> str:
    """Every hook point of each architecture with its activation's shape on a 4-frame prompt."""
    import numpy as np
    import torch

    from hooked_video import HookedVideoLLM
    from hooked_video.zoo.tiny import BUILDERS, build_tiny

    lines = ["# Hook reference", "",
             "Every hook point of each supported architecture, with the shape of its activation on one prompt "
             "(4 frames of 32 x 32 pixels, two options) of a tiny random-weight model of that architecture, "
             "generated when this site is built. Blocks repeat: `blocks.0` stands for every `blocks.{l}`, "
             "vision blocks likewise. Shapes scale with the real model's sizes (d_model, heads, video tokens).", ""]  # fmt: skip
    frames = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    skip = {"llava_next_image", "videollama3_official"}  # the image baseline; the same class as video_llama_3
    for arch in sorted(set(BUILDERS) - skip):
        folder = build_tiny(arch, Path(tempfile.mkdtemp()) / arch)
        model = HookedVideoLLM.from_pretrained(folder)
        prompt = model.prepare(frames, "which way does the ball move ?", ["left", "right"], answer=1, num_frames=None)
        with torch.no_grad():
            _, cache = model.run_with_cache(prompt)
        lines += [f"## {type(model.hf_model).__name__} (`{arch}`)", "",
                  f"Prompt: {prompt.n_positions} positions, {prompt.token_map!r}.", "",
                  "| hook point | shape |", "|---|---|"]  # fmt: skip
        for name in sorted(model.hook_dict):
            if _repeated(name):
                continue
            shape = tuple(cache[name].shape) if name in cache else "(not reached by this prompt)"
            lines.append(f"| `{name}` | {shape} |")
        lines.append("")
    return "\n".join(lines)


def home_page() -> str:
    """The README, its links made relative to the site."""
    readme = (ROOT / "README.md").read_text()
    for old, new in [("](docs/", "]("), ("](tutorials/)", "](tutorials/01_getting_started.ipynb)"),
                     ("](benchmarks/results.md)", "](benchmarks.md)")]:  # fmt: skip
        readme = readme.replace(old, new)
    return readme


def _repeated(name: str) -> bool:
    """Hooks of blocks other than the first (of the language model or a vision tower)."""
    parts = name.split(".")
    return any(p.isdigit() and p != "0" for p in parts)


with mkdocs_gen_files.open("index.md", "w") as f:
    f.write(home_page())
with mkdocs_gen_files.open("api.md", "w") as f:
    f.write(api_page())
with mkdocs_gen_files.open("hooks.md", "w") as f:
    f.write(hook_page())
for notebook in sorted((ROOT / "tutorials").glob("*.ipynb")):
    with mkdocs_gen_files.open(f"tutorials/{notebook.name}", "wb") as f:
        f.write(notebook.read_bytes())
results = (ROOT / "benchmarks" / "results.md").read_text()
with mkdocs_gen_files.open("benchmarks.md", "w") as f:
    f.write(results.replace("](results/", "](https://github.com/hooked-video/hooked_video/tree/main/benchmarks/results/"))
