"""Plots (matplotlib ``Figure`` objects, no pyplot global state) and the trace CSV."""
from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import Any, Sequence

from matplotlib.figure import Figure

from gradleak.atomic import atomic_save_figure, atomic_write_text

__all__ = ["loss_plot", "write_trace_csv", "line_plot", "scatter_plot"]

_FIGSIZE = (7.0, 4.0)
_DPI = 110
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")


def _finite(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _choose_yscale(ax, values: Sequence[float]) -> str:
    """log when every value is > 0; symlog (linear around 0) when some are <= 0."""
    if not values:
        return "linear"
    if min(values) > 0:
        ax.set_yscale("log")
        return "log"
    positive = [abs(v) for v in values if v != 0]
    linthresh = min(positive) if positive else 1.0
    ax.set_yscale("symlog", linthresh=linthresh)
    return "symlog"


def _save(fig: Figure, path) -> Path:
    fig.tight_layout()
    return atomic_save_figure(fig, Path(path), dpi=_DPI)


def _scales_and_labels(ax, xlabel: str, ylabel: str, title: str, *, logx: bool,
                       logy_values: Sequence[float] | None) -> None:
    """What line and scatter plots set alike: a log x axis when ``logx``; a log (or symlog,
    :func:`_choose_yscale`) y axis over ``logy_values`` unless None; the axis labels; the title when set."""
    if logx:
        ax.set_xscale("log")
    if logy_values is not None:
        _choose_yscale(ax, logy_values)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize="medium")


def _empty(ax, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def loss_plot(trace_rows: list[dict], path: str | os.PathLike, title: str | None = None) -> Path:
    """Objective vs. global iteration, one colour per stage, dashed lines at stage boundaries.

    Rows: ``{"iteration": int, "stage": str, "loss": float, "restart"?: int}``. With several rows
    per (stage, iteration) (restarts) the minimum is drawn. Non-finite losses are skipped. The y axis
    is logarithmic, or symlog when a loss is <= 0 (e.g. cosine distances near 0)."""
    fig = Figure(figsize=_FIGSIZE, dpi=_DPI)
    ax = fig.add_subplot()
    stages: dict[str, dict[int, float]] = {}
    first_iter: dict[str, int] = {}
    dropped = 0
    for row in trace_rows:
        stage = str(row.get("stage", ""))
        it = int(row["iteration"])
        first_iter[stage] = min(first_iter.get(stage, it), it)
        per_it = stages.setdefault(stage, {})
        loss = _finite(row.get("loss"))
        if loss is None:
            dropped += 1
            continue
        per_it[it] = min(per_it.get(it, loss), loss)
    values = [v for per_it in stages.values() for v in per_it.values()]
    if not values:
        _empty(ax, "no finite loss values recorded")
    else:
        _choose_yscale(ax, values)
        for stage, per_it in stages.items():
            its = sorted(per_it)
            ax.plot(its, [per_it[i] for i in its], lw=1.2, label=stage or "loss")
        order = sorted(first_iter.items(), key=lambda kv: kv[1])
        for _stage, it in order[1:]:
            ax.axvline(it, color="0.35", ls="--", lw=0.9)
        ax.set_xlabel("iteration")
        ax.set_ylabel("objective")
        ax.grid(True, which="major", alpha=0.3)
        if any(stages):
            ax.legend(title="stage", fontsize="small", title_fontsize="small", loc="best")
    full = title or "attack objective"
    if dropped:
        full += f" ({dropped} non-finite values not shown)"
    ax.set_title(full, fontsize="medium")
    return _save(fig, path)


def write_trace_csv(trace_rows: list[dict], path: str | os.PathLike) -> Path:
    """One CSV row per trace row; columns iteration, stage, restart, loss first, then any other keys."""
    preferred = ["iteration", "stage", "restart", "loss"]
    seen = {k for row in trace_rows for k in row}
    columns = [k for k in preferred if k in seen]
    for row in trace_rows:
        columns += [k for k in row if k not in columns]
    if not columns:
        columns = ["iteration", "stage", "loss"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n", restval="")
    writer.writeheader()
    for row in trace_rows:
        writer.writerow(row)
    return atomic_write_text(path, buf.getvalue())


def line_plot(x: Sequence[float], ys: dict[str, Sequence[float]], path: str | os.PathLike, xlabel: str = "",
              ylabel: str = "", title: str = "", *, logx: bool = False, logy: bool = False,
              markers: bool = True) -> Path:
    """One line per ``ys`` entry over the shared ``x`` (non-finite points leave gaps)."""
    fig = Figure(figsize=_FIGSIZE, dpi=_DPI)
    ax = fig.add_subplot()
    if not ys:
        _empty(ax, "no data")
    for k, (label, y) in enumerate(ys.items()):
        if len(y) != len(x):
            raise ValueError(f"series {label!r} has {len(y)} values for {len(x)} x values")
        yy = [math.nan if _finite(v) is None else _finite(v) for v in y]
        ax.plot(list(x), yy, label=str(label), lw=1.4,
                marker=_MARKERS[k % len(_MARKERS)] if markers else None, ms=4)
    _scales_and_labels(ax, xlabel, ylabel, title, logx=logx, logy_values=[
        v for y in ys.values() for v in (_finite(u) for u in y) if v is not None] if logy else None)
    if ys:
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small", loc="best")
    return _save(fig, path)


def scatter_plot(points: list[dict], path: str | os.PathLike, xlabel: str = "", ylabel: str = "", title: str = "", *,
                 logx: bool = False, logy: bool = False, annotate: bool = True, connect: bool = False) -> Path:
    """Points ``{"x", "y", "label"?, "group"?}``: one colour/marker per group (legend), each point
    annotated with its ``label``; ``connect=True`` joins a group's points in order of x (trade-off
    curves). Points with a non-finite coordinate are skipped."""
    fig = Figure(figsize=_FIGSIZE, dpi=_DPI)
    ax = fig.add_subplot()
    groups: dict[str, list[tuple[float, float, str]]] = {}
    for p in points:
        x, y = _finite(p.get("x")), _finite(p.get("y"))
        if x is None or y is None:
            continue
        label = p.get("label")
        groups.setdefault(str(p.get("group", "")), []).append((x, y, "" if label is None else str(label)))
    if not groups:
        _empty(ax, "no data")
    for k, (group, pts) in enumerate(groups.items()):
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        coll = ax.scatter(xs, ys, marker=_MARKERS[k % len(_MARKERS)], s=30, label=group or None, zorder=3)
        if connect and len(pts) > 1:
            srt = sorted(pts)
            ax.plot([p[0] for p in srt], [p[1] for p in srt], lw=1.0, alpha=0.6,
                    color=coll.get_facecolor()[0], zorder=2)
        if annotate:
            for x, y, label in pts:
                if label:
                    ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize="x-small")
    _scales_and_labels(ax, xlabel, ylabel, title, logx=logx,
                       logy_values=[p[1] for pts in groups.values() for p in pts] if logy else None)
    if groups:
        ax.grid(True, alpha=0.3)
        if any(groups):
            ax.legend(fontsize="small", loc="best")
    return _save(fig, path)
