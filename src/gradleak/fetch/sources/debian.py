"""``debian:PKG[=VERSION]``: a Debian binary package via ``apt-get download`` (no root, nothing installed);
the files come out of its ``data.tar`` (see :mod:`gradleak.fetch.archives`)."""
from __future__ import annotations

import re
from pathlib import Path

from gradleak.errors import bad_value

from ..runner import Runner
from .base import SOURCES, SourceRef, single_new_file

PKG_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")


@SOURCES.register("debian")
class Debian:
    tool = "apt-get"

    @staticmethod
    def parse(body: str, pin: str | None, text: str) -> SourceRef:
        name, _, version = body.partition("=")
        if not PKG_RE.match(name) or (version and not re.match(r"^[A-Za-z0-9.+~:-]+$", version)):
            raise bad_value("source", text, "debian:PKG or debian:PKG=VERSION (Debian package names)")
        return SourceRef("debian", name, version or None, pin, text)

    @staticmethod
    def download(ref: SourceRef, into: Path, run: Runner) -> Path:
        want = f"{ref.name}={ref.version}" if ref.version else ref.name
        run(["apt-get", "download", want], into)
        return single_new_file(into, f"{ref.name}_*.deb", ref)
