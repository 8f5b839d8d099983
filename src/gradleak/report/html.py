"""Self-contained one-page HTML report of a run (images inlined as base64 data URIs)."""
from __future__ import annotations

import base64
import json
import math
import mimetypes
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Sequence

import jinja2

from gradleak.atomic import atomic_write_text

__all__ = ["write_report", "render_report", "data_uri"]

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"

#: Known image-quality metrics: key -> (display name, unit, format, higher is better).
METRICS: dict[str, tuple[str, str, str, bool]] = {
    "psnr": ("PSNR", " dB", ".2f", True),
    "ssim": ("SSIM", "", ".4f", True),
    "lpips": ("LPIPS", "", ".4f", False),
    "mse": ("MSE", "", ".3e", False),
    "jaccard": ("Jaccard (tags)", "", ".3f", True),
}

#: Scalar run facts shown in the "run" table, in this order; the labels of an attack's own facts
#: (``fact_labels``, from its artifacts) are added before "computed on".
RUN_FACTS: dict[str, str] = {
    "label_accuracy": "label accuracy",
    "label_mode": "label mode",
    "iterations": "iterations",
    "seconds": "time",
    "seed": "seed",
    "best_restart": "best restart",
    "defenses": "defenses",
    "tagger": "tagger",
    "distance": "gradient distance",
    "backend": "backend",
    "environment": "computed on",
}

DEFAULT_IMAGES: tuple[tuple[str, str], ...] = (
    ("Reconstructions (top: originals; bottom: matched reconstructions)", "reconstruction.png"),
    ("Attack objective", "loss.png"),
)


@lru_cache(maxsize=1)
def _env() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def data_uri(path: str | os.PathLike) -> str:
    """``data:<mime>;base64,...`` for a file (PNG unless the suffix says otherwise)."""
    path = Path(path)
    mime = mimetypes.guess_type(path.name)[0] or "image/png"
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _num(v: Any, fmt: str = ".4g", unit: str = "") -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, (int, float)):
        f = float(v)
        if math.isnan(f):
            return "NaN"
        if math.isinf(f):
            return ("∞" if f > 0 else "−∞") + unit
        if isinstance(v, int) and fmt == ".4g":
            return f"{v}{unit}"
        return f"{f:{fmt}}{unit}"
    return str(v)


def _value(v: Any) -> str:
    """Any value as short text: numbers formatted, containers as compact JSON."""
    if v is None or isinstance(v, (bool, int, float)):
        return _num(v)
    if isinstance(v, str):
        return v
    try:
        return json.dumps(v, default=str, separators=(", ", ": "), ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(v)


def _is_summary(v: Any) -> bool:
    return isinstance(v, dict) and ("mean" in v or "best" in v or "per_image" in v)


def _defenses(v: Any) -> str:
    if not v:
        return "none"
    if not isinstance(v, list):
        return _value(v)
    parts = []
    for d in v:
        if isinstance(d, dict) and "name" in d:
            args = ", ".join(f"{k}={_value(x)}" for k, x in d.items() if k != "name")
            parts.append(f"{d['name']}({args})" if args else str(d["name"]))
        else:
            parts.append(_value(d))
    return "; ".join(parts)


def _fact(key: str, v: Any) -> str:
    if key == "label_accuracy" and isinstance(v, (int, float)) and not isinstance(v, bool):
        return f"{float(v):.2f} ({float(v) * 100:.0f}%)" if math.isfinite(float(v)) else _num(v)
    if key == "seconds":
        return _num(v, ".2f", " s")
    if key == "defenses":
        return _defenses(v)
    if key == "tagger" and isinstance(v, dict):
        parts = [f"threshold {v['threshold']}" if "threshold" in v else "",
                 f"top-k {v['top_k']}" if v.get("top_k") else "", f"{v['tags']} tags" if "tags" in v else ""]
        return f"{v.get('name', '')} ({', '.join(p for p in parts if p)})" if any(parts) else str(v.get("name", ""))
    return _value(v)


def _unavailable(name: str, reason: Any) -> str:
    """``unavailable: <reason>``, without repeating a leading "<name> unavailable:" in the reason."""
    text = str(reason or "").strip()
    prefix = f"{name} unavailable"
    if text.lower().startswith(prefix.lower()):
        text = text[len(prefix):].lstrip(" :-–").strip()
    return f"unavailable: {text}" if text else "unavailable"


LEVEL_TEXT = {"none": "no leakage beyond the references", "partial": "partial leakage",
              "recognisable": "recognisable reconstructions"}


def _calibration(metrics: dict, used: set[str]) -> dict | None:
    """The verdict block (header, rule, batch level, reference table, per-image margins) or None."""
    v, refs, m = metrics.get("verdict"), metrics.get("reference"), metrics.get("margins")
    used.update(k for k in ("verdict", "reference", "margins", "header") if k in metrics)
    header = [(str(k), _value(x)) for k, x in (metrics.get("header") or {}).items()]
    if not isinstance(v, dict):
        return {"header": header, "batch": None} if header else None
    rows = []

    def mean(xs):
        xs = [x for x in (xs or []) if x is not None]
        return sum(xs) / len(xs) if xs else None

    if isinstance(refs, dict):
        for name, r in refs.items():
            if name == "unavailable" or not isinstance(r, dict):
                continue
            rows.append({"name": name, "description": r.get("description", ""),
                         "psnr": _num(mean(r.get("psnr")), ".2f", " dB"), "ssim": _num(mean(r.get("ssim")), ".4f"),
                         "jaccard": _num(mean(r.get("jaccard")), ".3f") if r.get("jaccard") is not None else "–"})
    unavailable = [(k, str(x)) for k, x in ((refs or {}).get("unavailable") or {}).items()]
    margin_rows = []
    if isinstance(m, dict):
        for key, label, fmt, unit in (("psnr", "ΔPSNR", ".2f", " dB"), ("ssim", "ΔSSIM", ".4f", ""),
                                      ("jaccard", "ΔJaccard", ".3f", "")):
            if isinstance(m.get(key), dict):
                margin_rows.append({"name": label, "mean": _num(m[key].get("mean"), fmt, unit),
                                    "min": _num(m[key].get("min"), fmt, unit)})
    counts = v.get("counts") or {}
    return {"header": header, "batch": v.get("batch"), "batch_text": LEVEL_TEXT.get(v.get("batch"), ""),
            "rule": v.get("rule", ""), "counts": ", ".join(f"{n} {k}" for k, n in counts.items()),
            "references": rows, "unavailable": unavailable, "margins": margin_rows}


VERDICT_CLASS = {"leaks": "recognisable", "partial": "partial", "no leakage found": "none",
                 "inconclusive": "inconclusive"}


def _attack_rows(rows: list) -> list[dict]:
    out = []
    for r in rows or []:
        out.append({"name": r.get("name", ""), "reason": r.get("reason", ""),
                    "time": _num(r.get("seconds"), ".1f", " s") + (f" of {_num(r.get('share'), '.1f', ' s')}"
                                                                   if r.get("share") is not None else ""),
                    "iterations": _num(r.get("iterations")), "psnr": _num(r.get("psnr"), ".2f", " dB"),
                    "ssim": _num(r.get("ssim"), ".3f"), "lpips": _num(r.get("lpips"), ".3f"),
                    "margin": _num(r.get("margin_psnr"), "+.2f", " dB"), "won": _num(r.get("images_won")),
                    "stopped": (r.get("stopped") or "") + (f": {r['note']}" if r.get("note") else "")})
    return out


def _audit(metrics: dict, used: set[str]) -> dict | None:
    """``attack: auto``: the first screen — sentence, per-attack table, control, flags."""
    a = metrics.get("audit")
    if not isinstance(a, dict):
        return None
    used.add("audit")
    c = a.get("control") or None
    control = None
    if isinstance(c, dict):
        control = {"skipped": c.get("skipped"), "built": c.get("built", ""), "batch": c.get("batch"),
                   "level": c.get("level") or "not recognisable", "psnr": _num(c.get("psnr"), ".2f", " dB"),
                   "margin": _num(c.get("margin_psnr"), "+.2f", " dB"), "attacks": _attack_rows(c.get("attacks")),
                   "interrupted": c.get("interrupted")}
    return {"verdict": a.get("verdict"), "css": VERDICT_CLASS.get(a.get("verdict"), ""),
            "sentence": a.get("sentence", ""), "interrupted": a.get("interrupted"),
            "attacks": _attack_rows(a.get("attacks")), "control": control, "flags": a.get("flags") or [],
            "protocol": a.get("protocol", ""), "labels": f"{a.get('label_mode')}"
            + (f", accuracy {a['label_accuracy']:.2f}" if isinstance(a.get("label_accuracy"), (int, float)) else ""),
            "view": _value(a.get("view") or "nothing to model")}


def _context(metrics: dict, config_yaml: str, run_dir: Path, images: Sequence[tuple[str, str]], title: str | None,
             fact_labels: Mapping[str, str] | None = None):
    used: set[str] = set()
    attack = metrics.get("attack") or ""
    used.add("attack")
    audit = _audit(metrics, used)
    calibration = _calibration(metrics, used)

    # summary table: known metrics first (in a fixed order), then any other summary-shaped entry
    summary, per_image_cols = [], []
    keys = [k for k in METRICS if k in metrics] + [k for k in metrics if k not in METRICS and _is_summary(metrics[k])]
    for key in keys:
        name, unit, fmt, higher = METRICS.get(key, (key, "", ".4g", None))
        v = metrics[key]
        used.add(key)
        row = {"name": name, "direction": "" if higher is None else ("higher is better" if higher else
                                                                     "lower is better"),
               "mean": "", "best": "", "unavailable": None}
        if v is None:
            used.add(f"{key}_unavailable")
            reason = metrics.get(f"{key}_unavailable")
            row["unavailable"] = _unavailable(name, reason)
        elif _is_summary(v):
            row["mean"] = _num(v.get("mean"), fmt, unit)
            row["best"] = _num(v.get("best"), fmt, unit)
            per = v.get("per_image")
            if isinstance(per, (list, tuple)) and per:
                per_image_cols.append((name, [_num(x, fmt, unit) for x in per]))
        else:
            row["mean"] = _value(v)
        summary.append(row)
    # an explanation without a matching metric entry is still worth showing
    for key in [k for k in metrics if k.endswith("_unavailable") and k not in used]:
        base = key[: -len("_unavailable")]
        if base not in metrics and metrics[key]:
            used.add(key)
            name = METRICS.get(base, (base,))[0]
            summary.append({"name": name, "direction": "", "mean": "", "best": "",
                            "unavailable": _unavailable(name, metrics[key])})
        elif not metrics[key]:
            used.add(key)

    margins = metrics.get("margins") if isinstance(metrics.get("margins"), dict) else {}
    for key, label, fmt, unit in (("psnr", "ΔPSNR vs best reference", ".2f", " dB"),
                                  ("ssim", "ΔSSIM vs best reference", ".4f", "")):
        if isinstance(margins.get(key), dict) and margins[key].get("per_image"):
            per_image_cols.append((label, [_num(x, fmt, unit) for x in margins[key]["per_image"]]))
    if isinstance(metrics.get("verdict"), dict) and metrics["verdict"].get("per_image"):
        per_image_cols.append(("level", [str(x) for x in metrics["verdict"]["per_image"]]))
    n_images = max((len(c) for _, c in per_image_cols), default=0)
    per_image = {
        "columns": [name for name, _ in per_image_cols],
        "rows": [[str(i)] + [c[i] if i < len(c) else "" for _, c in per_image_cols] for i in range(n_images)],
    }

    facts = []
    labels = {k: v for k, v in RUN_FACTS.items() if k != "environment"}
    labels.update({k: v for k, v in (fact_labels or {}).items() if k not in RUN_FACTS})
    labels["environment"] = RUN_FACTS["environment"]
    for key, label in labels.items():
        if key in metrics:
            used.add(key)
            facts.append((label, _fact(key, metrics[key])))

    tags = []
    if isinstance(metrics.get("tags"), list):
        used.add("tags")
        for i, t in enumerate(metrics["tags"]):
            if isinstance(t, dict):
                tags.append({"index": str(i), "original": ", ".join(map(str, t.get("original", []))) or "(none)",
                             "reconstruction": ", ".join(map(str, t.get("reconstruction", []))) or "(none)",
                             "jaccard": _num(t.get("jaccard"), ".3f")})

    other = [(k, _value(v)) for k, v in metrics.items() if k not in used]

    figures = []
    for caption, name in images:
        p = run_dir / name
        figures.append({"caption": caption, "name": name, "src": data_uri(p) if p.is_file() else None})

    try:
        from gradleak import __version__ as version
    except ImportError:  # pragma: no cover
        version = ""
    return {
        "title": title or ("gradleak audit" if audit else f"gradleak report: {attack}" if attack else "gradleak report"),
        "attack": attack,
        "audit": audit,
        "calibration": calibration,
        "summary": summary,
        "facts": facts,
        "per_image": per_image,
        "tags": tags,
        "other": other,
        "figures": figures,
        "config_yaml": config_yaml or "",
        "run_dir": run_dir.name,
        "version": version,
    }


def render_report(run_dir: str | os.PathLike, metrics: dict, config_yaml: str, *,
                  images: Sequence[tuple[str, str]] = DEFAULT_IMAGES, title: str | None = None,
                  fact_labels: Mapping[str, str] | None = None) -> str:
    """The report HTML as a string (see :func:`write_report`)."""
    ctx = _context(dict(metrics), config_yaml, Path(run_dir), images, title, fact_labels)
    return _env().get_template("report.html.j2").render(**ctx)


def write_report(run_dir: str | os.PathLike, metrics: dict, config_yaml: str, *,
                 images: Sequence[tuple[str, str]] = DEFAULT_IMAGES, title: str | None = None,
                 filename: str = "report.html", fact_labels: Mapping[str, str] | None = None) -> Path:
    """Write ``run_dir/report.html``: summary, per-image scores, inlined figures, config.

    ``metrics`` follows :func:`gradleak.metrics.score_images` plus run facts (``attack``,
    ``label_accuracy``, ``iterations``, ``seconds``, ``seed``, ...). Missing keys are simply not
    shown; unknown keys land in an "other" table. ``images`` lists ``(caption, file name)`` pairs
    read from ``run_dir`` and embedded as base64 (a missing file is noted, not an error). ``fact_labels``
    (key → label) adds facts to the "run" table: those of the reconstruction's artifacts
    (:func:`gradleak.report.writer.fact_labels`)."""
    run_dir = Path(run_dir)
    html = render_report(run_dir, metrics, config_yaml, images=images, title=title, fact_labels=fact_labels)
    return atomic_write_text(run_dir / filename, html)
