"""``gradleak audit-run``'s outputs: ``results.csv`` (one row per capture), ``summary.json``, the leakage-over-rounds
plots and one self-contained page, ``audit_run.html``."""
from __future__ import annotations

import html
import math
from pathlib import Path

from gradleak.atomic import atomic_write_json, atomic_write_text
from gradleak.report.html import data_uri

COLUMNS = ("round", "kind", "node_id", "status", "num_images", "clients", "psnr_worst", "reference_psnr", "dpsnr_max",
           "psnr_mean", "grey_psnr", "ssim_mean", "verdict", "label_mode", "labels", "label_accuracy", "attack",
           "seconds", "budget_s", "over_budget", "capture", "error")
LEVEL = {"none": 0, "partial": 1, "recognisable": 2}


def _csv(path: Path, rows: list[dict]) -> None:
    import csv
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(COLUMNS), extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def _series(rows: list[dict], key: str) -> tuple[list[int], dict[str, list[float]]]:
    rounds = sorted({r["round"] for r in rows})
    series: dict[str, list[float]] = {}
    for r in rows:
        if r.get("status") != "ok" or r.get(key) is None:
            continue
        name = "aggregate" if r["kind"] == "aggregate" else f"client {r['node_id']}"
        v = r[key] if key != "verdict" else LEVEL.get(r[key], math.nan)
        series.setdefault(name, [math.nan] * len(rounds))[rounds.index(r["round"])] = v
    return rounds, series


def plots(out: Path, rows: list[dict]) -> list[tuple[str, Path]]:
    """Worst-case PSNR against round per client and for the aggregate, the best reference's PSNR at those images
    (dashed), and the verdict level against round; nothing when no capture was scored."""
    from matplotlib.figure import Figure

    from gradleak.atomic import atomic_save_figure

    rounds, psnr = _series(rows, "psnr_worst")
    if not psnr:
        return []
    _, ref = _series(rows, "reference_psnr")
    _, level = _series(rows, "verdict")
    made = []
    fig = Figure(figsize=(6.4, 4.0), dpi=110)
    ax = fig.add_subplot()
    for name, ys in psnr.items():
        line, = ax.plot(rounds, ys, marker="o", lw=1.6 if name != "aggregate" else 2.4, label=name,
                        ls="-" if name != "aggregate" else "-.")
        if name in ref:
            ax.plot(rounds, ref[name], ls=":", color=line.get_color(), alpha=0.6)
    ax.set_xlabel("round")
    ax.set_ylabel("worst-case PSNR (dB)")
    ax.set_title("leakage over rounds (dotted: best no-gradient reference at that image)", fontsize="small")
    ax.set_xticks(rounds)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    made.append(("worst-case PSNR against round", atomic_save_figure(fig, out / "leakage_over_rounds.png")))
    fig = Figure(figsize=(6.4, 3.0), dpi=110)
    ax = fig.add_subplot()
    for name, ys in level.items():
        ax.plot(rounds, ys, marker="s", label=name, ls="-" if name != "aggregate" else "-.")
    ax.set_yticks([0, 1, 2], ["none", "partial", "recognisable"])
    ax.set_xticks(rounds)
    ax.set_xlabel("round")
    ax.set_title("verdict over rounds", fontsize="small")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    made.append(("verdict against round", atomic_save_figure(fig, out / "verdict_over_rounds.png")))
    return made


def summary(rows: list[dict]) -> dict:
    """Per client and for the aggregates: rounds audited, the worst verdict, the worst-case PSNR and its round,
    and the last round's verdict (does the leakage stop as the model trains?)."""
    out: dict = {}
    for r in rows:
        name = "aggregate" if r["kind"] == "aggregate" else ("blocked" if r["kind"] == "blocked" else f"client {r['node_id']}")
        s = out.setdefault(name, {"captures": 0, "errors": 0, "worst_verdict": None, "worst_psnr": None,
                                  "worst_round": None, "last_round": None, "last_verdict": None})
        s["captures"] += 1
        if r.get("status") == "error":
            s["errors"] += 1
        if r.get("status") != "ok":
            continue
        v = r.get("verdict")
        if v is not None and (s["worst_verdict"] is None or LEVEL[v] > LEVEL[s["worst_verdict"]]):
            s["worst_verdict"] = v
        p = r.get("psnr_worst")
        if p is not None and (s["worst_psnr"] is None or p > s["worst_psnr"]):
            s["worst_psnr"], s["worst_round"] = p, r["round"]
        if s["last_round"] is None or r["round"] >= s["last_round"]:
            s["last_round"], s["last_verdict"] = r["round"], v
    return out


def _fmt(v) -> str:
    if v is None or v == "":
        return "–"
    if isinstance(v, float):
        return f"{v:.2f}"
    return html.escape(str(v))


def write_outputs(out: Path, rows: list[dict], errors: list[dict], settings: dict, source: str) -> None:
    """results.csv, summary.json, the plots and audit_run.html."""
    _csv(out / "results.csv", rows)
    summ = summary(rows)
    atomic_write_json(out / "summary.json", {"source": source, "settings": settings, "summary": summ,
                                             "errors": errors, "captures": len(rows)})
    figs = plots(out, rows)
    head = ["round", "kind", "node", "images", "worst-case PSNR", "best reference there", "max ΔPSNR", "mean PSNR",
            "verdict", "labels (mode)", "label acc.", "s", "reconstruction"]
    trs = []
    for r in rows:
        img = out / "captures" / r["capture"] / "reconstruction.png"
        pic = f"<img src='{data_uri(img)}'>" if r.get("status") == "ok" and img.is_file() else \
            html.escape(str(r.get("error") or r.get("status")))
        cells = [_fmt(r["round"]), _fmt(r["kind"]), _fmt(r["node_id"]), _fmt(r.get("num_images")),
                 _fmt(r.get("psnr_worst")), _fmt(r.get("reference_psnr")), _fmt(r.get("dpsnr_max")),
                 _fmt(r.get("psnr_mean")), f"<b>{_fmt(r.get('verdict') or ('unscored' if r.get('status') == 'ok' else r.get('status')))}</b>",
                 f"{_fmt(r.get('labels'))} ({_fmt(r.get('label_mode'))})", _fmt(r.get("label_accuracy")),
                 _fmt(r.get("seconds")), pic]
        trs.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    srows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v['captures']}</td><td>{_fmt(v['worst_verdict'])}</td>"
                    f"<td>{_fmt(v['worst_psnr'])}</td><td>{_fmt(v['worst_round'])}</td><td>{_fmt(v['last_verdict'])}"
                    f"</td><td>{v['errors']}</td></tr>" for k, v in summ.items())
    errs = "".join(f"<li><code>{html.escape(str(e['path']))}</code>: {html.escape(str(e['error']))}</li>" for e in errors)
    pics = "".join(f"<figure><img src='{data_uri(p)}'><figcaption>{html.escape(t)}</figcaption></figure>"
                   for t, p in figs)
    opts = ", ".join(f"{k}={v}" for k, v in (settings.get("options") or {}).items()) or "defaults"
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>gradleak audit-run</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1300px}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right;vertical-align:middle}}figure{{display:inline-block;margin:8px}}
img{{max-width:520px}}</style></head><body>
<h1>Leakage over a whole run</h1>
<p>Captures: <code>{html.escape(source)}</code>; {len(rows)} captures. Attack: {html.escape(str(settings.get('attack')))}
({html.escape(opts)}), seed {settings.get('seed')}, labels {html.escape(str(settings.get('labels')))}
(given: the true labels, the worst case; recover: from the update); budget per update
{_fmt(settings.get('budget_s'))} s (recorded, not yet enforced: one configured attack runs until the trusted
<code>gradleak audit</code> lands). Worst case = the best-reconstructed image of a capture; ΔPSNR = its margin over the
best image a server could guess without the update (grey, public mean, same-class image); the verdict grades every
image by those margins and a capture takes its highest level. Captures without true images are attacked but not
scored (their reconstructions and recovered labels are shown).</p>
<h2>Per client</h2>
<table><tr><th>who</th><th>captures</th><th>worst verdict</th><th>worst-case PSNR</th><th>in round</th>
<th>last round's verdict</th><th>errors</th></tr>{srows}</table>
{pics or '<p>No capture was scored (no --truth): no leakage plot.</p>'}
<h2>Every capture</h2>
<table><tr>{''.join(f'<th>{html.escape(h)}</th>' for h in head)}</tr>{''.join(trs)}</table>
<h2>Errors</h2>{'<ul>' + errs + '</ul>' if errs else '<p>None.</p>'}
</body></html>"""
    atomic_write_text(out / "audit_run.html", page)
