"""Every benchmark script runs end to end at a tiny size (a few seconds each), so a refactor that breaks one is
caught here rather than an hour into a measurement. At these sizes acceptance checks may fail; what is asserted
is that each script prints its checks and that its exit code says exactly whether one failed (1 if a check
printed NO, else 0). speed.py and baselines.py have no small size (ResNet-18, fixed budgets) and are not run
here."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

CASES = {
    "gias_table": (["--batches", "1", "--iterations", "2", "--datasets", "digits", "--columns",
                    "GI-x,GI-z/w,GI-z/w+BN public,GI-z/w control", "--no-figure", "--victim-width", "6"],
                   ["table.md", "grid_digits.png"]),
    "rog_table": (["--batches", "1", "--rog-iterations", "2", "--invertgrad-iterations", "2", "--settings", "0,4"],
                  ["table.md"]),
    "rogs_table": (["--batches", "1", "--batch", "2", "--rogs-iterations", "2"], []),
    "giml_bench": (["--smoke"], ["table.md", "results.json", "psnr_vs_step.png", "multi_gradient.png"]),
    "defense_sweep": (["--iterations", "2", "--images", "1"], []),
    "label_recovery": (["--seeds", "1", "--cases", "lenet-fedsgd-b4,lenet-flower-config-b2"], []),
    "audit_bench": (["--parts", "c", "--halving-batches", "1", "--iterations", "8"], []),
    "gias_leaveout": (["--folds", "1", "--steps", "2", "--batches", "1", "--iterations", "2", "--victims", "relu"],
                      ["table.md", "grid_relu.png", "prior_fold1/prior.safetensors"]),
    "secagg": (["--clients", "1,2", "--batch", "1", "--iterations", "2"], ["table.md", "results.json", "secagg.png"]),
}


CHECKED = {"gias_table", "rog_table", "rogs_table", "giml_bench", "audit_bench"}  # scripts that print acceptance checks


@pytest.mark.parametrize("name", sorted(CASES))
def test_benchmark_runs_at_a_tiny_size(name, tmp_path):
    args, files = CASES[name]
    out = tmp_path / ("out.md" if name == "defense_sweep" else "out")
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), *args, "--workers", "1",
                        "--out", str(out)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    checks = [ln for ln in r.stdout.splitlines() if ln.startswith("- ") and re.search(r":\s*(yes|NO)\b", ln)]
    failed = [ln for ln in checks if re.search(r":\s*NO\b", ln)]
    if name in CHECKED:
        assert checks, f"{name} printed no acceptance checks"
    assert r.returncode == (1 if failed else 0), (r.returncode, failed, r.stderr[-2000:])
    assert out.exists()
    for f in files:
        assert (out / f).is_file(), f
    if name == "gias_table":
        assert "LeNet width 6 + BN" in (out / "table.md").read_text()


@pytest.mark.parametrize("args", [["--victim-width", "0"], ["--batches", "x"], ["--columns", "GI-q"],
                                  ["--datasets", "cifar"]])
def test_gias_table_bad_arguments_are_one_line(args, tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gias_table.py"), *args, "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("gias_table.py: error: argument ")
    assert "Traceback" not in r.stderr and not (tmp_path / "o").exists()


def test_audit_bench_refuses_a_peer_trace_that_is_not_its_json_in_one_line(tmp_path):
    bad = tmp_path / "trace.json"
    bad.write_text("[1,")
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "audit_bench.py"), "--parts", "d", "--peer-trace",
                        str(bad), "--out", str(tmp_path / "o.md")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("audit_bench.py: error: argument --peer-trace: ")
    assert "Traceback" not in r.stderr and not (tmp_path / "o.md").exists() and bad.read_text() == "[1,"


def test_gi_w_copies_benchmark_checks_and_prints():
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gi_w_copies.py"), "--repeats", "1"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "| 4 × 4 = 16 |" in r.stdout


def test_gias_table_victim_width_reaches_the_victim(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import gias_table

    model, x, obs = gias_table.capture("digits", 0.95, 0, width=6)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(c.out_channels == 6 for c in convs)
    assert x.shape == (4, 1, 32, 32) and obs.num_images == 4


def _photo_folder(tmp_path, n=3, res=32):
    from PIL import Image

    folder = tmp_path / "photos"
    folder.mkdir()
    g = torch.Generator().manual_seed(0)
    for i in range(n):
        arr = (torch.rand(res, res, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(arr).save(folder / f"im{i}.png")
    return folder


def test_defaults_vs_peer_runs_without_the_peer(tmp_path):
    """The gradleak side of benchmarks/defaults_vs_peer.py runs in CI (breaching is an optional extra)."""
    folder = _photo_folder(tmp_path)
    out = tmp_path / "rows.jsonl"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "defaults_vs_peer.py"), "run", "--images", str(folder),
                        "--victim", "lenet", "--batch", "1", "--iterations", "2", "--batches", "2",
                        "--methods", "gl-old,gl,gl:tv=0.1/lr=0.05", "--out", str(out)],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    import json

    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(row["index"], row["method"]) for row in rows] == [(0, "gl-old"), (0, "gl"), (0, "gl:tv=0.1/lr=0.05"),
                                                               (1, "gl-old"), (1, "gl"), (1, "gl:tv=0.1/lr=0.05")]
    assert all(0 < row["grey_psnr"] <= row["ref_psnr"] for row in rows)
    assert "| photos | lenet | 1 | fedsgd | none | 2 | gl-old | 0,1 |" in r.stdout  # defense column: none


def test_defaults_vs_peer_runs_the_peer_when_installed(tmp_path):
    import importlib.util

    if importlib.util.find_spec("breaching") is None or importlib.util.find_spec("hydra") is None:
        pytest.skip("the optional extra 'peer' (breaching 0.1.2) is not installed")
    # not imported here: under the CPU torch it needs benchmarks/_peer_shim.py first, which the script does
    folder = _photo_folder(tmp_path, n=2)
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "defaults_vs_peer.py"), "run", "--images", str(folder),
                        "--victim", "lenet", "--batch", "2", "--iterations", "2", "--batches", "1", "--methods", "peer",
                        "--protocol", "fedavg", "--steps", "2"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "| photos | lenet | 2 | fedavg τ=2 | none | 2 | peer | 0 |" in r.stdout


def test_defaults_vs_peer_tv_share_prints_a_share_per_weight(tmp_path):
    folder = _photo_folder(tmp_path, n=2)
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "defaults_vs_peer.py"), "tv-share", "--images",
                        str(folder), "--victims", "lenet", "--batch", "1", "--first", "0"],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 2 and all(ln.startswith("lenet B1 batch 0") for ln in lines)
    shares = [float(m) for m in re.findall(r"λ=[0-9.e-]+: ([0-9.]+)", lines[0])]
    assert len(shares) == 4 and all(0 <= v <= 1 for v in shares)
    assert shares == sorted(shares, reverse=True)  # a larger TV weight never leaves more pixels to the matching term
