"""Presentation of metric results: Markdown/plain-text tables and PNG plots (scatter with fitted logistic, curves).

Used by ``qponder metrics``, ``qponder eval``, ``qponder demo`` and the benchmarks, so every table in the project
looks the same and states its conventions: NaN is shown as "—", a logistic fit that fell back to raw PLCC is
marked "†", and the "mean" row is the unweighted mean over datasets (each dataset counts once, as in the
literature's average columns). matplotlib is imported inside the plotting functions (Agg canvas, no pyplot
global state), keeping ``import qponder.report`` cheap.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from qponder.io import write_bytes_atomic
from qponder.metrics import FIT_OK, MEAN_KEY, mean_summary

__all__ = [
    "COLUMNS",
    "HEADERS",
    "curve_plot",
    "format_value",
    "markdown_table",
    "scatter_plot",
    "text_table",
]

COLUMNS = ["n", "n_valid", "parse_failure_rate", "srcc", "krcc", "plcc", "plcc_logistic4", "rmse"]
"""Default table columns: the keys of :func:`qponder.metrics.summarize`."""
HEADERS = {
    "n": "n",
    "n_valid": "n_valid",
    "parse_failure_rate": "parse fail",
    "srcc": "SRCC",
    "krcc": "KRCC",
    "plcc": "PLCC",
    "plcc_logistic4": "PLCC (logistic4)",
    "rmse": "RMSE",
}
NAN = "—"
DAGGER = "†"
_FOOTNOTE_FIT = f"{DAGGER} logistic4 fit failed; raw PLCC shown."


def format_value(key: str, value: Any, digits: int = 4) -> str:
    """One cell: counts as integers, ``parse_failure_rate`` as a percentage, other numbers with ``digits``
    decimals, NaN/None as "—", strings unchanged."""
    if value is None:
        return NAN
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return NAN
        if key == "parse_failure_rate":
            return f"{100.0 * value:.{max(digits - 2, 1)}f}%"
        if key in ("n", "n_valid", "n_datasets") and value.is_integer():
            return str(int(value))
        return f"{value:.{digits}f}"
    return str(value)


def _fit_failed(row: Mapping[str, Any]) -> bool:
    return str(row.get("plcc_logistic_fit", FIT_OK)).startswith("failed")


def _rows(
    results: Mapping[str, Mapping[str, Any]], columns: Sequence[str] | None, digits: int, mean_row: bool = True,
    first_header: str = "dataset",
) -> tuple[list[str], list[list[str]], list[str]]:
    """(header, cell rows, footnotes) shared by the Markdown and the plain-text table."""
    if not isinstance(results, Mapping):
        raise TypeError(f"results must be a mapping of name -> metrics dict, got {type(results).__name__}")
    data = {k: v for k, v in results.items() if k != MEAN_KEY}
    cols = list(COLUMNS if columns is None else columns)
    if data:
        unknown = [c for c in cols if not any(c in row for row in data.values())]
        if unknown:
            raise ValueError(f"column(s) {unknown} appear in no result (have: {sorted(set().union(*data.values()))})")
    body: list[list[str]] = []
    dagger = False
    for name, row in data.items():
        cells = [str(name)]
        for c in cols:
            cell = format_value(c, row[c], digits) if c in row else ""
            if c == "plcc_logistic4" and _fit_failed(row) and cell != NAN:
                cell += DAGGER
                dagger = True
            cells.append(cell)
        body.append(cells)
    notes = []
    if mean_row and len(data) > 1:
        mean = mean_summary(data)
        cells = [MEAN_KEY]
        for c in cols:
            cells.append(format_value(c, mean[c], digits) if c in mean and c != "n_datasets" else "")
            if c == "plcc_logistic4" and _fit_failed(mean) and cells[-1] != NAN:
                cells[-1] += DAGGER
        body.append(cells)
        notes.append(f"mean: unweighted mean over the {len(data)} datasets (each dataset counts once).")
    if dagger:
        notes.append(_FOOTNOTE_FIT)
    header = [first_header] + [HEADERS.get(c, c) for c in cols]
    return header, body, notes


def markdown_table(
    results: Mapping[str, Mapping[str, Any]], columns: list[str] | None = None, digits: int = 4,
    mean_row: bool = True, first_header: str = "dataset",
) -> str:
    """A Markdown table: one row per dataset (insertion order), columns = metric keys (default :data:`COLUMNS`).

    With more than one dataset a "mean" row gives the unweighted mean over datasets of SRCC, KRCC, PLCC and
    logistic PLCC (other cells blank; a NaN in any dataset makes the mean "—"). A ``"mean"`` entry in ``results``
    is ignored and recomputed. Footnotes below the table explain the mean row and any "†". Rows that are not
    datasets (e.g. training stages) pass ``mean_row=False`` and their own ``first_header``.
    """
    header, body, notes = _rows(results, columns, digits, mean_row, first_header)
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
    ]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    if notes:
        lines.append("")
        lines += notes
    return "\n".join(lines) + "\n"


def text_table(results: Mapping[str, Mapping[str, Any]], columns: list[str] | None = None, digits: int = 4) -> str:
    """The same table as :func:`markdown_table` in aligned plain text, for terminals and logs."""
    header, body, notes = _rows(results, columns, digits)
    table = [header] + body
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]

    def fmt(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]
        return "  ".join([first] + rest).rstrip()

    lines = [fmt(header), "  ".join("-" * w for w in widths)]
    lines += [fmt(r) for r in body]
    lines += notes
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------------ plots


def _new_figure(width: float = 6.4, height: float = 4.8) -> Any:
    """A figure on the Agg canvas without pyplot, so plotting never touches a user's interactive backend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save_png(fig: Any, path: str | os.PathLike[str]) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return write_bytes_atomic(buf.getvalue(), path)


def scatter_plot(
    pred: Sequence[float | None],
    mos: Sequence[float],
    path: str | os.PathLike[str],
    title: str,
    fit: bool = True,
) -> Path:
    """PNG scatter of predicted score vs MOS, with the fitted VQEG logistic curve when ``fit``.

    SRCC/PLCC (raw and logistic) are in the legend; unparsable predictions (None/NaN) are not plotted and their
    count is stated in the title. Returns the written path (written atomically).
    """
    import numpy as np

    from qponder.metrics import fit_logistic4, logistic4, summarize

    p = np.asarray(pred, dtype=np.float64)
    m = np.asarray(mos, dtype=np.float64)
    if p.shape != m.shape or p.ndim != 1:
        raise ValueError(f"pred and mos must be 1-D of equal length, got {p.shape} and {m.shape}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NaN metrics are shown as "—" in the legend instead
        s = summarize(p, m)
    ok = np.isfinite(p) & np.isfinite(m)
    x, y = p[ok], m[ok]
    n_skipped = int(p.size - x.size)

    fig = _new_figure()
    ax = fig.add_subplot()
    size = 12 if x.size <= 2000 else max(1.0, 12 * (2000 / x.size) ** 0.5)
    ax.scatter(
        x,
        y,
        s=size,
        alpha=0.6 if x.size <= 2000 else 0.3,
        linewidths=0,
        rasterized=x.size > 5000,
        label=f"SRCC {format_value('srcc', s['srcc'], 3)}  PLCC {format_value('plcc', s['plcc'], 3)}  "
        f"(n={x.size})",
    )
    if fit and x.size:
        params = fit_logistic4(x, y)
        if params is not None:
            grid = np.linspace(float(x.min()), float(x.max()), 256)
            ax.plot(
                grid,
                logistic4(grid, *params),
                color="C3",
                lw=2,
                label=f"logistic4 fit: PLCC {format_value('plcc', s['plcc_logistic4'], 3)}",
            )
        else:
            ax.plot([], [], " ", label="logistic4 fit failed")
    ax.set_xlabel("predicted score")
    ax.set_ylabel("MOS")
    full_title = title
    if n_skipped:
        full_title += f"\n({n_skipped} of {p.size} unparsable predictions not shown)"
    ax.set_title(full_title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    return _save_png(fig, path)


def paired_seed_plot(
    panels: Mapping[str, Mapping[str, Sequence[float | None]]],
    seeds: Sequence[Any],
    path: str | os.PathLike[str],
    title: str,
) -> Path:
    """PNG of a paired comparison: one panel per metric (``{metric: {arm: [value per seed]}}``), each arm's seeds as
    points joined across arms by one line per seed (so a reader sees whether an arm wins per seed, not only in the
    mean) and the mean over seeds as a bar. Missing values (None/NaN) are left out. Returns the written path."""
    import numpy as np

    fig = _new_figure(4.2 * max(len(panels), 1), 4.4)
    for i, (metric, arms) in enumerate(panels.items()):
        ax = fig.add_subplot(1, max(len(panels), 1), i + 1)
        names = list(arms)
        x = np.arange(len(names), dtype=float)
        vals = np.array([[np.nan if v is None else float(v) for v in arms[a]] for a in names], dtype=float)
        means = [float(np.nanmean(r)) if np.isfinite(r).any() else np.nan for r in vals]
        ax.bar(x, means, width=0.6, color="0.85", edgecolor="0.5", label="mean over seeds")
        for j, seed in enumerate(seeds):
            col = vals[:, j] if j < vals.shape[1] else np.full(len(names), np.nan)
            ax.plot(x, col, marker="o", markersize=4, lw=1, alpha=0.8, label=f"seed {seed}")
        ax.set_xticks(x, names, rotation=30, ha="right")
        ax.set_title(metric)
        ax.grid(True, axis="y", alpha=0.3)
        if i == 0:
            ax.legend(loc="best", fontsize="small")
    fig.suptitle(title)
    return _save_png(fig, path)


def curve_plot(
    series: Mapping[str, Sequence[tuple[float, float]]],
    path: str | os.PathLike[str],
    title: str,
    xlabel: str,
    ylabel: str,
) -> Path:
    """PNG line plot of named ``(step, value)`` series (reward, loss, ...), each sorted by step.

    Non-finite values leave gaps. With no points at all the plot says "no data yet" instead of failing, so a
    job can draw its curves from the first step on. Returns the written path (written atomically).
    """
    fig = _new_figure(7.0, 4.2)
    ax = fig.add_subplot()
    any_points = False
    for name, points in series.items():
        pts = sorted(((float(s), float(v) if v is not None else math.nan) for s, v in points), key=lambda t: t[0])
        if not pts:
            continue
        any_points = True
        steps = [s for s, _ in pts]
        values = [v for _, v in pts]
        ax.plot(steps, values, marker="o" if len(pts) <= 30 else None, markersize=3, lw=1.5, label=str(name))
    if any_points:
        ax.legend(loc="best", fontsize="small")
    else:
        ax.text(0.5, 0.5, "no data yet", ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    return _save_png(fig, path)
