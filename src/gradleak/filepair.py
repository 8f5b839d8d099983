"""Weight files as a pair: ``<stem>.safetensors`` (tensors) + ``<stem>.json`` (format, kind, architecture,
provenance). Used by observations, priors and their training checkpoints, enhancers, autoencoders and
taggers.

Reading never executes code from the files (safetensors + JSON only); writing goes through temporary files,
flushed to disk (:func:`gradleak.atomic.fsync_file`) before the renames, so an interrupted save (Ctrl-C,
SIGKILL, power loss) never leaves a half-written file; a pair id in both files detects the one unsafe instant,
between the two renames.
"""
from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Iterable, Iterator

from safetensors.torch import save_file
from torch import Tensor, nn

from gradleak.atomic import fsync_dir, fsync_file, write_error
from gradleak.errors import UserError
from gradleak.limits import check_model_size
from gradleak.safefile import read_json, read_safetensors


def _stem(path: str | Path) -> Path:
    stem = Path(path)
    return stem.with_suffix("") if stem.suffix in (".safetensors", ".json") else stem


PAIR_KEY = "gradleak_pair"


def write_pair(path: str | Path, tensors: dict[str, Tensor], meta: dict) -> tuple[Path, Path]:
    """Write ``tensors`` and ``meta`` (which carries its own format/kind) next to each other at ``path``
    (a stem, or either file's name); returns (safetensors path, json path)."""
    stem = _stem(path)
    stem.parent.mkdir(parents=True, exist_ok=True)
    st, js = stem.with_suffix(".safetensors"), stem.with_suffix(".json")
    tmp_st, tmp_js = st.with_name(st.name + ".tmp"), js.with_name(js.name + ".tmp")
    pair_id = uuid.uuid4().hex  # in both files: a kill between the two renames leaves a detectable mismatch
    text = json.dumps({**meta, PAIR_KEY: pair_id}, indent=2, sort_keys=True) + "\n"  # serialise before writing
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp_st),
                  metadata={PAIR_KEY: pair_id})
        os.chmod(tmp_st, 0o644)  # safetensors creates the file private; these are shareable weights
        tmp_js.write_text(text)
        for t in (tmp_st, tmp_js):
            fsync_file(t)
        tmp_st.replace(st)
        tmp_js.replace(js)
    except BaseException as err:
        for t in (tmp_st, tmp_js):
            t.unlink(missing_ok=True)
        failed = write_error(err, st) if isinstance(err, Exception) else err
        if failed is not err:  # a full disk or a read-only place: one line naming the file (gradleak.cli_support)
            raise failed from err
        raise
    fsync_dir(stem.parent)
    return st, js


def pair_files(path: str | Path, kind: str | None = None) -> tuple[Path, Path]:
    """The (``.safetensors``, ``.json``) files of a pair: ``path`` is the stem, either file, or — with ``kind`` —
    a directory holding ``<kind>.safetensors``."""
    stem = Path(path)
    if kind is not None and stem.is_dir():
        stem = stem / kind
    stem = _stem(stem)
    return stem.with_suffix(".safetensors"), stem.with_suffix(".json")


def readable_metas(files: Iterable[tuple[str, Path]]) -> Iterator[tuple[str, dict]]:
    """``(name, meta)`` for each ``(name, .safetensors file)`` that exists and whose JSON half parses; the
    others are passed over (a built-in that is not shipped, or a damaged sidecar, is no candidate). For
    choosing a built-in by its metadata without loading any tensors."""
    for name, path in files:
        if path.is_file():
            try:
                meta = json.loads(path.with_suffix(".json").read_text())
            except (OSError, ValueError):
                continue
            yield name, meta


def read_pair(path: str | Path, key: str, fmt: str | None, kind: str | None = None) -> tuple[dict[str, Tensor], dict]:
    """Tensors and metadata of a pair (``path``: the stem, either file, or — with ``kind`` — a directory
    holding ``<kind>.safetensors``). When given, the JSON's ``format`` must be ``fmt`` and its ``kind``
    ``kind``; every error is one line that names the config ``key``."""
    st, js = pair_files(path, kind)
    for f in (st, js):
        if not f.is_file():
            raise UserError(f"{key}: file not found: {str(f)!r}")
    # validated readers (gradleak.safefile): a truncated, corrupt or hostile file is one line naming the file
    # and the field, refused before any large allocation (gradleak.limits)
    meta = read_json(js, key)
    tensors, st_meta = read_safetensors(st, key)
    if PAIR_KEY in meta and PAIR_KEY in st_meta and meta[PAIR_KEY] != st_meta[PAIR_KEY]:
        raise UserError(f"{key}: {str(st)!r} and {str(js)!r} were written by different saves (an interrupted write?); "
                        "allowed: a matching pair")
    meta.pop(PAIR_KEY, None)
    if (fmt is not None and meta.get("format") != fmt) or (kind is not None and meta.get("kind") != kind):
        what = kind or fmt.removeprefix("gradleak-")
        raise UserError(f"{key}: {str(js)!r} is not a gradleak {what} file "
                        f"(format {meta.get('format')!r}, kind {meta.get('kind')!r})")
    return tensors, meta


def load_state(module: nn.Module, state: dict[str, Tensor], key: str, path: str | Path) -> None:
    """``module.load_state_dict(state)`` (strict) with a one-line error naming ``key`` and the file when the
    JSON's architecture and the tensors disagree (missing, unexpected or mis-shaped tensors)."""
    try:
        module.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError) as err:
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        detail = next((ln for ln in lines[1:] if ln), lines[0] if lines else type(err).__name__)
        raise UserError(f"{key}: the tensors in {str(path)!r} do not fit the architecture its JSON describes "
                        f"({detail[:200]})") from None


def build(cls, meta: dict, key: str, path: str | Path, field: str = "arch"):
    """``cls(**meta[field])`` with a one-line error naming ``key`` and the file when the JSON's architecture is
    missing or not what ``cls`` takes."""
    arch = meta.get(field)
    if not isinstance(arch, dict):
        raise UserError(f"{key}: {str(path)!r} has no {field!r} mapping in its JSON; allowed: a file written by gradleak")
    check_model_size(lambda: cls(**arch), f"{key}: {str(path)!r}")  # absurd widths: refused before allocating
    try:
        return cls(**arch)
    except UserError as err:
        raise UserError(f"{key}: {str(path)!r}: {err}") from None
    except (TypeError, ValueError, RuntimeError) as err:
        raise UserError(f"{key}: {str(path)!r} describes an architecture {cls.__name__} cannot build "
                        f"({type(err).__name__}: {(str(err).splitlines() or [''])[0][:200]})") from None
