"""Results as people read them: atomic writes of result files and pictures, and the one
renderer of reports (a list of blocks -> Markdown beside PNG files, and a self-contained HTML
page) that ``eossl evaluate``, ``eossl probe``, the demo and ``eossl benchmark`` share. What the
blocks say is built from evaluation records in eossl/evaluate/summary.py.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

# Every write goes through eossl.io (temporary file + rename, one-line disk errors); these names
# stay importable from here for the modules that write reports.
from .io import atomic_path, atomic_write_text  # noqa: F401


def save_figure(fig, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Save a matplotlib figure atomically (format from the suffix) and close it.

    One place for every picture eossl draws, so they share the dpi (reports are committed,
    so pictures stay small) and none is ever left half-written.
    """
    import matplotlib.pyplot as plt

    path = Path(path)
    try:
        with atomic_path(path, suffix=path.suffix) as tmp:
            fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=dpi)
    finally:
        plt.close(fig)
    return path


# ------------------------------------------------------------------------------ rendering
# One list of blocks, rendered twice: Markdown beside PNG files, and one self-contained HTML
# page (images inlined). Blocks: ("h1".."h4", text), ("p", text), ("list", items),
# ("table", rows), ("details", summary, rows), ("img", path, caption), and ("toc",): the
# table of contents (every h2 and h3 after it, linked).

TOC_LEVELS = ("h2", "h3")


def _anchors(blocks: Sequence[tuple]) -> dict[int, str]:
    """{block index: anchor} of every heading, as GitHub names them (lower case, punctuation
    dropped, spaces to hyphens, -1, -2, ... for repeats), so the Markdown's links work on
    GitHub and the HTML page uses the same ids."""
    import re

    seen: dict[str, int] = {}
    out = {}
    for i, b in enumerate(blocks):
        if b[0] in ("h1", "h2", "h3", "h4"):
            text = re.sub(r"[*`]", "", b[1]).strip().lower()
            slug = re.sub(r"[^\w\- ]", "", text).replace(" ", "-")
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            out[i] = slug if n == 0 else f"{slug}-{n}"
    return out


def _toc(blocks: Sequence[tuple], start: int, anchors: dict[int, str]) -> list[tuple]:
    """(depth, text, anchor) of the headings after block ``start``."""
    return [(TOC_LEVELS.index(b[0]), b[1], anchors[i]) for i, b in enumerate(blocks)
            if i > start and b[0] in TOC_LEVELS]


def to_markdown(blocks: Sequence[tuple], root: Path) -> str:
    out = []
    anchors = _anchors(blocks)
    for i, b in enumerate(blocks):
        kind = b[0]
        if kind == "toc":
            out += ["**Contents**", ""] + [f"{'  ' * d}- [{t}](#{a})"
                                           for d, t, a in _toc(blocks, i, anchors)] + [""]
        elif kind in ("h1", "h2", "h3", "h4"):
            out += ["#" * int(kind[1]) + " " + b[1], ""]
        elif kind == "p":
            out += [b[1], ""]
        elif kind == "list":
            out += [f"- {x}" for x in b[1]] + [""]
        elif kind == "table":
            out += _md_table(b[1]) + [""]
        elif kind == "details":
            out += [f"<details><summary>{b[1]}</summary>", ""] + _md_table(b[2]) + [
                "", "</details>", ""]
        elif kind == "img":
            out += [f"![{b[2]}]({Path(b[1]).relative_to(root).as_posix()})", ""]
    return "\n".join(out)


def _md_table(rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    return lines + ["| " + " | ".join(r) + " |" for r in rows[1:]]


_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222}table{border-collapse:collapse;margin:.5em 0 1em;font-size:.85em}
td,th{border:1px solid #ccc;padding:.25em .5em;text-align:right}td:first-child,th:first-child
{text-align:left}th{background:#f3f3f3}img{max-width:100%;border:1px solid #eee}
code{background:#f5f5f5;padding:0 .2em}details{margin-bottom:1em}
nav#contents{background:#fafafa;border:1px solid #ddd;padding:.5em 1em;font-size:.9em}
nav#contents ul{margin:.2em 0;padding-left:1.2em}"""

# Lets a headless browser (the report test) tell that every image decoded.
_CHECK = """<script>window.addEventListener('load',function(){var im=document.images,ok=0;
for(var i=0;i<im.length;i++){if(im[i].complete&&im[i].naturalWidth>0)ok++;}
document.body.setAttribute('data-images',im.length);document.body.setAttribute('data-images-ok',ok);
});</script>"""


def _inline(text: str) -> str:
    """Escape, then the two bits of Markdown the blocks use: **bold** and `code`."""
    import html
    import re

    t = html.escape(text)
    t = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", t)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", t)


def _html_table(rows: list[list[str]]) -> str:
    head = "".join(f"<th>{_inline(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>"
                   for r in rows[1:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def to_html(blocks: Sequence[tuple], title: str = "eossl report") -> str:
    import base64
    import html

    parts = []
    anchors = _anchors(blocks)
    for i, b in enumerate(blocks):
        kind = b[0]
        if kind == "toc":
            items, depth = [], 0
            for d, text, anchor in _toc(blocks, i, anchors):
                items.append("<ul>" * max(d - depth, 0) + "</ul>" * max(depth - d, 0)
                             + f'<li><a href="#{anchor}">{_inline(text)}</a></li>')
                depth = d
            parts.append('<nav id="contents"><b>Contents</b><ul>' + "".join(items)
                         + "</ul>" * depth + "</ul></nav>")
        elif kind in ("h1", "h2", "h3", "h4"):
            parts.append(f'<{kind} id="{anchors[i]}">{_inline(b[1])}</{kind}>')
        elif kind == "p":
            parts.append(f"<p>{_inline(b[1])}</p>")
        elif kind == "list":
            parts.append("<ul>" + "".join(f"<li>{_inline(x)}</li>" for x in b[1]) + "</ul>")
        elif kind == "table":
            parts.append(_html_table(b[1]))
        elif kind == "details":
            parts.append(f"<details><summary>{_inline(b[1])}</summary>{_html_table(b[2])}"
                         "</details>")
        elif kind == "img":
            data = base64.b64encode(Path(b[1]).read_bytes()).decode()
            parts.append(f'<figure><img alt="{html.escape(b[2])}" src="data:image/png;base64,'
                         f'{data}"><figcaption>{_inline(b[2])}</figcaption></figure>')
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title><style>{_CSS}</style>{_CHECK}</head><body>" + "\n".join(parts)
            + "</body></html>")


def write_blocks(folder: str | os.PathLike, blocks: Sequence[tuple], title: str,
                 stem: str = "report") -> Path:
    """``stem``.md (pictures stay files beside it) and ``stem``.html (self-contained) in
    ``folder``, both from the same blocks; returns the Markdown path."""
    folder = Path(folder)
    blocks = [b for b in blocks if b[0] != "img" or Path(b[1]).exists()]
    atomic_write_text(folder / f"{stem}.md", to_markdown(blocks, folder))
    atomic_write_text(folder / f"{stem}.html", to_html(blocks, title))
    return folder / f"{stem}.md"


def blocks_to_text(blocks: Sequence[tuple]) -> str:
    """The tables and findings of some blocks as terminal text (Markdown without pictures and
    per-unit details)."""
    keep = [b for b in blocks if b[0] not in ("img", "details", "toc")]
    return to_markdown(keep, Path("."))
