"""A source: where one archive comes from (``debian:PKG=VER``, ``pypi:PKG==VER``, ``npm:PKG@VER``,
``url:URL``), each optionally pinned with ``#sha256=<64 hex>`` (required for ``url:``).

Every kind is one small module registered in :data:`SOURCES` with ``@SOURCES.register(kind)``; a kind
class has ``parse(body) -> SourceRef`` and ``download(ref, into, run) -> Path`` (the archive, in the
empty-or-cached directory ``into`` reserved for that source).
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from gradleak.errors import bad_value
from gradleak.registry import Registry

from ..runner import FetchError

SOURCES = Registry("source kind")
SHA_RE = re.compile(r"^[0-9a-f]{64}$")
FORMS = "debian:PKG[=VER], pypi:PKG==VER, npm:PKG@VER or url:URL#sha256=HEX"


@dataclass(frozen=True)
class SourceRef:
    """One parsed source. ``key`` names its download directory."""

    kind: str
    name: str
    version: str | None
    sha256: str | None
    text: str

    @property
    def key(self) -> str:
        raw = f"{self.name}-{self.version}" if self.version else self.name
        return re.sub(r"[^A-Za-z0-9._+-]+", "_", raw).strip("_")[:120] or "source"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def split_pin(text: str) -> tuple[str, str | None]:
    """``body#sha256=HEX`` -> (body, hex); a malformed pin is a user error."""
    if "#" not in text:
        return text, None
    body, frag = text.rsplit("#", 1)
    if not frag.startswith("sha256=") or not SHA_RE.match(frag[7:].lower()):
        raise bad_value("source", text, "a '#sha256=<64 hex digits>' suffix")
    return body, frag[7:].lower()


def parse_source(text: str):
    """``(kind class, SourceRef)`` for a source string; a user error for an unknown form."""
    if not isinstance(text, str) or ":" not in text:
        raise bad_value("source", text, FORMS)
    kind, rest = text.split(":", 1)
    handler = SOURCES.get(kind)
    if handler is None:
        raise bad_value("source", text, FORMS)
    body, pin = split_pin(rest)
    return handler, handler.parse(body, pin, text)


def verify(path: Path, ref: SourceRef) -> str:
    """sha256 of ``path``; a one-line :class:`FetchError` (and the file removed) when it is not the pin."""
    digest = sha256_file(path)
    if ref.sha256 is not None and digest != ref.sha256:
        path.unlink(missing_ok=True)
        raise FetchError(f"fetch {ref.text}: checksum mismatch: got sha256 {digest}; allowed: sha256 {ref.sha256}")
    return digest


def single_new_file(into: Path, pattern: str, ref: SourceRef) -> Path:
    """The archive a tool left in ``into`` (matching ``pattern``)."""
    found = sorted(p for p in into.glob(pattern) if p.is_file() and not p.name.startswith("."))
    if not found:
        raise FetchError(f"fetch {ref.text}: the tool reported success but wrote no {pattern}; "
                         f"allowed: a registry that serves this package")
    return found[-1]
