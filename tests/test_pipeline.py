"""One pipeline for every source of observations (issue 22): a simulated case (``audit``), a captured file
(``gradleak attack``), a trade-off victim and a sweep's runs all go through :func:`gradleak.audit.audit_observed`;
per process the victim is built once per run and LPIPS, the tagger and the public references are read once."""
import csv
import importlib
import json

import pytest
import torch
from safetensors.torch import save_file

from gradleak import loadonce
from gradleak.audit import audit
from gradleak.config import load_config
from gradleak.metrics.lpips import LPIPS_ENV_VAR

from tests.test_metrics import _write_fake_weights, no_lpips_env  # noqa: F401 (fixture)


def _cfg(lpips_dir, seed, *more):
    return load_config(None, ["data.name=digits", "data.batch_size=2", "model.name=lenet", "attack.name=invertgrad",
                              "attack.options.iterations=3", f"metrics.lpips_dir={lpips_dir}", f"seed={seed}", *more])


@pytest.fixture
def pipeline_calls(monkeypatch):
    """Count the calls of the one pipeline function."""
    calls = []
    audit_mod = importlib.import_module("gradleak.audit")  # (gradleak.audit the attribute is the function)
    real = audit_mod.audit_observed

    def spy(*args, **kwargs):
        calls.append(args[1])  # the observation
        return real(*args, **kwargs)

    monkeypatch.setattr(audit_mod, "audit_observed", spy)
    return calls


def test_audit_attack_and_tradeoff_share_one_pipeline_and_load_each_network_once(tmp_path, monkeypatch,
                                                                                 no_lpips_env, pipeline_calls):
    from gradleak.deploy import attack_saved
    from gradleak.experiments.tradeoff import Setting, TradeoffConfig, _attack_job
    from gradleak.report.writer import write_run

    monkeypatch.delenv(LPIPS_ENV_VAR, raising=False)
    _write_fake_weights(tmp_path / "w")
    loadonce.clear()
    first = audit(_cfg(tmp_path / "w", 0))
    assert loadonce.LOADS["model"] == 1  # the client's victim; the server's copies are not rebuilt
    second = audit(_cfg(tmp_path / "w", 1))
    assert first.scores.lpips is not None and second.scores.semantic.get("jaccard") is not None
    assert [loadonce.LOADS[k] for k in ("model", "lpips", "tagger", "public")] == [2, 1, 1, 1]

    # a captured file: the first audit's upload saved, attacked by `gradleak attack` with the truth
    first.observation.save(tmp_path / "obs" / "observation")
    save_file({"images": first.case.images.contiguous(), "labels": first.case.labels}, str(tmp_path / "truth.safetensors"))
    result = attack_saved(tmp_path / "obs", "invertgrad", ["iterations=3"], truth=tmp_path / "truth.safetensors",
                          progress=False)
    write_run(result, tmp_path / "run")
    assert loadonce.LOADS["model"] == 3  # read from the file once (its validation build), then copied
    assert result.label_mode == first.label_mode == "oracle"
    # the same upload, the same attack and seed: the same reconstruction as the simulated audit
    assert torch.equal(result.reconstruction.images, first.reconstruction.images)
    assert result.scores.psnr["per_image"] == pytest.approx(first.scores.psnr["per_image"], abs=1e-6)
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["psnr"]["per_image"] == result.scores.psnr["per_image"] and m["attack"] == "invertgrad"

    # a trade-off victim
    cfg = TradeoffConfig(settings=["none"], attacks=["invertgrad"], attack_data="digits", attack_resolution=16,
                         attack_batch=2, invertgrad_iterations=2, model="lenet")
    row = _attack_job(cfg, Setting("none"), "invertgrad", 0)
    assert loadonce.LOADS["model"] == 4 and row["psnr"] is not None
    assert loadonce.LOADS["lpips"] <= 1 and loadonce.LOADS["tagger"] == 1
    assert len(pipeline_calls) == 4  # audit, audit, attack, tradeoff: each through audit_observed


def test_captured_observation_without_labels_recovers_them(tmp_path, pipeline_calls):
    """The one label rule: an attack that uses given labels on an upload whose server holds none recovers them
    (``gradleak attack`` and ``audit`` alike), and the run's config records the mode used."""
    import dataclasses

    from gradleak.audit import label_mode_of
    from gradleak.attacks import build_attack
    from gradleak.deploy import attack_saved, write_unscored

    r = audit(_cfg(None, 0, "metrics.tagger=none"))
    atk = build_attack("invertgrad")
    assert label_mode_of("default", atk, r.observation) == "oracle"
    unlabelled = dataclasses.replace(r.observation, labels=None)
    assert label_mode_of("default", atk, unlabelled) == "recover"
    unlabelled.save(tmp_path / "obs" / "observation")
    out = attack_saved(tmp_path / "obs", "invertgrad", ["iterations=2"], progress=False)
    write_unscored(out, tmp_path / "run")
    assert out.label_mode == "recover"
    assert sorted(out.reconstruction.labels.tolist()) == sorted(r.case.labels.tolist())  # recovered from the update
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["label_mode"] == "recover"
    assert "labels: recover" in (tmp_path / "run" / "config.yaml").read_text()
    assert len(pipeline_calls) == 1  # the audit; unscored, `gradleak attack` runs the attack step only


def test_sweep_rows_from_the_typed_result_match_the_resumed_rows(tmp_path, cli):
    """results.csv rows come from the AuditResult; a resumed sweep reads finished runs from metrics.json: the
    two give the same row. Each cell's attack is built once per process (checked, then run)."""
    from gradleak.experiments.sweep import done_row, load_sweep

    p = tmp_path / "s.yaml"
    p.write_text("base:\n  data: {name: digits, channels: 1, resolution: 16, batch_size: 1}\n"
                 "  attack: {name: invertgrad, options: {iterations: 2}}\n  metrics: {tagger: none}\n"
                 "axes:\n  defense: [[], [{name: topk, sparsity: 0.9}]]\nbatches: 2\n")
    loadonce.clear()
    assert cli("sweep", p, "--out", tmp_path / "out", "--workers", "1", "--no-progress").returncode == 0
    assert loadonce.LOADS["attack"] == 1  # one cell attack for the 4 runs
    assert loadonce.LOADS["model"] == 4  # one victim per run
    rows = list(csv.DictReader((tmp_path / "out" / "results.csv").open()))
    sweep = load_sweep(p)
    for run, row in zip(sweep.runs(), rows):
        again = {k: "" if v is None else str(v) for k, v in done_row(run, tmp_path / "out").items()}
        assert again == row


def test_rogs_audits_load_the_tagger_and_lpips_once(tmp_path, monkeypatch, no_lpips_env):
    """ROGS's perceptual term, its intermediates' scores, the calibration and a second run share one tagger and
    one LPIPS network (issue 22: a ROGS run used to read the tagger 3–4 times)."""
    monkeypatch.delenv(LPIPS_ENV_VAR, raising=False)
    _write_fake_weights(tmp_path / "w")
    loadonce.clear()
    for seed in (0, 1):
        r = audit(load_config(None, ["data.name=digits", "data.channels=1", "data.batch_size=2", "model.name=lenet",
                                     "client.protocol=fedavg", "client.local_steps=2", f"seed={seed}",
                                     "attack.name=rogs", "attack.options={iterations: 2, rogs_iterations: 2, "
                                     "perceptual: tagger}", f"metrics.lpips_dir={tmp_path / 'w'}"]))
        assert r.artifact_scores.get("rog_before_inversion") is not None and r.scores.semantic.get("jaccard") is not None
    assert loadonce.LOADS["tagger"] == 1 and loadonce.LOADS["lpips"] == 1 and loadonce.LOADS["model"] == 2


def test_a_reused_attack_gives_a_fresh_attacks_numbers():
    """A sweep reuses each cell's attack object across its runs (audit.attack_once): GI-z/w, which adapts the
    generator's weights, must leave nothing behind that changes the next run."""
    from gradleak.attacks import build_attack
    from gradleak.audit import attack_once

    loadonce.clear()
    for seed in (0, 1):  # the second run reuses the first's attack object
        c = load_config(None, ["data.name=digits", "data.channels=1", "data.batch_size=2", "model.name=lenet",
                               f"seed={seed}", "attack.name=gi-zw", "metrics.tagger=none",
                               "attack.options={prior: digits, iterations_z: 2, iterations_w: 2}"])
        reused = audit(c, attack=attack_once(c)).reconstruction.images
        fresh = audit(c, attack=build_attack(c.attack.name, **c.attack.options)).reconstruction.images
        assert torch.equal(reused, fresh), seed
    assert loadonce.LOADS["attack"] == 1
