"""Start-up cost (issue 14): help and ``import gradleak`` do not import torch; the lazy exports resolve."""
import subprocess
import sys

import pytest

COMMANDS = ["", "demo", "run", "list", "train-prior", "train-enhancer", "train-autoencoder", "train-tagger",
            "tradeoff", "giml-tasks", "giml"]

PROBE = """
import sys
sys.argv = ["gradleak", *{args!r}]
from gradleak.cli import main
try:
    main()
except SystemExit as e:
    assert e.code in (0, None), e.code
heavy = sorted(m for m in ("torch", "numpy", "rich", "matplotlib") if m in sys.modules)
print("HEAVY=" + ",".join(heavy))
"""


def _heavy(args: list[str]) -> tuple[str, str]:
    r = subprocess.run([sys.executable, "-c", PROBE.format(args=args)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout, r.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("cmd", [COMMANDS[0], "run", "giml"])
def test_help_does_not_import_torch(cmd):
    out, heavy = _heavy([cmd, "--help"] if cmd else ["--help"])
    assert "Usage:" in out and "--help" in out
    assert heavy == "HEAVY=", heavy


def test_every_subcommand_help_is_torch_free():
    """All commands' --help in one process (the command list comes from the app itself)."""
    code = ("import sys, io, contextlib\nfrom gradleak.cli import app, main\nimport typer.main\n"
            "names = sorted(typer.main.get_command(app).commands)\n"
            "for name in names:\n"
            "    sys.argv = ['gradleak', name, '--help']\n"
            "    buf = io.StringIO()\n"
            "    with contextlib.redirect_stdout(buf):\n"
            "        try:\n            main()\n        except SystemExit as e:\n            assert e.code in (0, None), (name, e.code)\n"
            "    assert 'Usage:' in buf.getvalue(), name\n"
            "print(len(names), 'torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    count, torch_loaded = r.stdout.split()
    assert int(count) >= len(COMMANDS) - 1 and torch_loaded == "False"


def test_import_gradleak_is_lazy_and_exports_resolve():
    code = ("import sys, gradleak\nassert 'torch' not in sys.modules\n"
            "missing = [n for n in gradleak.__all__ if not hasattr(gradleak, n)]\n"
            "assert not missing, missing\nassert 'torch' in sys.modules\n"
            "from gradleak import InvertGrad\nfrom gradleak.attacks.presets import InvertGrad as I2\n"
            "assert InvertGrad is I2\nprint('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_unknown_attribute_is_an_attribute_error():
    import gradleak

    with pytest.raises(AttributeError, match="no_such_name"):
        gradleak.no_such_name  # noqa: B018
