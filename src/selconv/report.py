"""Self-contained HTML report of a retrieval run: mAP table, precision-recall plot and top-k results per query.

Everything is embedded (thumbnails as small base64 JPEGs, the plot as a base64 PNG), so the single
``.html`` file can be mailed or archived. Results are framed by their ground-truth status: positives
green, junk yellow, negatives red (the Oxford protocol's three classes).
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from selconv.metrics import average_precisions

__all__ = ["interpolated_precision_recall", "page_head", "plot_precision_recall", "render_report", "write_report"]

#: Recall levels at which precision is interpolated (and averaged over queries).
RECALL_LEVELS = np.linspace(0.0, 1.0, 101)

_STATUS_COLOURS = {"positive": "#2e9d3a", "junk": "#e0b400", "negative": "#d0312d"}


def interpolated_precision_recall(ranking, ground_truth, recall_levels=RECALL_LEVELS) -> np.ndarray:
    """Mean interpolated precision over queries at each recall level, junk removed from the ranking.

    Parameters
    ----------
    ranking : array-like of int, shape (n_queries, n_database)
        Database indices of each query, best first (a full ranking).
    ground_truth : list of dict
        One ``{"positives": ..., "junk": ...}`` per query (database indices).
    recall_levels : array-like of float in [0, 1]
        Where to interpolate.

    Returns
    -------
    precision : ndarray of shape (n_levels,)
        Averaged over the queries that have at least one positive (all zeros if none has).
        Interpolated precision at recall r is the best precision reached at any recall >= r.
    """
    ranking = _check_ranking(ranking, n_queries=len(ground_truth))
    levels = np.asarray(recall_levels, dtype=np.float64)
    curves = []
    for order, truth in zip(ranking, ground_truth):
        positives = np.asarray(truth["positives"], dtype=np.intp)
        if positives.size == 0:
            continue
        junk = np.asarray(truth.get("junk", ()), dtype=np.intp)
        order = order[~np.isin(order, junk)]
        hits = np.isin(order, positives)
        found = np.cumsum(hits)
        precision = found / np.arange(1, order.size + 1)
        recall = found / positives.size
        # Best precision at recall >= r: a running maximum taken from the end of the ranking.
        best_after = np.maximum.accumulate(precision[::-1])[::-1]
        first_rank = np.searchsorted(recall, levels, side="left")
        curve = np.zeros_like(levels)
        reached = first_rank < order.size
        curve[reached] = best_after[first_rank[reached]]
        curves.append(curve)
    if not curves:
        return np.zeros_like(levels)
    return np.mean(curves, axis=0)


def plot_precision_recall(curves: Mapping[str, np.ndarray], recall_levels=RECALL_LEVELS, *, title=None) -> bytes:
    """PNG bytes of the mean interpolated precision-recall curves (one line per named run)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    # A Figure not registered with pyplot: no global state, no GUI backend, safe in threads.
    figure = Figure(figsize=(5.5, 4.0), dpi=100)
    axes = figure.add_subplot()
    for name, precision in curves.items():
        axes.plot(recall_levels, precision, label=name)
    axes.set_xlabel("recall")
    axes.set_ylabel("interpolated precision (mean over queries)")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.02)
    axes.grid(alpha=0.3)
    if title:
        axes.set_title(title)
    if curves:
        # Outside the axes: run names can be long, and curves fill the whole box.
        axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    return buffer.getvalue()


def render_report(
    *,
    queries: Sequence,
    database: Sequence,
    ground_truth: Sequence[Mapping],
    rankings: Mapping[str, np.ndarray],
    table: Sequence[Mapping],
    title: str = "selconv retrieval report",
    notes: Sequence[str] = (),
    show: str | None = None,
    top_k: int = 8,
    max_queries: int | None = 20,
    thumbnail_size: int = 128,
) -> str:
    """The report as one HTML string.

    Parameters
    ----------
    queries : sequence of str or (str, box)
        Query images; a box ``(x1, y1, x2, y2)`` in original-image pixels is drawn on its thumbnail.
    database : sequence of str
        Database image paths, indexed by the rankings and the ground truth.
    ground_truth : list of dict
        One ``{"positives": ..., "junk": ...}`` per query (database indices).
    rankings : mapping of str to array of int, shape (n_queries, n_database)
        Full ranking of the database for each query, per run (e.g. "MAX-mask, 512-D").
        Every run gets a precision-recall curve.
    table : sequence of mapping
        Rows of the results table (e.g. ``{"descriptor": ..., "dims": ..., "mAP": ...}``); the keys
        of the first row are the columns. Floats are shown with 4 digits.
    title : str
        Page title.
    notes : sequence of str
        Lines saying what produced the numbers (backbone, layer, image size, training set, ...).
    show : str or None
        The run whose top-k results are shown per query; default: the first run.
    top_k : int
        Results shown per query.
    max_queries : int or None
        Show at most this many queries (None: all); the PR curves and table always use all.
    thumbnail_size : int
        Longest side of the thumbnails, pixels.

    Returns
    -------
    html : str
    """
    checked, show = _check_inputs(queries, database, ground_truth, rankings, show)
    png = plot_precision_recall({name: interpolated_precision_recall(r, ground_truth) for name, r in checked.items()})
    parts = page_head(title, notes)
    parts.append(_table_html(table))
    parts.append(
        "<h2>Precision-recall</h2>"
        f"<img class='plot' alt='precision-recall curves' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"
    )
    parts += _results_html(queries, database, ground_truth, checked[show], show, top_k, max_queries, thumbnail_size)
    parts.append("</body></html>")
    return "\n".join(parts)


def page_head(title: str, notes=(), *, extra_css: str = "") -> list[str]:
    """The opening of a self-contained selconv page: doctype, title, style, heading and the notes list."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{_CSS}{extra_css}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if notes:
        parts.append("<ul class='notes'>" + "".join(f"<li>{html.escape(str(n))}</li>" for n in notes) + "</ul>")
    return parts


def _check_inputs(queries, database, ground_truth, rankings, show):
    """The rankings checked against the queries and the database, and the run whose results are shown."""
    if not rankings:
        raise ValueError("rankings must name at least one run.")
    checked = {
        name: _check_ranking(r, n_queries=len(queries), n_database=len(database)) for name, r in rankings.items()
    }
    if len(ground_truth) != len(queries):
        raise ValueError(f"ground_truth has {len(ground_truth)} entries for {len(queries)} queries.")
    show = next(iter(checked)) if show is None else show
    if show not in checked:
        raise ValueError(f"show={show!r} is not one of the runs: {sorted(checked)}.")
    return checked, show


def _results_html(queries, database, ground_truth, ranking, show, top_k, max_queries, size) -> list[str]:
    """The top-k results of run `show` for the first `max_queries` queries, with the colour legend."""
    parts = [
        f"<h2>Top {top_k} results per query ({html.escape(show)})</h2>"
        "<p class='legend'><span style='border-color:{positive}'>positive</span>"
        "<span style='border-color:{junk}'>junk</span><span style='border-color:{negative}'>negative</span></p>".format(
            **_STATUS_COLOURS
        )
    ]
    n_shown = len(queries) if max_queries is None else min(max_queries, len(queries))
    aps = average_precisions(ranking, ground_truth)
    for q in range(n_shown):
        parts.append(_query_row(q, queries[q], database, ground_truth[q], ranking[q], aps[q], top_k, size))
    if n_shown < len(queries):
        parts.append(f"<p>({len(queries) - n_shown} more queries not shown.)</p>")
    return parts


def write_report(path, **kwargs) -> Path:
    """Write :func:`render_report` ``(**kwargs)`` to ``path`` (parent folders created); return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_report(**kwargs), encoding="utf-8")
    return path


def _check_ranking(ranking, *, n_queries: int, n_database: int | None = None) -> np.ndarray:
    ranking = np.asarray(ranking)
    if ranking.ndim != 2 or ranking.shape[0] != n_queries or not np.issubdtype(ranking.dtype, np.integer):
        raise ValueError(
            f"a ranking must be an integer array of shape (n_queries={n_queries}, n_database); "
            f"got {ranking.dtype} array of shape {ranking.shape}."
        )
    if n_database is not None and ranking.shape[1] != n_database:
        raise ValueError(f"a ranking must rank all {n_database} database images; got {ranking.shape[1]} columns.")
    return ranking


def _status(index: int, truth: Mapping) -> str:
    if index in set(np.asarray(truth["positives"]).tolist()):
        return "positive"
    if index in set(np.asarray(truth.get("junk", ())).tolist()):
        return "junk"
    return "negative"


def _query_row(q, query, database, truth, order, ap, top_k, size) -> str:
    path, box = query if isinstance(query, (tuple, list)) else (query, None)
    n_positives = len(truth["positives"])
    score = "no positive: not in the mAP" if np.isnan(ap) else f"AP {ap:.3f}"
    cells = [
        "<div class='query'>"
        + _thumbnail_html(path, box, size, colour="#3050c0")
        + f"<div class='caption'>query {q}: {html.escape(Path(str(path)).name)}<br>"
        f"{n_positives} positives, {score}</div></div>"
    ]
    for rank, index in enumerate(order[:top_k]):
        status = _status(int(index), truth)
        cells.append(
            "<div class='result'>"
            + _thumbnail_html(database[index], None, size, colour=_STATUS_COLOURS[status])
            + f"<div class='caption'>#{rank + 1} {html.escape(Path(str(database[index])).name)}<br>{status}</div></div>"
        )
    return "<div class='row'>" + "".join(cells) + "</div>"


def _thumbnail_html(path, box, size, *, colour) -> str:
    data = _thumbnail_jpeg(path, box, size)
    style = f"border-color:{colour}"
    if data is None:
        return f"<div class='missing' style='{style};width:{size}px;height:{size}px'>image unavailable</div>"
    return f"<img style='{style}' alt='' src='data:image/jpeg;base64,{base64.b64encode(data).decode()}'>"


def _thumbnail_jpeg(path, box, size) -> bytes | None:
    from PIL import Image, ImageDraw, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image).convert("RGB")
    except (OSError, UnidentifiedImageError):
        return None
    scale = size / max(image.size)
    image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
    if box is not None:
        x1, y1, x2, y2 = (float(v) * scale for v in box)
        ImageDraw.Draw(image).rectangle([x1, y1, x2, y2], outline=(255, 230, 0), width=2)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=75)
    return buffer.getvalue()


def _table_html(rows: Sequence[Mapping]) -> str:
    if not rows:
        return ""
    columns = list(rows[0])
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_format_cell(row.get(c, '')))}</td>" for c in columns) + "</tr>"
        for row in rows
    )
    return f"<h2>Results</h2><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _format_cell(value) -> str:
    if isinstance(value, (float, np.floating)):
        return f"{value:.4f}"
    return str(value)


_CSS = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1em; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.6em; text-align: left; }
th { background: #eee; }
.notes li { margin: 0.15em 0; }
.plot { border: 1px solid #ddd; }
.row { display: flex; flex-wrap: wrap; gap: 6px; align-items: flex-start; margin: 0.6em 0;
       padding-bottom: 0.6em; border-bottom: 1px solid #eee; }
.row img, .missing { border: 4px solid; display: block; }
.missing { background: #ccc; font-size: 0.75em; text-align: center; }
.query { margin-right: 1em; }
.caption { font-size: 0.7em; max-width: 140px; overflow-wrap: anywhere; }
.legend span { border: 4px solid; padding: 0 0.4em; margin-right: 0.6em; }
"""
