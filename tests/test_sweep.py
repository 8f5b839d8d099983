"""gradleak sweep: grid/zip cells x batches, identical numbers on every executor, resume, bad input."""
import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from gradleak.errors import UserError
from gradleak.experiments.sweep import bootstrap_ci, load_sweep

TINY = """
base:
  data: {name: digits, channels: 1, resolution: 16}
  attack: {name: invertgrad, options: {iterations: 3}}
  metrics: {tagger: none}
axes:
  data.batch_size: [1, 2]
  defense: [[], [{name: topk, sparsity: 0.9}]]
batches: 2
"""


def _write(tmp_path, text, name="s.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def _numbers(out):
    """Every run's metrics.json numbers that must not depend on the executor (timings excluded)."""
    got = {}
    for m in sorted(out.glob("runs/*/*/metrics.json")):
        d = json.loads(m.read_text())
        got[str(m.relative_to(out))] = (d["psnr"]["per_image"], d["ssim"]["per_image"], d["restart_losses"],
                                        d["label_accuracy"])
    return got


def test_cells_grid_zip_and_seeds(tmp_path):
    p = _write(tmp_path, TINY.replace("batches: 2", "zip:\n  - {client.lr: [0.1, 0.2], seed: [5, 6]}\nbatches: 3"))
    sweep = load_sweep(p)
    cells = sweep.cells()
    assert len(cells) == 2 * 2 * 2  # grid 2 x 2, zip group of 2 aligned values
    assert {dict(c)["client.lr"]: dict(c)["seed"] for c in cells} == {0.1: 5, 0.2: 6}
    runs = sweep.runs()
    assert len(runs) == 8 * 3
    cfg = sweep.config(runs[4])  # cell 1, batch 1
    assert cfg.seed == dict(runs[4].values)["seed"] + 1
    assert cfg.data.batch_size == dict(runs[4].values)["data.batch_size"]


@pytest.mark.parametrize("text, needle", [
    (TINY.replace("data.batch_size:", "data.batch_sise:"), "data.batch_sise"),
    (TINY.replace("data.batch_size:", "dataa.batch_size:"), "dataa.batch_size"),
    (TINY.replace("[1, 2]", "[]"), "data.batch_size"),
    (TINY.replace("batches: 2", "batches: 0"), "batches"),
    (TINY.replace("batches: 2", "batchez: 2"), "batchez"),
    (TINY.replace("iterations: 3", "iterationz: 3"), "iterationz"),
    (TINY.replace("batches: 2", "zip:\n  - {client.lr: [0.1, 0.2], seed: [5]}\nbatches: 2"), "equal lengths"),
])
def test_bad_sweep_is_one_line_exit_2_nothing_written(tmp_path, cli, text, needle):
    out = tmp_path / "out"
    r = cli("sweep", _write(tmp_path, text), "--out", out, "--workers", "1")
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not out.exists()


def test_bootstrap_interval_contains_mean():
    lo, hi = bootstrap_ci([1.0, 2.0, 3.0, 4.0])
    assert lo < 2.5 < hi and lo >= 1.0 and hi <= 4.0
    assert bootstrap_ci([3.0]) == (3.0, 3.0)


def test_in_process_and_pool_give_identical_numbers_and_outputs(tmp_path, cli):
    p = _write(tmp_path, TINY)
    a, b = tmp_path / "a", tmp_path / "b"
    assert cli("sweep", p, "--out", a, "--workers", "1", "--no-progress").returncode == 0
    assert cli("sweep", p, "--out", b, "--workers", "2", "--no-progress").returncode == 0
    na, nb = _numbers(a), _numbers(b)
    assert len(na) == 8 and na == nb
    rows = list(csv.DictReader((a / "results.csv").open()))
    assert len(rows) == 8 and {"data.batch_size", "defense", "psnr", "ssim", "seconds"} <= set(rows[0])
    summary = list(csv.DictReader((a / "summary.csv").open()))
    assert len(summary) == 4 and all(r["runs"] == "2" for r in summary)
    assert float(summary[0]["psnr_lo"]) <= float(summary[0]["psnr_mean"]) <= float(summary[0]["psnr_hi"])
    assert (a / "sweep.html").is_file() and (a / "heatmap_psnr.png").is_file()
    assert (a / "plot_psnr_vs_data_batch_size.png").is_file()


def test_ray_gives_the_pool_numbers(tmp_path, cli):
    pytest.importorskip("ray")
    p = _write(tmp_path, TINY)
    a, b = tmp_path / "pool", tmp_path / "ray"
    assert cli("sweep", p, "--out", a, "--workers", "2", "--no-progress").returncode == 0
    r = cli("sweep", p, "--out", b, "--no-progress", "--ray")  # a local Ray instance
    assert r.returncode == 0, r.stderr
    assert _numbers(a) == _numbers(b) and len(_numbers(b)) == 8


def test_resume_after_kill_loses_only_runs_in_flight(tmp_path):
    p = _write(tmp_path, TINY.replace("iterations: 3", "iterations: 40"))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "gradleak.cli", "sweep", str(p), "--out", str(out), "--workers", "1", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.glob("runs/*/*/metrics.json"))) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = {m: m.stat().st_mtime_ns for m in out.glob("runs/*/*/metrics.json")}
    assert 2 <= len(done) < 8
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert all(m.stat().st_mtime_ns == t for m, t in done.items())  # finished runs were not redone
    fresh = tmp_path / "fresh"
    subprocess.run(cmd[:6] + [str(fresh)] + cmd[7:], check=True, capture_output=True)
    assert _numbers(out) == _numbers(fresh)


def test_load_sweep_refuses_missing_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_sweep(tmp_path / "nope.yaml")


@pytest.mark.parametrize("path", sorted((__import__("pathlib").Path(__file__).parents[1] / "examples" / "sweeps").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_example_sweeps_validate(path):
    """Every shipped sweep file parses and every cell's config and attack options validate (nothing runs)."""
    sweep = load_sweep(path)
    assert len(sweep.cells()) >= 4 and sweep.batches >= 2
