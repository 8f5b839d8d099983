import sys
from dataclasses import dataclass

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Tests never see the user's ~/.cache/gradleak (fetched datasets, LPIPS weights): an empty cache."""
    import os

    old = os.environ.get("GRADLEAK_CACHE")
    os.environ["GRADLEAK_CACHE"] = str(tmp_path_factory.mktemp("gradleak-cache"))
    yield
    if old is None:
        os.environ.pop("GRADLEAK_CACHE", None)
    else:
        os.environ["GRADLEAK_CACHE"] = old


@pytest.fixture(autouse=True)
def _default_sigint_handler():
    """Each test starts from Python's own SIGINT handler (KeyboardInterrupt) and leaves it as it was, whatever a
    library used by an earlier test in this process installed: Flower's entry points register their own and do
    not restore the previous ones, and a SIGINT left ignored (SIG_IGN) would be inherited by every subprocess a
    later test starts — a Ctrl-C test's command then never sees its Ctrl-C."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(monkeypatch, capsys):
    """Run ``gradleak ARGS`` in-process through the real entry point (exit codes, one-line errors)."""
    from gradleak.cli import main

    def run(*args):
        monkeypatch.setattr(sys, "argv", ["gradleak", *map(str, args)])
        capsys.readouterr()
        try:
            main()
            code = 0
        except SystemExit as e:
            code = e.code
        out = capsys.readouterr()
        return CliResult(code, out.out, out.err)

    return run
