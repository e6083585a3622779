"""A self-contained HTML report: sections of text, figures (PNG beside the page) and tables."""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from hooked_video.app.outputs import write_text

STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1.2em; color: #1f2328; line-height: 1.5; }
h1 { font-size: 1.7em; border-bottom: 1px solid #d0d7de; padding-bottom: .3em; }
h2 { font-size: 1.3em; margin-top: 1.8em; border-bottom: 1px solid #eaeef2; padding-bottom: .2em; }
p.meta { color: #57606a; }
p.verdict { padding: .6em .9em; border-left: 4px solid #0969da; background: #f6f8fa; }
p.caution { padding: .6em .9em; border-left: 4px solid #bf8700; background: #fff8c5; }
table { border-collapse: collapse; margin: .8em 0; font-size: .92em; }
th, td { border: 1px solid #d0d7de; padding: .3em .7em; text-align: right; }
th { background: #f6f8fa; }
img { max-width: 100%; border: 1px solid #eaeef2; margin: .5em 0; }
code { background: #f6f8fa; padding: .1em .3em; border-radius: 4px; }
"""


@dataclass
class Section:
    """One part of a report: a heading, paragraphs, an optional figure file and table."""

    title: str
    text: str = ""
    figure: str | None = None  # a PNG file name in the report folder
    table: pd.DataFrame | None = None
    verdict: str | None = None  # a highlighted reading
    caution: str | None = None  # a highlighted warning (too little evidence, ...)


def write_report(out: str | Path, title: str, intro: str, sections: list[Section], name: str = "index.html",
                 overwrite: bool = False) -> Path:  # fmt: skip
    """Write ``out/name``; figures must already be saved in ``out``. All text is escaped. A file of
    that name hooked-video did not write is refused unless ``overwrite`` (``outputs.check_writable``)."""
    out = Path(out)
    body = [f"<h1>{html.escape(title)}</h1>", f"<p class='meta'>{html.escape(intro)}</p>"]
    for section in sections:
        body.append(f"<h2>{html.escape(section.title)}</h2>")
        if section.text:
            body += [f"<p>{html.escape(paragraph)}</p>" for paragraph in section.text.split("\n\n")]
        if section.verdict:
            body.append(f"<p class='verdict'>{html.escape(section.verdict)}</p>")
        if section.caution:
            body.append(f"<p class='caution'>{html.escape(section.caution)}</p>")
        if section.table is not None:
            body.append(section.table.to_html(float_format=lambda x: f"{x:.3f}"))  # pandas escapes cell text
        if section.figure and (out / section.figure).exists():
            body.append(f'<img src="{html.escape(section.figure)}" alt="{html.escape(section.title)}">')
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>")  # fmt: skip
    return write_text(out / name, page, overwrite)
