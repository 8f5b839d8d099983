"""Weight files as a pair: ``<stem>.safetensors`` (tensors) + ``<stem>.json`` (format, kind, architecture,
provenance). Used by observations, priors and their training checkpoints, enhancers, autoencoders and
taggers.

Reading never executes code from the files (safetensors + JSON only); writing goes through temporary files
and renames, so an interrupted save never leaves a half-written pair.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import Tensor

from gradleak.errors import UserError


def _stem(path: str | Path) -> Path:
    stem = Path(path)
    return stem.with_suffix("") if stem.suffix in (".safetensors", ".json") else stem


def write_pair(path: str | Path, tensors: dict[str, Tensor], meta: dict) -> tuple[Path, Path]:
    """Write ``tensors`` and ``meta`` (which carries its own format/kind) next to each other at ``path``
    (a stem, or either file's name); returns (safetensors path, json path)."""
    stem = _stem(path)
    stem.parent.mkdir(parents=True, exist_ok=True)
    st, js = stem.with_suffix(".safetensors"), stem.with_suffix(".json")
    tmp_st, tmp_js = st.with_name(st.name + ".tmp"), js.with_name(js.name + ".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp_st))
    os.chmod(tmp_st, 0o644)  # safetensors creates the file private; these are shareable weights
    tmp_js.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    tmp_st.replace(st)
    tmp_js.replace(js)
    return st, js


def read_pair(path: str | Path, key: str, fmt: str | None, kind: str | None = None) -> tuple[dict[str, Tensor], dict]:
    """Tensors and metadata of a pair (``path``: the stem, either file, or — with ``kind`` — a directory
    holding ``<kind>.safetensors``). When given, the JSON's ``format`` must be ``fmt`` and its ``kind``
    ``kind``; every error is one line that names the config ``key``."""
    stem = Path(path)
    if kind is not None and stem.is_dir():
        stem = stem / kind
    stem = _stem(stem)
    st, js = stem.with_suffix(".safetensors"), stem.with_suffix(".json")
    for f in (st, js):
        if not f.is_file():
            raise UserError(f"{key}: file not found: {str(f)!r}")
    try:
        meta = json.loads(js.read_text())
        tensors = load_file(str(st))
    except Exception as err:  # noqa: BLE001 - corrupt files are one line
        raise UserError(f"{key}: cannot read {str(st)!r} / {str(js)!r}: {type(err).__name__}") from None
    if (fmt is not None and meta.get("format") != fmt) or (kind is not None and meta.get("kind") != kind):
        what = kind or fmt.removeprefix("gradleak-")
        raise UserError(f"{key}: {str(js)!r} is not a gradleak {what} file "
                        f"(format {meta.get('format')!r}, kind {meta.get('kind')!r})")
    return tensors, meta
