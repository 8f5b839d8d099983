"""End to end through the CLI: run directory contents, determinism, bad input → one line + exit 2."""
import json
import re
import subprocess
import sys

import pytest

FAST = ["--set", "attack.options.iterations=6", "--set", "attack.options.restarts=2", "--no-progress"]


def gradleak(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "gradleak.cli", *args], capture_output=True, text=True, cwd=cwd)


def test_demo_writes_run_directory(tmp_path):
    out = tmp_path / "demo"
    r = gradleak("demo", "--out", str(out), *FAST)
    assert r.returncode == 0, r.stderr
    for f in ("config.yaml", "observation.safetensors", "observation.json", "reconstruction.png", "trace.csv",
              "loss.png", "metrics.json", "report.html"):
        assert (out / f).is_file(), f
    m = json.loads((out / "metrics.json").read_text())
    for key in ("attack", "psnr", "ssim", "lpips", "label_accuracy", "iterations", "seconds", "seed"):
        assert key in m
    assert m["attack"] == "invertgrad" and len(m["psnr"]["per_image"]) == 4
    assert m["psnr"]["best"] >= m["psnr"]["mean"]
    assert (m["lpips"] is None) == bool(m["lpips_unavailable"])
    assert "iterations: 6" in (out / "config.yaml").read_text()
    html = (out / "report.html").read_text()
    assert "data:image/png;base64" in html and "invertgrad" in html
    # references on the same matched originals, margins, verdict (metrics.json, summary line, report top)
    ref, v = m["reference"], m["verdict"]
    assert len(ref["grey"]["psnr"]) == len(ref["public_mean"]["psnr"]) == len(ref["same_class"]["psnr"]) == 4
    assert all(j is not None for j in ref["same_class"]["public_index"])  # digits: every label is public too
    best = [max(ref[n]["psnr"][i] for n in ("grey", "public_mean", "same_class")) for i in range(4)]
    assert m["margins"]["psnr"]["per_image"] == pytest.approx([p - b for p, b in zip(m["psnr"]["per_image"], best)])
    assert v["batch"] in ("none", "partial", "recognisable") and len(v["per_image"]) == 4
    assert f"verdict: {v['batch']}" in r.stdout and "margin over the best reference" in r.stdout
    assert html.index(f'class="verdict {v["batch"]}"') < html.index("<h2>Summary</h2>")
    assert "threat model" in m["header"] and m["lpips_upsample"] in (None, False)
    rows = (out / "trace.csv").read_text().splitlines()
    assert rows[0].startswith("iteration,stage") and len(rows) == 1 + 6 * 2


def test_same_seed_same_numbers(tmp_path):
    ms = []
    for i in range(2):
        r = gradleak("demo", "--out", str(tmp_path / f"r{i}"), *FAST)
        assert r.returncode == 0, r.stderr
        m = json.loads((tmp_path / f"r{i}" / "metrics.json").read_text())
        m.pop("seconds"), m.pop("timing")
        ms.append(m)
    assert ms[0] == ms[1]


def test_run_config_with_overrides(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("seed: 2\ndata: {name: digits, channels: 1, batch_size: 1}\nmodel: {name: lenet}\n"
                   "client: {protocol: fedavg, local_steps: 2, lr: 0.05}\nattack: {name: idlg, options: {iterations: 2}}\n")
    r = gradleak("run", str(cfg), "--out", str(tmp_path / "o"), "--no-progress")
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert m["attack"] == "idlg" and m["label_mode"] == "recover" and m["seed"] == 2


@pytest.mark.parametrize("args, needle", [
    (["--set", "data.batch_size=abc"], "data.batch_size"),
    (["--set", "attack.options.iterationz=3"], "attack.options.iterationz"),
    (["--set", "model.name=nonet"], "nonet"),
    (["--set", "data.name=mnist"], "data.name"),
    (["--set", "defense=[{name: nothing}]"], "defense[0].name"),
])
def test_bad_input_one_line_exit_2_nothing_written(tmp_path, args, needle):
    out = tmp_path / "o"
    r = gradleak("demo", "--out", str(out), *args)
    assert r.returncode == 2
    err = r.stderr.strip()
    assert needle in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


def test_missing_config_file(tmp_path):
    r = gradleak("run", str(tmp_path / "none.yaml"), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "none.yaml" in r.stderr


def test_help_explains_every_command(cli):
    """Every registered command is listed by --help, and its own --help shows its docstring and the help text of
    every one of its options and arguments."""
    import typer.main

    from gradleak.cli import app

    group = typer.main.get_command(app)
    top = cli("--help")
    assert top.returncode == 0
    assert len(group.commands) >= 10
    for name, command in group.commands.items():
        assert name in top.stdout, name
        r = cli(name, "--help")
        assert r.returncode == 0, (name, r.stderr)
        text = " ".join(re.sub(r"[│╭╮╰╯─]", " ", r.stdout).split())  # rich's boxes interleave wrapped lines
        first = " ".join((command.help or "").split(".")[0].split())
        assert first and first[:40] in text, (name, first)
        for param in command.params:
            if param.name == "help":
                continue
            if param.param_type_name == "argument":  # typer keeps an argument's help out of the click object
                assert param.name.upper() in text, (name, param.name)
                continue
            assert getattr(param, "help", None), f"{name}: {param.name} has no help text"
            assert " ".join(param.help.split())[:20] in text, (name, param.name)


def test_list_describes_one_entry_from_its_signature(cli):
    r = cli("list", "gi-zw")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("gi-zw (attack) — gradleak.attacks.generative.GIZW")
    assert "Algorithm 1" in r.stdout  # the docstring's equation reference
    rows = {line.split()[0]: line for line in r.stdout.splitlines() if line.startswith("  ")}
    assert "(required)" in rows["prior"] and rows["prior"].endswith("attack.options.prior")
    assert "0.001" in rows["lr_w"] and "True" in rows["lr_w_relative"]
    r = cli("list", "lenet")  # the case fills num_classes / in_channels / resolution: not options
    rows = {line.split()[0] for line in r.stdout.splitlines() if line.startswith("  ")}
    assert rows == {"init", "width", "batchnorm"}
    r = cli("list", "precode")  # a model and a defense: both
    assert "precode (model)" in r.stdout and "precode (defense)" in r.stdout
    r = cli("list", "gi-q")
    assert r.returncode == 2 and r.stderr.startswith("error: list: got 'gi-q'; allowed: digits") and r.stderr.count("\n") == 1


def test_usage_errors_are_exit_2_without_traceback(cli):
    r = cli("demo", "--bogus")
    assert r.returncode == 2 and "--bogus" in r.stderr and "No such option" in r.stderr and "Traceback" not in r.stderr
    r = cli("list", "cifar10")  # a registry entry that is a functools.partial
    assert r.returncode == 0 and r.stdout.startswith("cifar10 (dataset) — gradleak.data.cifar.load_cifar")


def test_every_registered_name_can_be_described():
    from gradleak.attacks.presets import ATTACKS
    from gradleak.data import DATASETS
    from gradleak.defenses import DEFENSES
    from gradleak.models import MODELS
    from gradleak.registry_help import describe_entry

    for kind, section, reg in (("dataset", "data", DATASETS), ("model", "model", MODELS),
                               ("defense", "defense", DEFENSES), ("attack", "attack", ATTACKS)):
        for name, entry in reg.items():
            text = describe_entry(name, kind, section, entry)
            assert text.startswith(f"{name} ({kind}) — gradleak.") and "options" in text


def test_attack_options_out_of_range_are_one_line(cli, tmp_path):
    for key, value, allowed in (("lr", "-1", "greater than 0"), ("iterations", "0", "greater than or equal to 1"),
                                ("tv", "-0.1", "greater than or equal to 0")):
        out = tmp_path / key
        r = cli("demo", "--out", out, "--set", f"attack.options.{key}={value}")
        assert r.returncode == 2 and r.stderr.startswith(f"error: attack.options.{key}: got") and allowed in r.stderr
        assert not out.exists()
    r = cli("list", "invertgrad")
    from gradleak.attacks.presets import INVERTGRAD_LR

    assert any(line.split()[:3] == ["lr", str(INVERTGRAD_LR), "float"] and "> 0" in line for line in r.stdout.splitlines())


def test_threads_option_is_used_and_recorded_in_metrics(cli, tmp_path):
    """--threads sets torch's thread count for the command; metrics.json records it with device and versions."""
    import torch

    import gradleak

    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        r = cli("demo", "--out", tmp_path / "d", "--threads", "1", *FAST)
        assert r.returncode == 0, r.stderr
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    env = json.loads((tmp_path / "d" / "metrics.json").read_text())["environment"]
    assert env["threads"] == 1 and env["device"] == "cpu"
    assert env["torch"] == torch.__version__ and env["gradleak"] == gradleak.__version__
