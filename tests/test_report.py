"""gradleak.report: atomic writes, image grids, plots, trace CSV, HTML report, Markdown tables."""
from __future__ import annotations

import base64
import csv
import json
import math

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from gradleak.report import (
    atomic_save_figure,
    atomic_save_image,
    atomic_write,
    atomic_write_json,
    atomic_write_text,
    image_rows,
    line_plot,
    loss_plot,
    reconstruction_grid,
    render_report,
    scatter_plot,
    sweep_table,
    write_report,
    write_trace_csv,
)
from gradleak.imagegrid import PAD
from gradleak.report.plots import _choose_yscale

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _leftovers(directory):
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


# --------------------------------------------------------------------------------------------- io


def test_atomic_write_text_and_json_roundtrip(tmp_path):
    p = atomic_write_text(tmp_path / "sub" / "a.txt", "héllo\n")  # parent created
    assert p.read_text(encoding="utf-8") == "héllo\n"
    obj = {"a": 1, "b": [1.5, None], "t": torch.tensor([1.0, 2.0]), "n": np.float32(0.5), "i": np.int64(3)}
    atomic_write_json(tmp_path / "m.json", obj)
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": 1, "b": [1.5, None], "t": [1.0, 2.0],
                                                             "n": 0.5, "i": 3}
    atomic_write_json(tmp_path / "s.json", {"x": float("nan"), "y": [float("inf"), 1.0]}, strict=True)
    assert json.loads((tmp_path / "s.json").read_text()) == {"x": None, "y": [None, 1.0]}
    assert _leftovers(tmp_path) == [] and _leftovers(tmp_path / "sub") == []


def test_atomic_json_unserialisable_keeps_old_file(tmp_path):
    target = tmp_path / "metrics.json"
    atomic_write_json(target, {"ok": True})
    before = target.read_bytes()
    with pytest.raises(TypeError):
        atomic_write_json(target, {"bad": object()})
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]
    # also when nothing existed before: no file at all, no temp file
    with pytest.raises(TypeError):
        atomic_write_json(tmp_path / "new.json", [1, {2, object()}])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_atomic_write_failure_midway_keeps_old_file(tmp_path):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old contents")

    def half_then_fail(f):
        f.write(b"half of the new")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        atomic_write(target, half_then_fail)
    assert target.read_bytes() == b"old contents"
    assert _leftovers(tmp_path) == []
    with pytest.raises(UnicodeEncodeError):
        atomic_write_text(target, "\udcff")  # lone surrogate: fails before touching the disk
    assert target.read_bytes() == b"old contents"


def test_atomic_write_replaces_and_has_normal_permissions(tmp_path):
    target = tmp_path / "x.txt"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert target.stat().st_mode & 0o044  # readable by group/others (mkstemp's 0600 undone)


def test_atomic_save_figure_and_image(tmp_path):
    fig = Figure(figsize=(2, 2), dpi=50)
    fig.add_subplot().plot([0, 1], [1, 0])
    atomic_save_figure(fig, tmp_path / "f.png")
    assert (tmp_path / "f.png").read_bytes()[:8] == PNG_MAGIC
    with Image.open(tmp_path / "f.png") as im:
        assert im.size == (100, 100)
    atomic_save_figure(fig, tmp_path / "f.svg")
    assert b"<svg" in (tmp_path / "f.svg").read_bytes()[:500]
    img = Image.new("RGB", (7, 5), (255, 0, 0))
    atomic_save_image(img, tmp_path / "i.png")
    with Image.open(tmp_path / "i.png") as im:
        assert im.format == "PNG" and im.size == (7, 5) and im.getpixel((3, 2)) == (255, 0, 0)
    assert _leftovers(tmp_path) == []


def test_atomic_save_figure_failure_keeps_old_file(tmp_path):
    target = tmp_path / "plot.png"
    target.write_bytes(b"previous plot")
    fig = Figure()
    fig.add_subplot().plot([0, 1], [0, 1])
    with pytest.raises(ValueError):
        atomic_save_figure(fig, target, format="not-a-format")
    assert target.read_bytes() == b"previous plot"
    assert _leftovers(tmp_path) == []


# ------------------------------------------------------------------------------------------- grid


def _solid(n, colour, h=6, w=5):
    return torch.tensor(colour, dtype=torch.float32).view(1, 3, 1, 1).expand(n, 3, h, w).clone()


def test_reconstruction_grid_layout_and_pixels(tmp_path):
    s, h, w = 4, 6, 5
    orig, rec = _solid(3, (1.0, 0.0, 0.0)), _solid(3, (0.0, 0.0, 1.0))
    im = reconstruction_grid(orig, rec, None, tmp_path / "g.png", scale=s)
    with Image.open(tmp_path / "g.png") as saved:
        assert saved.format == "PNG" and saved.size == im.size
    W, H = im.size
    cell_w, cell_h = w * s, h * s
    assert H == PAD + 2 * (cell_h + PAD)  # no captions: two lines of upscaled images
    label_col = W - PAD - 3 * (cell_w + PAD)
    assert label_col > PAD  # room for the "original"/"reconstruction" labels
    # one more image adds exactly one column
    assert reconstruction_grid(_solid(4, (1, 0, 0)), _solid(4, (0, 0, 1)), None, None, scale=s).size == (
        W + cell_w + PAD, H)
    # last column: red original on top, blue reconstruction below, white padding in between
    x = W - PAD - cell_w
    assert im.getpixel((x + 1, PAD + 1)) == (255, 0, 0)
    assert im.getpixel((x + cell_w - 1, PAD + cell_h - 1)) == (255, 0, 0)
    assert im.getpixel((x + 1, PAD + cell_h + PAD + 1)) == (0, 0, 255)
    assert im.getpixel((x + 1, PAD + cell_h + 1)) == (255, 255, 255)
    assert im.getpixel((x - 1, PAD + 1)) == (255, 255, 255)


def test_reconstruction_grid_captions_and_wrapping(tmp_path):
    s, n = 5, 8  # 40 px cells: wider than the captions
    orig, rec = torch.rand(8, 1, n, n), torch.rand(8, 1, n, n)
    plain = reconstruction_grid(orig, rec, None, None, scale=s)
    caps = [f"{20 + i:.1f} dB" for i in range(8)]
    cap = reconstruction_grid(orig, rec, caps, tmp_path / "c.png", scale=s)
    assert cap.size[0] == plain.size[0]
    # a caption wider than the images widens every column instead of overlapping its neighbours
    wide = reconstruction_grid(orig, rec, ["a much longer caption"] + caps[1:], None, scale=s)
    assert wide.size[0] > plain.size[0] and wide.size[1] == cap.size[1]
    cap_h = cap.size[1] - plain.size[1]
    assert 6 <= cap_h <= 30  # one line of text under the reconstructions
    # caption text is drawn (dark pixels) below the last reconstruction
    W = cap.size[0]
    y0 = PAD + 2 * (n * s + PAD) - PAD
    strip = np.asarray(cap.crop((W - PAD - n * s - 4, y0, W, y0 + cap_h)).convert("L"))
    assert strip.min() < 128
    # 10 images wrap after 8: same width, two original/reconstruction blocks
    orig10, rec10 = torch.rand(10, 1, n, n), torch.rand(10, 1, n, n)
    wrapped = reconstruction_grid(orig10, rec10, [f"{i} dB" for i in range(10)], tmp_path / "w.png", scale=s)
    assert wrapped.size == (cap.size[0], 2 * cap.size[1] - PAD)
    assert reconstruction_grid(orig10, rec10, None, None, scale=s, max_per_row=5).size == (
        plain.size[0] - 3 * (n * s + PAD), 2 * plain.size[1] - PAD)


def test_reconstruction_grid_nearest_upscale_and_sanitising():
    img = torch.zeros(1, 1, 2, 2)
    img[0, 0, 0, 0] = 1.0
    img[0, 0, 1, 1] = float("nan")  # -> black, no crash
    rec = torch.full((1, 3, 2, 2), 2.0)  # clamped to white... but drawn
    rec[0, :, 0, 0] = -1.0  # clamped to black
    im = reconstruction_grid(img, rec, ["x"], None, scale=3)
    W = im.size[0]
    x = W - PAD - 6
    top = np.asarray(im.crop((x, PAD, x + 6, PAD + 6)).convert("L"))
    assert (top[:3, :3] == 255).all() and (top[:3, 3:] == 0).all() and (top[3:, 3:] == 0).all()
    bottom = np.asarray(im.crop((x, 2 * PAD + 6, x + 6, 2 * PAD + 12)).convert("L"))
    assert (bottom[:3, :3] == 0).all() and (bottom[3:, 3:] == 255).all()


def test_reconstruction_grid_rejects_bad_input():
    with pytest.raises(ValueError, match="captions"):
        reconstruction_grid(torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4), ["a"], None)
    with pytest.raises(ValueError, match="C in"):
        reconstruction_grid(torch.rand(2, 2, 4, 4), torch.rand(2, 2, 4, 4), None, None)
    with pytest.raises(ValueError):
        reconstruction_grid(torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4), None, None, scale=0)


def test_image_rows_layout(tmp_path):
    s, h, w = 2, 5, 6
    rows = [torch.rand(2, 3, h, w), torch.rand(20, 1, h, w), [torch.rand(3, h, w)]]
    im = image_rows(rows, ["iteration 0", "iteration 500", "final"], tmp_path / "rows.png", scale=s)
    with Image.open(tmp_path / "rows.png") as saved:
        assert saved.size == im.size
    W, H = im.size
    assert H == PAD + 5 * (h * s + PAD)  # 1 + 3 (20 wraps at 8) + 1 lines
    assert W - PAD - 8 * (w * s + PAD) > PAD  # 8 columns plus a label column
    unlabeled = image_rows(rows, None, None, scale=s)
    assert unlabeled.size == (PAD + 8 * (w * s + PAD), H)
    capped = image_rows([torch.rand(3, 3, h, w)], ["r"], None, scale=s, captions=[["a", "b", "c"]], max_per_row=2)
    assert capped.size[1] > PAD + 2 * (h * s + PAD)
    with pytest.raises(ValueError):
        image_rows(rows, ["only one"], None)


# ------------------------------------------------------------------------------------------ plots


def _trace():
    rows = []
    for i in range(60):
        stage = "adam" if i < 40 else "lbfgs"
        for r in range(2):
            rows.append({"iteration": i, "stage": stage, "restart": r, "loss": math.exp(-i / 10) * (1 + r)})
    return rows


def test_loss_plot_png(tmp_path):
    p = loss_plot(_trace(), tmp_path / "loss.png")
    assert p.read_bytes()[:8] == PNG_MAGIC
    with Image.open(p) as im:
        assert im.size[0] > 300 and im.size[1] > 200
    # non-positive, non-finite and empty traces still give a plot
    cos = [{"iteration": i, "stage": "cos", "loss": 1e-3 * (5 - i)} for i in range(10)]
    cos.append({"iteration": 10, "stage": "cos", "loss": float("nan")})
    loss_plot(cos, tmp_path / "cos.png")
    loss_plot([], tmp_path / "empty.png")
    assert (tmp_path / "cos.png").stat().st_size > 0 and (tmp_path / "empty.png").stat().st_size > 0
    assert _leftovers(tmp_path) == []


def test_choose_yscale():
    ax = Figure().add_subplot()
    assert _choose_yscale(ax, [1.0, 1e-4]) == "log" and ax.get_yscale() == "log"
    ax = Figure().add_subplot()
    assert _choose_yscale(ax, [0.0, 1e-6, 0.3]) == "symlog" and ax.get_yscale() == "symlog"
    ax = Figure().add_subplot()
    assert _choose_yscale(ax, [-0.5, 0.2]) == "symlog"


def test_write_trace_csv(tmp_path):
    rows = _trace()[:5] + [{"iteration": 99, "stage": "x", "loss": float("inf"), "lr": 0.1}]
    p = write_trace_csv(rows, tmp_path / "trace.csv")
    with open(p, newline="") as f:
        read = list(csv.DictReader(f))
    assert list(read[0]) == ["iteration", "stage", "restart", "loss", "lr"]
    assert len(read) == 6
    assert float(read[3]["loss"]) == rows[3]["loss"]  # full precision
    assert read[5]["restart"] == "" and read[5]["loss"] == "inf" and read[5]["lr"] == "0.1"
    assert _leftovers(tmp_path) == []


def test_line_and_scatter_plots(tmp_path):
    line_plot([1, 2, 4], {"psnr": [20, 18, 15], "ssim": [0.9, float("nan"), 0.5]}, tmp_path / "l.png",
              "batch size", "score", "sweep", logx=True)
    scatter_plot([{"x": 25.0, "y": 0.9, "label": "σ=1e-3", "group": "noise"},
                  {"x": 12.0, "y": 0.7, "label": "σ=1e-1", "group": "noise"},
                  {"x": 18.0, "y": 0.85, "group": "pruning"},
                  {"x": float("nan"), "y": 1.0}],
                 tmp_path / "s.png", "PSNR", "accuracy", "privacy/utility", connect=True)
    for name in ("l.png", "s.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(ValueError, match="values"):
        line_plot([1, 2], {"a": [1]}, tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists() and _leftovers(tmp_path) == []


def test_line_and_scatter_plots_set_scales_labels_and_title(tmp_path, monkeypatch):
    from gradleak.report import plots

    saved = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: saved.append(fig.axes[0]))
    line_plot([1, 2, 4], {"a": [1.0, 10.0, 100.0]}, tmp_path / "l.png", "x", "y", "t", logx=True, logy=True)
    line_plot([1, 2], {"a": [-1.0, 2.0]}, tmp_path / "l2.png", logy=True)           # a value <= 0: symlog
    scatter_plot([{"x": 1.0, "y": 2.0}, {"x": 3.0, "y": 4.0}], tmp_path / "s.png", "px", "py", "st", logy=True)
    scatter_plot([{"x": 1.0, "y": 2.0}], tmp_path / "s2.png")
    scales = [(ax.get_xscale(), ax.get_yscale()) for ax in saved]
    assert scales == [("log", "log"), ("linear", "symlog"), ("linear", "log"), ("linear", "linear")]
    labels = [(ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) for ax in saved]
    assert labels == [("x", "y", "t"), ("", "", ""), ("px", "py", "st"), ("", "", "")]


# ------------------------------------------------------------------------------------------- html


def _metrics(**extra):
    m = {
        "attack": "invertgrad",
        "psnr": {"mean": 20.1, "best": 25.3, "per_image": [14.9, 25.3]},
        "ssim": {"mean": 0.4321, "best": 0.8765, "per_image": [0.1, 0.8765]},
        "lpips": None,
        "lpips_unavailable": "LPIPS weights not found in /opt/lpips (alexnet.pth)",
        "label_accuracy": 1.0,
        "iterations": 1000,
        "seconds": 12.3,
        "seed": 7,
    }
    m.update(extra)
    return m


def _run_dir(tmp_path):
    reconstruction_grid(torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8), ["14.9 dB", "25.3 dB"],
                        tmp_path / "reconstruction.png")
    loss_plot(_trace(), tmp_path / "loss.png")
    return tmp_path


def test_write_report_contents(tmp_path):
    run = _run_dir(tmp_path)
    cfg = "attack: invertgrad\nseed: 7\nnote: <script>alert(1)</script>\n"
    p = write_report(run, _metrics(), cfg)
    assert p == run / "report.html"
    html = p.read_text(encoding="utf-8")
    assert "<title>gradleak report: invertgrad</title>" in html
    for text in ("20.10 dB", "25.30 dB", "14.90 dB", "0.4321", "0.8765", "1000", "12.30 s", "1.00 (100%)"):
        assert text in html, text
    assert "unavailable: LPIPS weights not found in /opt/lpips (alexnet.pth)" in html
    for name in ("reconstruction.png", "loss.png"):
        b64 = base64.b64encode((run / name).read_bytes()).decode("ascii")
        assert f'src="data:image/png;base64,{b64}"' in html
    # the config is shown escaped, inside <pre>
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script>" not in html
    assert '<pre class="config">attack: invertgrad' in html
    assert "seed</th><td>7</td>" in html
    assert _leftovers(run) == []


def test_write_report_missing_and_extra_keys(tmp_path):
    m = {"attack": "dlg<x>", "psnr": {"mean": float("nan"), "best": float("inf")},
         "semantic": {"mean": 0.25, "best": 0.5, "per_image": [0.25, 0.5]},
         "restart_losses": [1.5, float("inf")], "note": "hello & goodbye",
         "defenses": [{"name": "noise", "sigma": 0.01}]}
    html = write_report(tmp_path, m, "").read_text()  # no images, no config, few keys
    assert "dlg&lt;x&gt;" in html and "dlg<x>" not in html
    assert "reconstruction.png was not written" in html and "loss.png was not written" in html
    assert "semantic" in html and "0.25" in html
    assert "restart_losses" in html and "hello &amp; goodbye" in html  # "other" table
    assert "noise(sigma=0.01)" in html
    assert "NaN" in html and "∞" in html
    assert "data:image" not in html
    # nothing at all
    html = render_report(tmp_path, {}, "")
    assert "<title>gradleak report</title>" in html and "no image metrics recorded" in html
    # a reason without any metric value is still shown
    html = render_report(tmp_path, {"lpips_unavailable": "no weights"}, "")
    assert "unavailable: no weights" in html


def test_write_report_lpips_available(tmp_path):
    m = _metrics(lpips={"mean": 0.3456, "best": 0.1234, "per_image": [0.3456, 0.1234]}, lpips_unavailable=None)
    html = write_report(tmp_path, m, "x: 1").read_text()
    assert "0.3456" in html and "0.1234" in html and "unavailable" not in html


# ----------------------------------------------------------------------------------------- tables


def test_sweep_table():
    rows = [
        {"defense": "noise", "sigma": 0.001, "psnr": {"mean": 23.456, "best": 30.0}, "batch": 4, "ok": True},
        {"defense": "prune|90%", "sigma": None, "psnr": float("nan"), "batch": np.int64(8)},
        {"defense": "none", "sigma": torch.tensor(0.5), "psnr": 12.0, "batch": 1},
    ]
    out = sweep_table(rows, ["defense", ("sigma", "σ"), ("psnr", "PSNR (dB)"), "batch", "ok"])
    assert out == (
        "| defense | σ | PSNR (dB) | batch | ok |\n"
        "| --- | ---: | ---: | ---: | --- |\n"
        "| noise | 0.00 | 23.46 | 4 | true |\n"
        "| prune\\|90% |  | nan | 8 |  |\n"
        "| none | 0.50 | 12.00 | 1 |  |\n"
    )
    assert sweep_table([{"a": 1.0}, {"b": 2}]) == "| a | b |\n| ---: | ---: |\n| 1.00 |  |\n|  | 2 |\n"
    assert sweep_table([], {"k": "Key"}) == "| Key |\n| --- |\n"


def test_report_does_not_repeat_unavailable_prefix(tmp_path):
    html = render_report(tmp_path, {"lpips": None, "lpips_unavailable": "LPIPS unavailable: missing alex.pth"}, "")
    assert "unavailable: missing alex.pth" in html and "unavailable: LPIPS unavailable" not in html


def test_report_verdict_header_and_margins(tmp_path):
    from gradleak.metrics import calibrate, score_images

    run = _run_dir(tmp_path)
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    recon = x.clone()
    recon[2] = 0.5  # one grey image: no information
    s = score_images(recon, x)
    cal = calibrate({"psnr": s["psnr"]["per_image"], "ssim": s["ssim"]["per_image"], "jaccard": None}, x,
                    torch.rand(5, 3, 16, 16), torch.zeros(5, dtype=torch.long), torch.tensor([0, 1, 0]))
    header = {"model": "lenet (width 12)", "data": "photos private, 16×16", "protocol": "fedsgd",
              "defense chain": "none", "threat model": "honest-but-curious server; labels given"}
    html = write_report(run, {**_metrics(), **cal, "header": header}, "seed: 0\n").read_text(encoding="utf-8")
    assert cal["verdict"]["per_image"] == ["recognisable", "recognisable", "none"]
    top = html.index('class="verdict recognisable"')
    assert html.index("threat model") < top < html.index("<h2>Summary</h2>")  # header and verdict come first
    assert cal["verdict"]["rule"] in html and "2 recognisable" in html and "public_mean" in html
    assert "unavailable: some private labels have no public image" in html  # label 1 has no public image
    assert "ΔPSNR vs best reference" in html and ">level</th>" in html
    for key in ("reference", "margins", "verdict", "header"):  # shown in the verdict block, not in "Other"
        assert f"<th>{key}</th><td><code>" not in html
