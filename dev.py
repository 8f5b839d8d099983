#!/usr/bin/env python3
"""Set-up and entry point used by the README's Quick start and by CI.

    python3 dev.py demo   # create/reuse .venv, install gradleak, run the built-in demo audit
    python3 dev.py test   # same, plus test dependencies, then run the test suite

torch is installed first from ``constraints.txt`` (pinned CPU-tested version) so that the open
``torch>=2.3`` range in pyproject.toml never pulls a newer CUDA build. Installs are skipped when
pyproject.toml and constraints.txt have not changed since the last successful install.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / "python"


def _sh(*cmd: str) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def _install(extra: str) -> None:
    if not PY.exists():
        venv.create(VENV, with_pip=True)
    digest = hashlib.sha256(
        (ROOT / "pyproject.toml").read_bytes() + (ROOT / "constraints.txt").read_bytes() + extra.encode()
    ).hexdigest()
    stamp = VENV / ".gradleak-installed"
    if stamp.exists() and stamp.read_text() == digest:
        return
    pip = [str(PY), "-m", "pip", "install", "--disable-pip-version-check", "-q", "-c", "constraints.txt"]
    _sh(*pip, "torch")
    _sh(*pip, "-e", f".[{extra}]" if extra else ".")
    stamp.write_text(digest)


def main(argv: list[str]) -> int:
    what = argv[0] if argv else "demo"
    if what == "demo":
        _install("")
        out = argv[1] if len(argv) > 1 else "runs/demo"
        _sh(str(BIN / "gradleak"), "demo", "--out", out)
    elif what == "test":
        _install("test")
        _sh(str(PY), "-m", "pytest", "-q", *argv[1:])
    else:
        print(f"dev.py: unknown command {what!r}; allowed: demo, test", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except subprocess.CalledProcessError as err:
        sys.exit(err.returncode)
