"""Atomic file writes: an interrupted run never leaves a half-written file behind.

Every writer renders into a temporary file in the destination's directory, flushes and fsyncs it,
then ``os.replace``-s it over the destination (atomic on POSIX and Windows within one filesystem).
If rendering or serialisation raises, the temporary file is removed and an existing destination
is left untouched.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable

__all__ = [
    "atomic_write",
    "write_error",
    "fsync_file",
    "fsync_dir",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_save_figure",
    "atomic_save_image",
    "to_jsonable",
]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_file(path: str | os.PathLike) -> None:
    """Flush a file written by another library (e.g. ``safetensors.save_file``) to disk before it is renamed
    into place, so a power loss cannot leave an empty or partial file under the final name."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(directory: str | os.PathLike) -> None:
    """Persist a rename itself (best effort; not possible on every platform)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(f)`` on a binary temp file next to ``path``, then move it into place.

    Creates missing parent directories. Returns ``path`` as a :class:`Path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; use the usual permissions
        os.replace(tmp, path)
    except BaseException as err:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(err, OSError):
            raise write_error(err, path) from err
        raise
    fsync_dir(path.parent)
    return path


def write_error(err: BaseException, path: str | os.PathLike) -> BaseException:
    """The failure of a write as an :class:`OSError` that names the *destination* (not the temporary file) and
    keeps the errno (``ENOSPC``, ``EROFS``, ``EDQUOT``, ``EFBIG``, ``EIO``), so the CLI can say in one line
    which file could not be written and why. Libraries that hide the errno in their message (safetensors:
    ``... (os error 28)``) are recognised too; anything else is returned unchanged."""
    import re

    code = getattr(err, "errno", None)
    if code is None:
        m = re.search(r"os error (\d+)", str(err))
        code = int(m.group(1)) if m else None
    if code is None:
        return err
    return OSError(code, os.strerror(code), str(path))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    data = text.encode(encoding)  # encode first: an encoding error must not touch the file system
    return atomic_write_bytes(path, data)


def to_jsonable(obj: Any) -> Any:
    """``json.dumps`` ``default=`` hook for numpy/torch scalars and arrays, paths and sets.

    Raises :class:`TypeError` for anything else, like ``json`` itself."""
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=repr)
    mod = type(obj).__module__.split(".")[0]
    if mod in ("numpy", "torch") and hasattr(obj, "tolist"):
        return obj.tolist()
    if mod == "numpy" and hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def _finite(obj: Any) -> Any:
    """Replace NaN/inf floats by None so the output is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2, strict: bool = False) -> Path:
    """Serialise ``obj`` (fully, before touching the disk) and write it atomically.

    numpy/torch values are converted via :func:`to_jsonable`; other unknown types raise
    :class:`TypeError` and leave any existing file intact. With ``strict=True`` non-finite
    floats are written as ``null`` (strict JSON) instead of ``NaN``/``Infinity``."""
    if strict:
        obj = _finite(json.loads(json.dumps(obj, default=to_jsonable)))
    text = json.dumps(obj, indent=indent, default=to_jsonable, allow_nan=not strict) + "\n"
    return atomic_write_text(path, text)


def _suffix_format(path: Path, default: str) -> str:
    suffix = path.suffix.lower().lstrip(".")
    return suffix or default


def atomic_save_figure(fig, path: str | os.PathLike, **savefig_kwargs) -> Path:
    """``fig.savefig`` (a :class:`matplotlib.figure.Figure`) into ``path`` atomically.

    The format follows the suffix (``.png`` when there is none) unless ``format=`` is given."""
    path = Path(path)
    savefig_kwargs.setdefault("format", _suffix_format(path, "png"))
    return atomic_write(path, lambda f: fig.savefig(f, **savefig_kwargs))


def atomic_save_image(image, path: str | os.PathLike, format: str | None = None, **save_kwargs) -> Path:
    """``PIL.Image.save`` into ``path`` atomically; the format follows the suffix unless given."""
    from PIL import Image

    path = Path(path)
    if format is None:
        format = Image.registered_extensions().get(path.suffix.lower(), "PNG")
    return atomic_write(path, lambda f: image.save(f, format=format, **save_kwargs))
