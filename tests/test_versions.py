"""The tested version window is one fact in four places (``versions.TESTED``, ``constraints.txt``,
``constraints-lowest.txt`` and ``pyproject.toml``'s lower bounds), and ``hooked-video info`` reports
the installed versions against it."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from hooked_video.core import versions
from hooked_video.app.cli import main

ROOT = Path(__file__).resolve().parents[1]


def pins(path: Path) -> dict[str, str]:
    """name -> version of each ``name==version`` line (names normalised as pip does)."""
    found = {}
    for line in path.read_text().splitlines():
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;#]+)", line.strip())
        if match:
            found[re.sub(r"[-_.]+", "-", match[1]).lower()] = match[2]
    return found


def test_the_window_is_the_lock_the_lowest_constraints_and_the_lower_bounds():
    newest, oldest = pins(ROOT / "constraints.txt"), pins(ROOT / "constraints-lowest.txt")
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    bounds = {re.split(r"[<>=!;\[ ]", d)[0].lower(): d for d in dependencies}
    for name, (low, high) in versions.TESTED.items():
        assert newest[name] == high, f"constraints.txt pins {name} {newest[name]}, versions.TESTED says {high}"
        assert oldest[name] == low, f"constraints-lowest.txt pins {name} {oldest[name]}, versions.TESTED says {low}"
        assert f"{name}>={low}" in bounds[name].replace(" ", ""), f"pyproject.toml: {bounds[name]} (oldest tested {low})"
    assert "hooked-video" not in newest, "the lock must not pin the package itself"


def test_release_numbers_compare_as_numbers():
    key = versions._key
    assert key("5.10.2") > key("5.9.0") > key("5.9.0rc1") and key("2.14.1+cpu") == key("2.14.1")


def test_info_without_a_model_reports_each_version_against_the_window(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for row in versions.check():
        assert f"{row.name}" in out and str(row.installed) in out and row.window in out


@pytest.mark.parametrize("installed, status", [("9.0.0", "newer than tested"), ("0.1", "older than tested")])
def test_info_says_when_a_version_is_outside_the_window(monkeypatch, capsys, installed, status):
    real = versions.installed
    monkeypatch.setattr(versions, "installed", lambda name: installed if name == "transformers" else real(name))
    assert main(["info"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.split()[:3] == ["transformers", installed, *status.split()[:1]] for line in lines)
    low, high = versions.TESTED["transformers"]
    verdict = lines[-1]
    assert verdict.startswith("outside the tested window (transformers)") and f"transformers {low} to {high}" in verdict
