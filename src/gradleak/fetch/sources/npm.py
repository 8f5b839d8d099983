"""``npm:PKG@VERSION`` (scoped names too): the package tarball via ``npm pack`` (nothing installed; its
files sit under ``package/``)."""
from __future__ import annotations

import re
from pathlib import Path

from gradleak.errors import bad_value

from ..runner import Runner
from .base import SOURCES, SourceRef, single_new_file

NAME_RE = re.compile(r"^(@[a-z0-9][a-z0-9._-]*/)?[a-z0-9][a-z0-9._-]*$")


@SOURCES.register("npm")
class Npm:
    tool = "npm"

    @staticmethod
    def parse(body: str, pin: str | None, text: str) -> SourceRef:
        name, sep, version = body.rpartition("@")
        if not sep or not name or not NAME_RE.match(name) or not re.match(r"^[A-Za-z0-9.+-]+$", version):
            raise bad_value("source", text, "npm:PKG@VERSION (an exact version)")
        return SourceRef("npm", name, version, pin, text)

    @staticmethod
    def download(ref: SourceRef, into: Path, run: Runner) -> Path:
        run(["npm", "pack", f"{ref.name}@{ref.version}", "--silent"], into)
        stem = ref.name.lstrip("@").replace("/", "-")
        return single_new_file(into, f"{stem}-*.tgz", ref)
