"""benchmarks/speed.py runs end to end at a tiny size and refuses bad arguments in one line (issue 14)."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEED = str(ROOT / "benchmarks" / "speed.py")


def test_speed_benchmark_prints_every_backend_and_ratio():
    r = subprocess.run([sys.executable, SPEED, "--cases", "lenet-b1-fedsgd", "--backends", "loop,vmap,auto",
                        "--iterations", "1", "--rounds", "1", "--planned", "100"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "1 torch thread(s)" in r.stdout
    row = next(line for line in r.stdout.splitlines() if line.startswith("| lenet-b1-fedsgd |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert len(cells) == 2 + 3 and float(cells[1]) > 0  # case, textbook, loop, vmap, auto
    for cell in cells[2:]:
        assert "×tb" in cell and "·" in cell
    assert "(loop/" in cells[4] or "(vmap/" in cells[4]  # what auto picked


def test_speed_benchmark_bad_arguments_are_one_line():
    for args in (["--backends", "jit"], ["--cases", "vgg"], ["--rounds", "0"]):
        r = subprocess.run([sys.executable, SPEED, *args], capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and "Traceback" not in r.stderr
        assert r.stderr.strip().splitlines()[-1].startswith("speed.py: error: --")
