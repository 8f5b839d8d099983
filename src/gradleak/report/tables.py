"""Markdown tables for sweeps and benchmarks (README / terminal output)."""
from __future__ import annotations

import math
from typing import Any, Sequence

__all__ = ["sweep_table", "format_cell"]


def _scalar(v: Any) -> Any:
    """numpy/torch scalars (and one-element arrays) -> Python numbers; summary dicts -> their mean."""
    if isinstance(v, dict) and "mean" in v:
        v = v["mean"]
    if type(v).__module__.split(".")[0] in ("numpy", "torch") and hasattr(v, "item"):
        try:
            return v.item()
        except (ValueError, RuntimeError):
            return v.tolist() if hasattr(v, "tolist") else v
    return v


def format_cell(v: Any, decimals: int = 2) -> str:
    """Floats to ``decimals`` places; summary dicts (``{"mean": ...}``) by their mean; None empty."""
    v = _scalar(v)
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return f"{v:.{decimals}f}"
    if isinstance(v, (list, tuple)):
        return _escape(", ".join(format_cell(x, decimals) for x in v))
    return _escape(str(v))


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\r\n", " ").replace("\n", " ")


def _is_number(v: Any) -> bool:
    v = _scalar(v)
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def sweep_table(
    rows: list[dict],
    columns: Sequence[str] | Sequence[tuple[str, str]] | dict[str, str] | None = None,
    *,
    decimals: int = 2,
) -> str:
    """A GitHub-flavoured Markdown table of ``rows`` (dicts) restricted to ``columns``.

    ``columns``: keys (header = key), ``(key, header)`` pairs, or a ``{key: header}`` dict; None
    takes every key in first-seen order. Floats are shown with ``decimals`` places (2), summary
    dicts by their mean, missing values empty; all-numeric columns are right-aligned."""
    if columns is None:
        keys: list[str] = []
        for row in rows:
            keys += [k for k in row if k not in keys]
        cols = [(k, k) for k in keys]
    elif isinstance(columns, dict):
        cols = [(str(k), str(h)) for k, h in columns.items()]
    else:
        cols = [(c, c) if isinstance(c, str) else (str(c[0]), str(c[1])) for c in columns]
    if not cols:
        return ""
    header = "| " + " | ".join(_escape(h) for _, h in cols) + " |"
    aligns = []
    for key, _ in cols:
        present = [row[key] for row in rows if row.get(key) is not None]
        aligns.append("---:" if present and all(_is_number(v) for v in present) else "---")
    lines = [header, "| " + " | ".join(aligns) + " |"]
    for row in rows:
        lines.append("| " + " | ".join(format_cell(row.get(key), decimals) for key, _ in cols) + " |")
    return "\n".join(lines) + "\n"
