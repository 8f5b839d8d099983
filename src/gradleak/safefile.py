"""Validated reading of the raw file formats users hand in: safetensors and JSON.

:func:`read_safetensors` parses and checks the safetensors header itself before the library sees the
file (safetensors' format: an 8-byte little-endian header length, a JSON header mapping each tensor name to
``dtype``, ``shape`` and ``data_offsets``, then the data), so a truncated, corrupt or hostile file is one
line naming the file and the field — never a ``SafetensorError`` traceback and never a large allocation:

* the header length must fit in the file and in :data:`gradleak.limits.HEADER_BYTES`;
* every tensor's dtype must be known, its shape a list of non-negative integers, and its byte range exactly
  ``prod(shape) × itemsize`` long, contiguous with the previous one and inside the file (a shape of 10¹²
  elements in a 1 kB file is refused here);
* the tensors' total size must be within :data:`gradleak.limits.FILE_BYTES`.

:func:`read_json` bounds the file size (:data:`gradleak.limits.TEXT_BYTES`), requires UTF-8 and reports a
syntax error with its line and column (and a nesting too deep for the parser as one line too).
"""
from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path

from gradleak import limits
from gradleak.errors import UserError

#: safetensors dtype name -> bytes per element (the ones torch can hold)
DTYPES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
          "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8, "C64": 8}


def _name(path: Path) -> str:
    return repr(str(path))


def safetensors_header(path: str | os.PathLike, key: str) -> dict:
    """The checked header of a safetensors file (see the module docstring); raises a one-line
    :class:`UserError` naming ``key``, the file and the field at fault."""
    path = Path(path)
    where = f"{key}: {_name(path)}"
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise UserError(f"{where} is truncated ({size} bytes; a safetensors file starts with an 8-byte "
                                "header length)")
            (n,) = struct.unpack("<Q", head)
            limits.HEADER_BYTES.check(n, f"{where} header length", " bytes")
            if n > size - 8:
                raise UserError(f"{where} is truncated or corrupt: its header length is {n:,} bytes but only "
                                f"{size - 8:,} follow")
            raw = f.read(n)
    except OSError as err:
        raise UserError(f"{where}: cannot read ({err.strerror or type(err).__name__})") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise UserError(f"{where}: corrupt safetensors header ({type(err).__name__})") from None
    if not isinstance(header, dict):
        raise UserError(f"{where}: corrupt safetensors header (a JSON {type(header).__name__}, not an object)")
    data_len = size - 8 - n
    entries = []
    for name, entry in header.items():
        if name == "__metadata__":
            if entry is not None and (not isinstance(entry, dict)
                                      or not all(isinstance(v, str) for v in entry.values())):
                raise UserError(f"{where}: header field '__metadata__' is not a mapping of strings")
            continue
        field = f"{where}: tensor {name!r}"
        if not isinstance(entry, dict):
            raise UserError(f"{field}: header entry is a {type(entry).__name__}; allowed: dtype, shape, data_offsets")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype not in DTYPES:
            raise UserError(f"{field}: dtype {dtype!r}; allowed: {', '.join(DTYPES)}")
        if not isinstance(shape, list) or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                                  for s in shape):
            raise UserError(f"{field}: shape {str(shape)[:80]}; allowed: a list of integers >= 0")
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offsets)
                or offsets[0] > offsets[1]):
            raise UserError(f"{field}: data_offsets {str(offsets)[:80]}; allowed: [begin, end] with 0 <= begin <= end")
        nbytes = math.prod(shape) * DTYPES[dtype]
        limits.FILE_BYTES.check(nbytes, f"{field} shape {shape}", " bytes")
        if offsets[1] - offsets[0] != nbytes:
            raise UserError(f"{field}: shape {shape} of {dtype} needs {nbytes:,} bytes but its data_offsets "
                            f"span {offsets[1] - offsets[0]:,}; the file is corrupt")
        entries.append((offsets[0], offsets[1], name))
    end = 0
    for begin, stop, name in sorted(entries):
        if begin != end:
            raise UserError(f"{where}: tensor {name!r}: data_offsets start at {begin:,}, expected {end:,} "
                            "(overlapping or gapped data); the file is corrupt")
        end = stop
    limits.FILE_BYTES.check(end, f"{where}: tensors", " bytes")
    if end != data_len:
        what = "truncated" if end > data_len else "corrupt (trailing bytes)"
        raise UserError(f"{where} is {what}: its header declares {end:,} bytes of tensor data, the file holds "
                        f"{data_len:,}")
    return header


def read_safetensors(path: str | os.PathLike, key: str) -> tuple[dict, dict[str, str]]:
    """All tensors (``name -> torch.Tensor``) and the ``__metadata__`` strings of a safetensors file,
    after :func:`safetensors_header` has checked it."""
    from safetensors import safe_open

    header = safetensors_header(path, key)
    try:
        tensors = {}
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            for name in f.keys():
                tensors[name] = f.get_tensor(name)
    except Exception as err:  # noqa: BLE001 - whatever the header check could not foresee is one line too
        raise UserError(f"{key}: {_name(Path(path))}: cannot read the tensors ({type(err).__name__}: "
                        f"{' '.join(str(err).split())[:160]})") from None
    del header
    return tensors, meta


def _read_text_bytes(path: str | os.PathLike, key: str) -> tuple[bytes, str]:
    """The bytes of a text file of at most :data:`gradleak.limits.TEXT_BYTES` (size checked before reading) and
    the ``key: file`` prefix of its error lines; a missing or unreadable file is one line."""
    path = Path(path)
    where = f"{key}: {_name(path)}"
    try:
        limits.TEXT_BYTES.check(path.stat().st_size, where, " bytes")
        return path.read_bytes(), where
    except FileNotFoundError:
        raise UserError(f"{key}: file not found: {_name(path)}") from None
    except OSError as err:
        raise UserError(f"{where}: cannot read ({err.strerror or type(err).__name__})") from None


def read_text(path: str | os.PathLike, key: str) -> str:
    """A UTF-8 text file (YAML, CSV) of at most :data:`gradleak.limits.TEXT_BYTES`; one-line errors name
    ``key`` and the file."""
    data, where = _read_text_bytes(path, key)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise UserError(f"{where} is not UTF-8 text (byte {err.start})") from None


def read_json(path: str | os.PathLike, key: str, *, mapping: bool = True):
    """The parsed JSON of ``path`` (a JSON object when ``mapping``); one-line errors name ``key`` and the file."""
    data, where = _read_text_bytes(path, key)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"{where} is not UTF-8 text (byte {err.start})") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"{where} is not valid JSON: {err.msg} at line {err.lineno} column {err.colno}") from None
    except RecursionError:
        raise UserError(f"{where} is not valid JSON: nested too deeply") from None
    if mapping and not isinstance(obj, dict):
        raise UserError(f"{where} holds a JSON {type(obj).__name__}; allowed: a JSON object")
    return obj


def open_image(path: str | os.PathLike, key: str):
    """Open an image with Pillow and check its declared size before any pixel is decoded.

    Pillow's own decompression-bomb guard only *warns* between ``MAX_IMAGE_PIXELS`` and twice that, and its
    limit is a process-wide global. ``Image.open`` reads the header only; right after it, width × height is
    compared with :data:`gradleak.limits.IMAGE_PIXELS` (``GRADLEAK_MAX_IMAGE_PIXELS`` when set, else Pillow's
    ``Image.MAX_IMAGE_PIXELS`` as this process has it, by default 89,478,485), so the refusal names the image, its size and the limit and comes before
    decoding (Pillow's check is switched off for that one ``open``: ours replaces it, with an error instead of
    a warning). Returns the lazy ``PIL.Image``; the caller closes it (``with open_image(...) as img``)."""
    from PIL import Image

    path = Path(path)
    old = Image.MAX_IMAGE_PIXELS
    # the environment variable when set; else Pillow's limit as the process has it (a program that lowered
    # Image.MAX_IMAGE_PIXELS keeps its choice), else Pillow's default
    limit = limits.IMAGE_PIXELS.get() if os.environ.get(limits.IMAGE_PIXELS.env) else int(old or limits.IMAGE_PIXELS.default)
    try:
        Image.MAX_IMAGE_PIXELS = None  # our check below, with the size in the message
        img = Image.open(path)
    except (OSError, ValueError, SyntaxError) as err:
        raise UserError(f"{key}: cannot read image {_name(path)} ({' '.join(str(err).split())[:200]}); "
                        "allowed: images Pillow can open") from None
    finally:
        Image.MAX_IMAGE_PIXELS = old
    w, h = img.size
    if w * h > limit:
        img.close()
        raise UserError(f"{key}: image {_name(path)} declares {w:,} x {h:,} = {w * h:,} pixels; allowed: at most "
                        f"{limit:,} ({limits.IMAGE_PIXELS.what}; raise it with {limits.IMAGE_PIXELS.env})")
    return img
