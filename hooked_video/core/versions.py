"""The versions of torch, transformers and TransformerLens this package was tested with.

``TESTED`` is the window: the oldest releases the suite passed with (``constraints-lowest.txt``,
also the lower bounds in ``pyproject.toml``) and the newest (``constraints.txt``, the lock CI runs
first). CI also runs the suite against the newest releases of everything, so a break upstream is
seen the day it lands; a test keeps this table, the two constraint files and ``pyproject.toml`` equal.
Reading the installed versions imports none of these packages.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata

from packaging.version import Version

#: package -> (oldest tested, newest tested)
TESTED = {
    "torch": ("2.14.1", "2.14.1"),
    "transformers": ("5.24.0", "5.25.0"),
    "transformer-lens": ("4.2.0", "4.3.0"),
}


INSIDE = "inside the tested window"


def _key(version: str) -> Version:
    """A comparable release number ("5.10.2" > "5.9.0" > "5.9.0rc1"; local tags such as +cpu ignored)."""
    return Version(Version(version).public)


@dataclass(frozen=True)
class PackageVersion:
    """One package's installed version against the tested window."""

    name: str
    installed: str | None
    oldest: str
    newest: str

    @property
    def status(self) -> str:
        """"inside the tested window", "older than tested", "newer than tested" or "not installed"."""
        if self.installed is None:
            return "not installed"
        if _key(self.installed) < _key(self.oldest):
            return "older than tested"
        if _key(self.installed) > _key(self.newest):
            return "newer than tested"
        return INSIDE

    @property
    def window(self) -> str:
        return self.oldest if self.oldest == self.newest else f"{self.oldest} to {self.newest}"


def installed(name: str) -> str | None:
    """The installed version of a distribution, or None."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def check() -> list[PackageVersion]:
    """Each package of ``TESTED`` with its installed version."""
    return [PackageVersion(name, installed(name), *window) for name, window in TESTED.items()]


def report() -> str:
    """Lines for ``hooked-video info``: each version and whether it is inside the tested window;
    outside it, one line that says which versions were tested."""
    from hooked_video import __version__

    rows = check()
    lines = [f"hooked-video {__version__}"]
    for row in rows:
        lines.append(f"  {row.name:17s} {row.installed or '-':12s} {row.status} ({row.window})")
    outside = [row for row in rows if row.status != INSIDE]
    if outside:
        tested = ", ".join(f"{row.name} {row.window}" for row in rows)
        lines.append(f"outside the tested window ({', '.join(r.name for r in outside)}); tested: {tested}. "
                     "pip install -e \".[dev]\" -c constraints.txt gives the versions CI ran with.")  # fmt: skip
    else:
        lines.append("every version inside the tested window")
    return "\n".join(lines)
