"""A sweep's pictures and page: leakage vs each numeric axis, a heatmap for two axes, ``sweep.html``."""
from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

from gradleak.atomic import atomic_write_text
from gradleak.report.html import data_uri
from gradleak.report.plots import line_plot

LEAKAGE = (("psnr", "PSNR (dB)"), ("ssim", "SSIM"))


def _numeric(values: list[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def value_text(value: Any) -> str:
    """Short text for an axis value: a defense chain as ``topk 0.9; qsgd 3`` (``none`` when empty)."""
    if isinstance(value, str) and value.startswith("["):
        try:
            import json

            value = json.loads(value)
        except ValueError:
            return value
    if isinstance(value, list) and all(isinstance(d, dict) for d in value):
        return "; ".join(" ".join([str(d.get("name", "?"))] + [str(v) for k, v in d.items() if k != "name"])
                         for d in value) or "none"
    return str(value)


def _label(key: str, value: Any) -> str:
    return f"{key.split('.')[-1]}={value_text(value)}"


def sweep_plots(keys: list[str], summary: list[dict], out: Path) -> list[tuple[str, Path]]:
    """For each numeric axis: mean PSNR and SSIM vs its values, one line per combination of the other
    axes' values (the intervals are in the table); for exactly two axes, a PSNR heatmap."""
    plots: list[tuple[str, Path]] = []
    for key in keys:
        xs = sorted({s[key] for s in summary}, key=lambda v: (isinstance(v, str), v))
        if len(xs) < 2 or not _numeric(xs):
            continue
        others = [k for k in keys if k != key]
        for metric, label in LEAKAGE:
            series: dict[str, list[float]] = {}
            for s in summary:
                name = ", ".join(_label(k, s[k]) for k in others) or metric
                series.setdefault(name, [math.nan] * len(xs))[xs.index(s[key])] = s.get(f"{metric}_mean") or math.nan
            path = out / f"plot_{metric}_vs_{key.replace('.', '_')}.png"
            line_plot(xs, series, path, xlabel=key, ylabel=f"mean {label}", title=f"{label} vs {key}")
            plots.append((f"{label} vs {key}", path))
    if len(keys) == 2:
        path = _heatmap(keys, summary, out / "heatmap_psnr.png")
        if path is not None:
            plots.append((f"mean PSNR over {keys[0]} × {keys[1]}", path))
    return plots


def _heatmap(keys: list[str], summary: list[dict], path: Path) -> Path | None:
    from matplotlib.figure import Figure

    from gradleak.atomic import atomic_save_figure

    a = list(dict.fromkeys(str(s[keys[0]]) for s in summary))
    b = list(dict.fromkeys(str(s[keys[1]]) for s in summary))
    grid = [[math.nan] * len(b) for _ in a]
    for s in summary:
        v = s.get("psnr_mean")
        grid[a.index(str(s[keys[0]]))][b.index(str(s[keys[1]]))] = math.nan if v is None else v
    fig = Figure(figsize=(1.2 + 1.1 * len(b), 1.0 + 0.6 * len(a)), dpi=110)
    ax = fig.add_subplot()
    im = ax.imshow(grid, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(b)), [value_text(v) for v in b], fontsize="small", rotation=20, ha="right")
    ax.set_yticks(range(len(a)), [value_text(v) for v in a], fontsize="small")
    ax.set_xlabel(keys[1])
    ax.set_ylabel(keys[0])
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            if not math.isnan(v):
                ax.text(j, i, f"{v:.1f}", ha="center", va="center", color="w", fontsize="small")
    fig.colorbar(im, ax=ax, label="mean PSNR (dB)")
    fig.tight_layout()
    return atomic_save_figure(fig, path)


def _fmt(v: Any, key: str) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.3f}" if key.startswith(("ssim", "lpips", "jaccard", "label")) else f"{v:.2f}"
    return html.escape(str(v))


def write_sweep_html(path: Path, name: str, keys: list[str], summary: list[dict], plots: list[tuple[str, Path]],
                     grids: dict[str, Path]) -> Path:
    """One self-contained page: the per-cell table (mean [95 % interval]), the plots, a grid per cell."""
    head = ["cell", *keys, "runs", "PSNR (dB)", "ΔPSNR over best reference", "best PSNR", "SSIM", "LPIPS", "Jaccard",
            "label acc.", "s/run", "verdicts"]
    rows = []
    for s in summary:
        cells = [html.escape(s["cell"]), *[html.escape(value_text(s[k])) for k in keys], str(s["runs"])]
        for m in ("psnr", "dpsnr", None, "ssim", "lpips", "jaccard", "label_accuracy", "seconds"):
            if m is None:
                cells.append(_fmt(s.get("psnr_best_in_batch"), "psnr"))
                continue
            mean, lo, hi = s.get(f"{m}_mean"), s.get(f"{m}_lo"), s.get(f"{m}_hi")
            txt = _fmt(mean, m)
            if mean is not None and lo is not None and hi is not None and s["runs"] > 1 and m != "seconds":
                txt += f" <small>[{_fmt(lo, m)}, {_fmt(hi, m)}]</small>"
            cells.append(txt)
        cells.append(_fmt(s.get("verdicts"), ""))
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")  # every cell is HTML already
    figs = "".join(f"<figure><img src='{data_uri(p)}'><figcaption>{html.escape(t)}</figcaption></figure>"
                   for t, p in plots)
    cell_imgs = "".join(
        f"<figure><img src='{data_uri(p)}'><figcaption>{html.escape(c)}: "
        f"{html.escape(', '.join(_label(k, s[k]) for k in keys))}</figcaption></figure>"
        for s in summary for c, p in [(s["cell"], grids.get(s["cell"]))] if p is not None and Path(p).is_file())
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>gradleak sweep {html.escape(name)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1200px}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}figure{{display:inline-block;margin:8px}}
img{{max-width:560px}}</style></head><body>
<h1>Sweep {html.escape(name)}</h1>
<p>{len(summary)} cells; mean over the cell's batches with the 95 % bootstrap interval in brackets; ΔPSNR is the
margin over the best image a server could guess with no gradient (grey, public mean, a same-class public image);
best PSNR is the best single image over the cell's batches. Reconstruction grids show the first batch of each cell
(originals on top).</p>
<table><tr>{''.join(f'<th>{html.escape(h)}</th>' for h in head)}</tr>{''.join(rows)}</table>
<h2>Plots</h2>{figs or '<p>No numeric axis with two or more values.</p>'}
<h2>Reconstructions per cell</h2>{cell_imgs}
</body></html>"""
    atomic_write_text(path, page)
    return path
