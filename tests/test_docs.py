"""Every code block of the README and of the documentation pages runs as written: Python blocks in
order, in one namespace per page; ``hooked-video`` lines of bash blocks through the CLI. Blocks
that need a GPU, a hub checkpoint or an install are marked ``<!-- not run: why -->`` on the line
before them, and say so."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"(?P<marker><!-- not run: [^>]+-->\n)?```(?P<lang>\w+)\n(?P<code>.*?)\n```", re.S)


def blocks(page: Path) -> list[tuple[str, str, bool]]:
    """(language, code, runs) of each fenced block."""
    return [(m["lang"], m["code"], m["marker"] is None) for m in BLOCK.finditer(page.read_text())]


def shell_commands(code: str) -> list[list[str]]:
    """The ``hooked-video`` command lines of a bash block (comments and continuations handled)."""
    code = code.replace("\\\n", " ")
    commands = []
    for line in code.splitlines():
        line = line.split("  #")[0].strip()
        if line.startswith("hooked-video "):
            commands.append(shlex.split(line)[1:])
    return commands


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_block_runs(page, tmp_path, monkeypatch):
    from hooked_video.app.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("MPLBACKEND", "Agg")
    namespace: dict = {"__name__": "__docs__"}
    ran = 0
    for language, code, runs in blocks(page):
        if not runs:
            continue
        if language == "python":
            exec(compile(code, f"{page.name} block", "exec"), namespace)
            ran += 1
        elif language == "bash":
            for argv in shell_commands(code):
                assert main(argv) == 0, f"{page.name}: hooked-video {' '.join(argv)}"
                ran += 1
    marked = [code for _, code, runs in blocks(page) if not runs]
    assert ran or marked or not blocks(page), f"{page.name}: no block ran"


def test_skipped_blocks_say_why():
    for page in PAGES:
        for reason in re.findall(r"<!-- not run: ([^>]*)-->", page.read_text()):
            assert len(reason.strip()) > 8, f"{page.name}: say why a block is not run"


def test_api_reference_lists_every_module():
    """Each module with public names has a page of the API reference (packages re-export their
    modules' names; the CLI and its argument checks are documented by --help and the pages;
    adapters are reached through the model)."""
    import pkgutil

    import hooked_video

    listed = set(api_reference().MODULES)
    packages = {m.name for m in pkgutil.walk_packages(hooked_video.__path__, "hooked_video.") if m.ispkg}
    exempt = {"hooked_video.__main__", "hooked_video.app.cli", "hooked_video.app.commands", "hooked_video.app.doctor",
              "hooked_video.app.precheck"}  # fmt: skip
    modules = {m.name for m in pkgutil.walk_packages(hooked_video.__path__, "hooked_video.")}
    missing = sorted(m for m in modules - listed - packages - exempt if not m.startswith("hooked_video.model.adapters."))
    assert not missing, f"add these modules to API_MODULES in docs/api_reference.py: {missing}"
    assert not listed - modules - {"hooked_video"}, f"api_reference.py names modules that do not exist: {listed - modules}"


def api_reference():
    import importlib
    import sys

    sys.path.insert(0, str(ROOT / "docs"))
    try:
        return importlib.import_module("api_reference")
    finally:
        sys.path.remove(str(ROOT / "docs"))


def test_api_index_links_only_to_pages_that_exist():
    """The index's module links are generated pages; each "names you need" link is an object
    documented on its module's page (mkdocstrings' autorefs resolve it when the site is built)."""
    ref = api_reference()
    pages = ref.pages()
    index = pages["api.md"]
    links = re.findall(r"\]\((api/[^)#]+)\)", index)
    assert links and all(link in pages for link in links), [link for link in links if link not in pages]
    assert {ref.page_of(m) for m in ref.MODULES} <= set(links), "a module page the index does not link"
    package = ref._package()
    for shown, targets, _ in ref.NAMES:
        assert len(shown.split(", ")) == len(targets), shown
        for target in targets:
            module = ref.home_of(target)
            assert module is not None, f"{target}: no page documents it"
            obj = ref._get(package, target)  # raises KeyError when the object does not exist
            top = target[len(module) + 1 :].split(".")[0] if target != module else None
            assert top is None or top in ref.members(ref._get(package, module))[0], f"{target} is not rendered on its page"
            assert obj.docstring, f"{target} has no docstring to show"
    for path, text in pages.items():
        for link in re.findall(r"\]\((hooked_video[^)]*\.md)\)", text):  # module pages link each other
            assert f"api/{link}" in pages, f"{path} links {link}"
