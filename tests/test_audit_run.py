"""``gradleak audit-run`` over a 2-round × 2-client capture (built without Flower, in GradleakCapture's format):
parallel numbers equal sequential ones, an interrupted run resumes without redoing finished captures, a missing
or corrupt capture is named and the rest carry on (exit 1)."""
import json
import shutil

import pytest
import torch
from safetensors.torch import save_file

import gradleak.experiments.audit_run as ar
from gradleak.case import Case, capture
from gradleak.fl.protocol import Protocol
from gradleak.fl.secagg import aggregate_observation
from gradleak.models import build_model, init_model

SPEC = {"name": "lenet", "num_classes": 10, "in_channels": 1, "resolution": 32, "options": {}}
OPTS = {"iterations": 3}
NODES = (101, 202)
VALUES = ("psnr_worst", "psnr_mean", "reference_psnr", "dpsnr_max", "verdict", "labels", "ssim_mean")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """OUT/round-00R/node-N (+ aggregate), index.json, truth/N.safetensors and truth.yaml."""
    root = tmp_path_factory.mktemp("captures")
    model = build_model("lenet", 10, 1, 32)
    init_model(model, 0)
    g = torch.Generator().manual_seed(0)
    data = {n: (torch.rand(1, 1, 32, 32, generator=g), torch.tensor([k + 3])) for k, n in enumerate(NODES)}
    (root / "truth").mkdir()
    for n, (x, y) in data.items():
        save_file({"images": x, "labels": y}, str(root / "truth" / f"{n}.safetensors"))
    (root / "truth.yaml").write_text("".join(f"{n}: truth/{n}.safetensors\n" for n in NODES))
    proto = Protocol(kind="fedavg", lr=0.05, local_steps=1)
    entries = []
    for rnd in (1, 2):
        parts = []
        for n in NODES:
            obs = capture(Case(model=model, images=data[n][0], labels=data[n][1], protocol=proto, model_spec=SPEC))
            obs.extra = {"round": rnd, "node_id": n, "kind": "client"}
            obs.save(root / "caps" / f"round-{rnd:03d}" / f"node-{n}")
            entries.append({"path": f"round-{rnd:03d}/node-{n}", **obs.extra})
            parts.append(obs)
        agg = aggregate_observation(parts, "weighted_mean", extra={"round": rnd, "node_id": "aggregate",
                                                                   "kind": "aggregate", "client_nodes": list(NODES)})
        agg.save(root / "caps" / f"round-{rnd:03d}" / "aggregate")
        entries.append({"path": f"round-{rnd:03d}/aggregate", "round": rnd, "node_id": "aggregate",
                        "kind": "aggregate", "client_nodes": list(NODES)})
        with torch.no_grad():  # the next round starts from the aggregate's result
            for name, p in model.named_parameters():
                p.sub_(agg.update[name])
    (root / "caps" / "index.json").write_text(json.dumps({"format": "gradleak-flower-capture", "model": SPEC,
                                                          "captures": entries}))
    return root


@pytest.fixture(scope="module")
def sequential(run_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("seq")
    return ar.audit_run(run_dir / "caps", out, "2m", run_dir / "truth.yaml", workers=1, attack="invertgrad", options=OPTS)


def _values(rows):
    return {(r["round"], r["node_id"]): tuple(r.get(k) for k in VALUES) for r in rows}


def test_every_capture_is_audited_with_truth_and_outputs(sequential):
    rows = sequential.rows
    assert [(r["round"], r["kind"]) for r in rows] == [(1, "client"), (1, "client"), (1, "aggregate"),
                                                       (2, "client"), (2, "client"), (2, "aggregate")]
    assert all(r["status"] == "ok" and r["verdict"] in ("none", "partial", "recognisable") for r in rows)
    assert all(r["psnr_worst"] is not None and r["reference_psnr"] is not None for r in rows)
    assert [r["num_images"] for r in rows if r["kind"] == "aggregate"] == [2, 2]
    assert [r["clients"] for r in rows if r["kind"] == "aggregate"] == [2, 2]
    out = sequential.out
    for f in ("results.csv", "summary.json", "audit_run.html", "leakage_over_rounds.png", "verdict_over_rounds.png"):
        assert (out / f).is_file(), f
    assert len((out / "results.csv").read_text().strip().splitlines()) == 7
    summary = json.loads((out / "summary.json").read_text())["summary"]
    assert set(summary) == {"client 101", "client 202", "aggregate"}
    assert not sequential.errors and sequential.skipped == 0


def test_parallel_numbers_equal_sequential(run_dir, sequential, tmp_path):
    par = ar.audit_run(run_dir / "caps", tmp_path / "par", "2m", run_dir / "truth.yaml", workers=2, attack="invertgrad",
                       options=OPTS)
    assert _values(par.rows) == _values(sequential.rows)


def test_interrupted_run_resumes_without_redoing_finished_captures(run_dir, sequential, tmp_path, monkeypatch):
    real = ar.run_measure
    calls = []

    def interrupted(*args, **kwargs):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(ar, "run_measure", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ar.audit_run(run_dir / "caps", tmp_path / "o", "2m", run_dir / "truth.yaml", workers=1, attack="invertgrad",
                     options=OPTS)
    assert len(list((tmp_path / "o" / "captures").rglob("result.json"))) == 2
    calls.clear()
    counted = []
    monkeypatch.setattr(ar, "run_measure", lambda *a, **k: (counted.append(1), real(*a, **k))[1])
    res = ar.audit_run(run_dir / "caps", tmp_path / "o", "2m", run_dir / "truth.yaml", workers=1, attack="invertgrad",
                       options=OPTS)
    assert len(counted) == 4 and res.skipped == 2
    assert _values(res.rows) == _values(sequential.rows)
    # other settings are not "done": a different seed redoes every capture
    counted.clear()
    ar.audit_run(run_dir / "caps", tmp_path / "o", "2m", run_dir / "truth.yaml", workers=1, attack="invertgrad",
                 options=OPTS, seed=1)
    assert len(counted) == 6


def test_missing_and_corrupt_captures_are_named_and_the_rest_carry_on(run_dir, tmp_path, cli):
    caps = tmp_path / "caps"
    shutil.copytree(run_dir / "caps", caps)
    (caps / "round-001" / "node-101.safetensors").unlink()
    (caps / "round-002" / "node-202.safetensors").write_bytes(b"\x00garbage, not safetensors")
    r = cli("audit-run", caps, "--out", tmp_path / "out", "--truth", run_dir / "truth.yaml", "--attack", "invertgrad",
            "--set", "iterations=3", "--no-progress")
    assert r.returncode == 1, r.stderr
    errs = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errs) == 2, r.stderr
    assert "node-101" in errs[0] and "node-202" in errs[1]
    lines = (tmp_path / "out" / "results.csv").read_text().strip().splitlines()
    assert len(lines) == 7 and sum(",ok," in ln for ln in lines) == 4 and sum(",error," in ln for ln in lines) == 2
    assert "node-202" in (tmp_path / "out" / "audit_run.html").read_text()


def test_a_directory_of_observations_without_an_index_and_without_truth(run_dir, tmp_path):
    caps = tmp_path / "caps"
    shutil.copytree(run_dir / "caps", caps)
    (caps / "index.json").unlink()
    (caps / "notes.json").write_text("{\"not\": \"an observation\"}")
    res = ar.audit_run(caps, tmp_path / "out", None, None, workers=1, attack="invertgrad", options=OPTS, labels="recover")
    assert len(res.rows) == 6 and not res.errors
    assert all(r["status"] == "ok" and r["verdict"] is None and r["labels"] for r in res.rows)
    assert not (tmp_path / "out" / "leakage_over_rounds.png").exists()  # nothing scored: no leakage plot
    assert "unscored" in (tmp_path / "out" / "audit_run.html").read_text()


def test_public_data_adds_the_public_references(run_dir, sequential, tmp_path):
    res = ar.audit_run(run_dir / "caps", tmp_path / "out", "2m", run_dir / "truth.yaml", workers=1,
                       attack="invertgrad", options=OPTS, public="digits:public")
    for a, b in zip(res.rows, sequential.rows):
        assert a["psnr_worst"] == b["psnr_worst"]  # the same attack, the same numbers
        assert a["reference_psnr"] >= b["reference_psnr"]  # the best of more references
    leak = json.loads(next((tmp_path / "out" / "captures").rglob("result.json")).read_text())["leakage"]
    assert leak["reference_psnr"] is not None


@pytest.mark.parametrize("args,key", [(["--budget-per-update", "2x"], "--budget-per-update"),
                                      (["--truth", "{truth}", "--public", "nosuch:split"], "--public"),
                                      (["--labels", "maybe"], "--labels"), (["--truth", "nope.yaml"], "--truth")])
def test_bad_input_is_one_line_and_writes_nothing(run_dir, tmp_path, cli, args, key):
    args = [a.format(truth=run_dir / "truth.yaml") for a in args]
    r = cli("audit-run", run_dir / "caps", "--out", tmp_path / "out", *args)
    assert r.returncode == 2 and r.stderr.strip().startswith(f"error: {key}"), r.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_measure_leakage_auto_is_the_trusted_audit_under_its_budget():
    """attack='auto' (audit-run with --budget-per-update, a guard with a budget): the portfolio with its control
    verdict, within the budget; without truth it reconstructs with the one default attack and says why."""
    import time

    from gradleak.audit import build_case
    from gradleak.case import capture
    from gradleak.config import load_config
    from gradleak.leakage import DEFAULT_ATTACK, measure_leakage

    case = build_case(load_config(None, ["data.batch_size=2", "model.name=lenet", "data.channels=1"]))
    case.give_labels = True
    obs = capture(case, seed=0)
    t0 = time.perf_counter()
    r = measure_leakage(obs, case.images, case.labels, attack="auto", budget_s=6.0)
    assert time.perf_counter() - t0 < 6.0 * 1.5
    assert r.attack.startswith("auto: ") and "invertgrad" in r.attack
    assert r.audit_verdict in ("leaks", "partial", "no leakage found", "inconclusive")
    assert r.scored and len(r.psnr_per_image) == 2 and r.reference_psnr is not None
    u = measure_leakage(obs, None, None, attack="auto", budget_s=6.0)
    assert not u.scored and u.attack == DEFAULT_ATTACK[0] and "no true images" in u.notes[-1]
