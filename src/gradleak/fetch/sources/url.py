"""``url:URL#sha256=HEX``: any file over the normal network (https, or file:// for local copies); the
sha256 pin is required, as nothing else vouches for what a URL serves."""
from __future__ import annotations

import shutil
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlparse

from gradleak.errors import bad_value

from ..runner import FetchError, Runner
from .base import SOURCES, SourceRef


@SOURCES.register("url")
class Url:
    tool = None

    @staticmethod
    def parse(body: str, pin: str | None, text: str) -> SourceRef:
        parsed = urlparse(body)
        if parsed.scheme not in ("https", "http", "file") or pin is None:
            raise bad_value("source", text, "url:https://...#sha256=<64 hex> (or file://; the sha256 is required)")
        return SourceRef("url", body, None, pin, text)

    @staticmethod
    def download(ref: SourceRef, into: Path, run: Runner) -> Path:  # noqa: ARG004 - no external tool
        name = PurePosixPath(unquote(urlparse(ref.name).path)).name or "download"
        target = into / name
        part = into / f".{name}.part"
        try:
            with urllib.request.urlopen(ref.name, timeout=60) as resp, open(part, "wb") as f:
                shutil.copyfileobj(resp, f)
        except (urllib.error.URLError, OSError, ValueError) as err:
            part.unlink(missing_ok=True)
            reason = getattr(err, "reason", err)
            raise FetchError(f"fetch {ref.text}: cannot download ({' '.join(str(reason).split())}); "
                             f"allowed: a reachable URL") from None
        part.replace(target)
        return target
