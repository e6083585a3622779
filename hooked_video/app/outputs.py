"""Files the commands write into a folder that may hold a user's own files: a file is written only
where nothing is, or where hooked-video wrote it before and nobody changed it since; anything else
is refused with the file's name, before the slow work where the name is known in advance.

Each folder keeps a small manifest (``.hooked-video-files.json``: file name -> SHA-256 of what was
written), so a rerun replaces its own report and summary while a user's ``index.html``, or a file of
ours the user edited, is never replaced without ``overwrite=True`` (CLI: ``--overwrite``). Summaries
and report pages of 0.1 and 0.2, which kept no manifest, count as ours (see ``_earlier_report``).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

MANIFEST = ".hooked-video-files.json"
#: What a report writes at the top of its folder (figures are named as they are written).
REPORT_FILES = ("index.html", "summary.json")
#: What the demo writes: its report and the one of its ``results/`` folder.
DEMO_FILES = REPORT_FILES + ("results/index.html", "results/summary.json")


class OutputExistsError(FileExistsError):
    """A file to be written exists and was not written by hooked-video (or was changed since)."""


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _manifest(folder: Path) -> dict[str, str]:
    try:
        recorded = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    return recorded if isinstance(recorded, dict) else {}


def _earlier_results(folder: Path) -> bool:
    """``folder`` holds a results database of hooked-video (0.1 and 0.2 wrote no manifest)."""
    return any(next(folder.glob(pattern + "results.sqlite"), None) for pattern in ("", "*/", "*/*/"))


def _earlier_report(path: Path) -> bool:
    """A summary or report page that hooked-video 0.1 or 0.2 wrote (before manifests): a JSON
    object marked ``"written_by": "hooked-video"`` (0.2), or the ``summary.json`` / ``index.html``
    of a folder that holds a hooked-video results database (0.1 and 0.2)."""
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json" and json.loads(text).get("written_by") == "hooked-video":
            return True
    except (OSError, ValueError, AttributeError):
        return False
    if path.name == "summary.json":
        return text.lstrip().startswith("{") and _earlier_results(path.parent)
    return path.name == "index.html" and text.lstrip().lower().startswith("<!doctype html>") and _earlier_results(path.parent)


def check_writable(path: str | Path, overwrite: bool = False) -> Path:
    """``path``, if hooked-video may write it; else ``OutputExistsError`` naming the file and the fix."""
    path = Path(path)
    if path.is_dir():
        raise OutputExistsError(f"{path} is a folder, where hooked-video writes a file; move it, or use another --out")
    if overwrite or not path.exists():
        return path
    recorded = _manifest(path.parent).get(path.name)
    if recorded == _digest(path) or (recorded is None and _earlier_report(path)):
        return path
    if recorded:
        why = "was changed after hooked-video wrote it"
    elif _earlier_results(path.parent):
        why = "was written by you or by a hooked-video before 0.3 (which kept no record of its files)"
    else:
        why = "was not written by hooked-video"
    raise OutputExistsError(f"{path} exists and {why}; move it, use another --out, or pass --overwrite to replace it")


def check_folder(out: str | Path, names=REPORT_FILES, overwrite: bool = False) -> Path:
    """``out``, if it may hold the files ``names`` (see ``check_writable``) and is not a file."""
    out = Path(out)
    if out.is_file():
        raise OutputExistsError(f"the results folder {out} is a file; give a folder for --out (it is created if missing)")
    for name in names:
        check_writable(out / name, overwrite)
    return out


def record(path: str | Path) -> None:
    """Note in the folder's manifest that hooked-video has just written ``path``."""
    path = Path(path)
    manifest = _manifest(path.parent)
    manifest[path.name] = _digest(path)
    temporary = path.parent / f"{MANIFEST}.{os.getpid()}.tmp"
    temporary.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    os.replace(temporary, path.parent / MANIFEST)


def write_text(path: str | Path, text: str, overwrite: bool = False) -> Path:
    """Write ``text`` to ``path`` (checked by ``check_writable``) and record it."""
    path = check_writable(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    record(path)
    return path


def save_figure(figure, path: str | Path, overwrite: bool = False, **savefig_kwargs) -> Path:
    """``figure.savefig(path)`` (checked by ``check_writable``) and record it."""
    path = check_writable(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, **savefig_kwargs)
    record(path)
    return path
