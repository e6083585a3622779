"""Pages generated when the site is built (mkdocs-gen-files): the home page (the README), the API
reference (an index and one page per module: ``api_reference.py``), the hook reference of every
architecture, measured on real tiny models (``hook_reference.py``), the tutorials and the
benchmarks."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import mkdocs_gen_files

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the page builders next to this script

import api_reference  # noqa: E402
import hook_reference  # noqa: E402


def home_page() -> str:
    """The README, its links made relative to the site."""
    readme = (ROOT / "README.md").read_text()
    for old, new in [("](docs/", "]("), ("](tutorials/)", "](tutorials/01_getting_started.ipynb)"),
                     ("](benchmarks/results.md)", "](benchmarks.md)")]:  # fmt: skip
        readme = readme.replace(old, new)
    return readme


with mkdocs_gen_files.open("index.md", "w") as f:
    f.write(home_page())
for path, text in api_reference.pages().items():
    with mkdocs_gen_files.open(path, "w") as f:
        f.write(text)
with tempfile.TemporaryDirectory() as folder, mkdocs_gen_files.open("hooks.md", "w") as f:
    f.write(hook_reference.build_page(Path(folder)))
for notebook in sorted((ROOT / "tutorials").glob("*.ipynb")):
    with mkdocs_gen_files.open(f"tutorials/{notebook.name}", "wb") as f:
        f.write(notebook.read_bytes())
results = (ROOT / "benchmarks" / "results.md").read_text()
with mkdocs_gen_files.open("benchmarks.md", "w") as f:
    f.write(results.replace("](results/", "](https://github.com/hooked-video/hooked_video/tree/main/benchmarks/results/"))
