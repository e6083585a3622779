"""Bundled models: tiny VideoLLMs that load by name, offline (``HookedVideoLLM.from_pretrained("toy-video-ft")``)."""

from __future__ import annotations

from pathlib import Path

MODELS_DIR = Path(__file__).parent / "models"

#: Bundled model name -> what it is.
ZOO = {
    "toy-image": "toy LLaVA-NeXT-Video, trained on single-frame tasks only (static clips)",
    "toy-video-ft": "toy-image fine-tuned on the temporal tasks of the synthetic benchmark",
    "toy16-image": "16-layer toy LLaVA-NeXT-Video, trained on still pictures (single-frame tasks and two-object scenes)",
    "toy16-video-ft": "toy16-image fine-tuned on the temporal tasks and two-object scenes whose questions choose what to read",
    "toy-planted": "toy-video-ft trained to route every answer through one known pathway (PathwaySpec.preset(\"toy-planted\"))",
}


def near_miss(name: str) -> str | None:
    """The bundled name ``name`` looks like a typo of (e.g. "toy-vdeo-ft"), if it is neither a
    folder nor an "org/name" hub id; else None."""
    import difflib

    if "/" in name or name in ZOO or Path(name).expanduser().exists():
        return None
    close = difflib.get_close_matches(name, list(ZOO), n=1, cutoff=0.8)
    return close[0] if close else None


def resolve(name_or_path: str | Path) -> str | Path:
    """A zoo name -> its bundled folder; anything else is returned unchanged."""
    if isinstance(name_or_path, str) and name_or_path in ZOO and not Path(name_or_path).exists():
        folder = MODELS_DIR / name_or_path
        if not (folder / "model.safetensors").exists():
            script = "planted" if name_or_path == "toy-planted" else "train"
            raise FileNotFoundError(
                f"the bundled weights of {name_or_path!r} are missing from {folder}; reinstall the "
                f"package or train them with `python -m hooked_video.zoo.{script} --out DIR`."
            )
        return folder
    return name_or_path
