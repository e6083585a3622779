"""Every tutorial runs top to bottom on the bundled toy models, offline, shows a figure, and is
committed without outputs; its last cell points to a real checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = sorted((ROOT / "tutorials").glob("*.ipynb"))
TITLES = ["01_getting_started", "02_attention_knockout", "03_logit_lens", "04_answer_probability_and_patching",
          "05_effective_pathways", "06_your_model_and_data", "07_attribution_patching", "08_find_the_pathway"]  # fmt: skip


def _figures(cell) -> int:
    return sum("image/png" in out.get("data", {}) for out in cell.get("outputs", []))


def test_the_eight_tutorials_are_there():
    assert [p.stem for p in TUTORIALS] == TITLES


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_committed_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert code, f"{path.name} has no code"
    assert not [c for c in code if c.outputs or c.execution_count], f"{path.name}: strip its outputs before committing"
    last = notebook.cells[-1]
    assert last.cell_type == "markdown" and "real checkpoint" in last.source, f"{path.name}: end with a real checkpoint"


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_runs_top_to_bottom(path, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})  # fmt: skip
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on any error
    assert sum(_figures(c) for c in notebook.cells if c.cell_type == "code") >= 1, f"{path.name} shows no figure"


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_has_a_quick_switch(path):
    setup = nbformat.read(path, as_version=4).cells[1].source
    assert 'QUICK = os.environ.get("HOOKED_VIDEO_QUICK") == "1"' in setup and "PER_TASK = " in setup, path.name


def test_quick_mode_runs(tmp_path, monkeypatch):
    """QUICK picks samples that exist with fewer questions per task (03 picks one by its number)."""
    monkeypatch.setenv("HOOKED_VIDEO_QUICK", "1")
    test_runs_top_to_bottom(ROOT / "tutorials" / "03_logit_lens.ipynb", tmp_path, monkeypatch)
