"""A self-contained HTML page of one search: the query (its box drawn) and its top-k results, thumbnails inline.

Every image is a base64 JPEG inside the page, so the file can be mailed or archived on its own.
"""

from __future__ import annotations

import html
from pathlib import Path

__all__ = ["render_search_page", "write_search_page"]

_PAGE_CSS = """
.result .caption, .query .caption { max-width: 200px; }
.score { font-variant-numeric: tabular-nums; }
"""


def render_search_page(query, scores, paths, *, box=None, title=None, notes=(), thumbnail_size=192) -> str:
    """The page as one HTML string.

    Parameters
    ----------
    query : path-like
        The query image.
    scores : sequence of float
        Scores of the results, best first.
    paths : sequence of str
        The results' image paths, in the order of ``scores``.
    box : tuple of 4 float or None
        ``(x1, y1, x2, y2)`` in original query pixels, drawn on the query thumbnail.
    title : str or None
        Page title (default: names the query).
    notes : sequence of str
        Lines saying how the results were produced (index, encoder, metric).
    thumbnail_size : int, default=192
        Longest side of the thumbnails, pixels.

    Returns
    -------
    html : str
    """
    from selconv.report import _thumbnail_html, page_head

    if len(scores) != len(paths):
        raise ValueError(f"scores ({len(scores)}) and paths ({len(paths)}) must have the same length.")
    name = Path(query).name
    title = title or f"selconv search: {name}"
    boxed = "" if box is None else " (box " + " ".join(f"{v:g}" for v in box) + ")"
    cells = [
        "<div class='query'>"
        + _thumbnail_html(query, box, thumbnail_size, colour="#3050c0")
        + f"<div class='caption' title='{html.escape(str(query))}'>query: {html.escape(name)}{html.escape(boxed)}"
        "</div></div>"
    ]
    for rank, (score, path) in enumerate(zip(scores, paths), start=1):
        cells.append(
            "<div class='result'>"
            + _thumbnail_html(path, None, thumbnail_size, colour="#999")
            + f"<div class='caption' title='{html.escape(str(path))}'>#{rank} "
            f"<span class='score'>{float(score):.4f}</span><br>{html.escape(Path(str(path)).name)}</div></div>"
        )
    parts = page_head(title, notes, extra_css=_PAGE_CSS)
    parts.append("<div class='row'>" + "".join(cells) + "</div>")
    if not paths:
        parts.append("<p>No results: the index is empty.</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_search_page(path, query, scores, paths, **kwargs) -> Path:
    """Write :func:`render_search_page` to ``path`` (parent folders created); return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_search_page(query, scores, paths, **kwargs), encoding="utf-8")
    return path
