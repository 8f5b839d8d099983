"""Full disks and read-only places (issue 25, item 4): the previous complete files stay, nothing is half-written,
one line says which file could not be written (exit 74).

Injected write errors (``os.fsync`` / safetensors failing with ENOSPC, as a full disk reports them) run
everywhere; the real thing — a 160 KiB tmpfs that fills up, then is remounted read-only — runs in a private
mount namespace (``unshare --user --map-root-user --mount``) and is skipped where that is not allowed.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

SRC = str(Path(__file__).resolve().parents[1] / "src")


def failing(code: int):
    def fail(*_a, **_k):
        raise OSError(code, os.strerror(code))
    return fail


def leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.rglob("*.tmp"))


def test_summary_json_and_csv_keep_previous_on_enospc(tmp_path, monkeypatch):
    from gradleak.atomic import atomic_write_json
    from gradleak.experiments.sweep import _write_csv

    atomic_write_json(tmp_path / "summary.json", {"runs": 1})
    _write_csv(tmp_path / "results.csv", [{"cell": "c000", "psnr": 20.0}])
    before = (tmp_path / "results.csv").read_text()
    monkeypatch.setattr(os, "fsync", failing(errno.ENOSPC))
    with pytest.raises(OSError) as info:
        atomic_write_json(tmp_path / "summary.json", {"runs": 2})
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(tmp_path / "summary.json")
    with pytest.raises(OSError) as info:
        _write_csv(tmp_path / "results.csv", [{"cell": "c000", "psnr": 21.0}, {"cell": "c001", "psnr": 5.0}])
    assert info.value.filename == str(tmp_path / "results.csv")
    monkeypatch.undo()
    assert json.loads((tmp_path / "summary.json").read_text()) == {"runs": 1}
    assert (tmp_path / "results.csv").read_text() == before
    assert leftovers(tmp_path) == []


def _state(out: Path):
    from gradleak.trainstate import TrainState

    net = nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters())
    return TrainState(out, "train-tagger", {"lr": 1.0}, {"net": net}, {"opt": opt}, every=1), net


def test_checkpoint_keeps_previous_when_the_disk_fills(tmp_path, monkeypatch):
    import gradleak.filepair as fp

    s, net = _state(tmp_path)
    s.save(1, [0.5])
    saved = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        net.weight.add_(1.0)
    real = fp.save_file

    def half_then_full(tensors, filename, metadata=None):  # what safetensors reports on a full disk
        Path(filename).write_bytes(b"\x00" * 17)
        raise RuntimeError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "
                           "\"No space left on device\" }) (os error 28)")

    monkeypatch.setattr(fp, "save_file", half_then_full)
    with pytest.raises(OSError) as info:
        s.save(2, [0.5, 0.4])
    assert info.value.errno == errno.ENOSPC and info.value.filename.endswith("checkpoint.safetensors")
    monkeypatch.setattr(fp, "save_file", real)
    assert leftovers(tmp_path) == []
    fresh, net2 = _state(tmp_path)
    assert fresh.resume() == (1, [0.5])  # the previous checkpoint, whole
    assert all(torch.equal(net2.state_dict()[k], v) for k, v in saved.items())


def _capture_inputs(d: Path) -> tuple[Path, Path]:
    from gradleak.models import build_model
    from safetensors.torch import save_file

    d.mkdir(parents=True, exist_ok=True)
    (d / "p.yaml").write_text("model: {name: mlp, num_classes: 2, channels: 1, resolution: 4, "
                              "options: {width: 3, depth: 1}}\nnum_images: 1\nclient: {protocol: fedsgd}\n")
    m = build_model("mlp", 2, 1, 4, width=3, depth=1)
    save_file({n: torch.randn_like(p) for n, p in m.named_parameters()}, str(d / "u.safetensors"))
    return d / "p.yaml", d / "u.safetensors"


def test_cli_full_disk_is_one_line_exit_74(cli, tmp_path, monkeypatch):
    proto, upd = _capture_inputs(tmp_path / "in")
    out = tmp_path / "out"
    monkeypatch.setattr(os, "fsync", failing(errno.ENOSPC))
    r = cli("capture", "--protocol", proto, "--update", upd, "--out", out)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 74 and len(lines) == 1, r.stderr
    assert lines[0].startswith(f"error: cannot write '{out / 'observation.safetensors'}': No space left on device")
    assert not out.exists()  # the pair's temporary files removed, the directory made for it removed


CHILD = textwrap.dedent(r"""
    import contextlib, errno, io, json, os, subprocess, sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[4])
    import torch
    from test_disk_faults import _state, leftovers
    from gradleak.atomic import atomic_write_json
    mnt, proto, upd = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    res = {}
    s, net = _state(mnt / "ckpt")
    s.save(1, [0.5])
    atomic_write_json(mnt / "summary.json", {"runs": 1})
    with open(mnt / "filler", "wb", buffering=0) as f:  # fill the file system
        try:
            while True:
                f.write(b"\0" * 512)
        except OSError as err:
            res["fill"] = err.errno
    with torch.no_grad():
        net.weight.add_(1.0)
    try:
        s.save(2, [0.5, 0.4]); res["ckpt"] = "written"
    except OSError as err:
        res["ckpt"] = [err.errno, err.filename]
    try:
        atomic_write_json(mnt / "summary.json", {"runs": 2, "pad": "x" * 65536}); res["summary"] = "written"
    except OSError as err:
        res["summary"] = [err.errno, err.filename]
    res["summary_after"] = json.loads((mnt / "summary.json").read_text())
    res["resume"] = list(_state(mnt / "ckpt")[0].resume())
    res["tmp"] = leftovers(mnt)
    from gradleak.cli import main
    def cli(*args):
        sys.argv = ["gradleak", *map(str, args)]
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            try:
                main(); code = 0
            except SystemExit as e:
                code = e.code
        return [code, err.getvalue()]
    (mnt / "out").mkdir(exist_ok=True)
    res["cli_full"] = cli("capture", "--protocol", proto, "--update", upd, "--out", mnt / "out")
    res["out_full"] = sorted(p.name for p in (mnt / "out").iterdir())
    os.unlink(mnt / "filler")
    subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
    try:
        atomic_write_json(mnt / "summary.json", {"runs": 3}); res["ro"] = "written"
    except OSError as err:
        res["ro"] = [err.errno, err.filename]
    res["cli_ro"] = cli("capture", "--protocol", proto, "--update", upd, "--out", mnt / "out2")
    res["summary_ro"] = json.loads((mnt / "summary.json").read_text())
    print("RESULT " + json.dumps(res))
""")


def test_real_small_filesystem_fills_then_turns_read_only(tmp_path):
    if not shutil.which("unshare") or sys.platform != "linux":
        pytest.skip("needs util-linux unshare on Linux")
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                            f"mount -t tmpfs -o size=64k none {tmp_path}"], capture_output=True, text=True)
    if probe.returncode:
        pytest.skip(f"no private mount namespace here: {probe.stderr.strip()[:100]}")
    proto, upd = _capture_inputs(tmp_path / "in")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    tests = str(Path(__file__).resolve().parent)
    cmd = (f"mount -t tmpfs -o size=160k none {mnt} && "
           f"PYTHONPATH={SRC}:{tests} {sys.executable} {script} {mnt} {proto} {upd} {tests}")
    r = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", cmd],
                       capture_output=True, text=True, timeout=300)
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line, (r.returncode, r.stdout[-2000:], r.stderr[-3000:])
    res = json.loads(line[len("RESULT "):])
    assert res["fill"] == errno.ENOSPC
    assert res["ckpt"][0] == errno.ENOSPC and res["ckpt"][1].endswith("checkpoint.safetensors"), res
    assert res["summary"][0] == errno.ENOSPC and res["summary_after"] == {"runs": 1}, res
    assert res["resume"] == [1, [0.5]] and res["tmp"] == [], res
    code, err = res["cli_full"]
    assert code == 74 and err.count("\n") == 1 and "No space left on device" in err, res["cli_full"]
    assert res["out_full"] == [], res  # no half-written observation, no lock file left
    assert res["ro"][0] == errno.EROFS and res["summary_ro"] == {"runs": 1}, res
    code, err = res["cli_ro"]  # refused when --out is checked, before any work
    assert code == 2 and err.count("\n") == 1 and "Read-only file system" in err, res["cli_ro"]
