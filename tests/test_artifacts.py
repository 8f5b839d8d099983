"""Typed artifacts (issue 22): a family's own output is one Artifact subclass; the audit scores it, the run
writer draws it, metrics.json, the report and the command line show it — none of them names it."""
import base64
import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from torch import Tensor

from gradleak.attacks import ATTACKS, Artifact, Attack, Reconstruction
from gradleak.attacks.artifacts import brief, matched_rows, merge_facts
from gradleak.audit import audit
from gradleak.config import load_config
from gradleak.metrics import score_images
from gradleak.report.writer import write_run

NAME = "test-artifact-attack"


@dataclass
class Halo(Artifact):
    """A made-up family output defined only here: a second guess of the images and a note."""

    guess: Tensor
    note: str
    shifted: list[tuple[int, Tensor]] = field(default_factory=list)

    fact_labels = {"halo_note": "halo note (test artifact)"}

    def describe(self) -> dict:
        return {"halo_note": self.note, "halo_steps": [i for i, _ in self.shifted]}

    def score(self, truth, scorer):
        return {"halo_scores": brief(scorer(self.guess, truth))}

    def draw(self, out: Path, originals, order):
        from gradleak.imagegrid import image_rows

        image_rows(matched_rows([self.guess], order) + [originals], ["guess", "original"], out / "halo.png")
        return [("Halo guess above the originals (test artifact)", "halo.png")]

    def summary(self):
        return [f"  halo: {self.note}"]


class HaloAttack(Attack):
    """Returns grey images and a Halo artifact whose guess is a darker grey."""

    name = NAME

    def __call__(self, obs, labels=None, seed=0, model=None, progress=True):
        B, shape = obs.num_images, tuple(obs.image_shape)
        rec = Reconstruction(images=torch.full((B, *shape), 0.5), labels=labels, attack=self.name, seconds=0.0)
        rec.add(Halo(torch.full((B, *shape), 0.25), "made here", [(3, torch.zeros(B, *shape))]))
        return rec


@pytest.fixture
def halo_attack():
    ATTACKS.register(NAME)(HaloAttack)
    try:
        yield
    finally:
        dict.pop(ATTACKS, NAME)


def _overrides(*extra):
    return ["data.name=digits", "data.batch_size=2", "model.name=lenet", f"attack.name={NAME}", "metrics.tagger=none",
            *extra]


def test_new_artifact_reaches_metrics_report_and_cli_without_touching_the_writer(halo_attack, cli, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("seed: 0\n")
    r = cli("run", cfg, "--out", tmp_path / "run", "--no-progress", *[a for o in _overrides() for a in ("--set", o)])
    assert r.returncode == 0, r.stderr
    assert "  halo: made here" in r.stdout  # the artifact's summary line, printed by the CLI
    run = tmp_path / "run"
    m = json.loads((run / "metrics.json").read_text())
    assert m["halo_note"] == "made here" and m["halo_steps"] == [3]
    # its score is the run's scorer applied to its own images: the same as scoring them here
    result = audit(load_config(None, _overrides()))
    expected = score_images(torch.full_like(result.originals, 0.25), result.originals)
    assert m["halo_scores"]["psnr"] == pytest.approx(expected["psnr"]["mean"], rel=1e-6)
    assert m["halo_scores"]["ssim"] == pytest.approx(expected["ssim"]["mean"], rel=1e-6)
    assert m["halo_scores"]["jaccard"] is None  # metrics.tagger: none
    assert m["psnr"]["mean"] != pytest.approx(m["halo_scores"]["psnr"])  # grey 0.5 vs 0.25: not the final images
    html = (run / "report.html").read_text()
    assert "halo note (test artifact)</th><td>made here</td>" in html  # the run table, under its own label
    assert "Halo guess above the originals (test artifact)" in html
    assert f'src="data:image/png;base64,{base64.b64encode((run / "halo.png").read_bytes()).decode()}"' in html


def test_artifact_facts_never_overwrite_other_keys():
    rec = Reconstruction(images=torch.zeros(1, 1, 2, 2), labels=None, attack="x", seconds=0.0)

    @dataclass
    class Bad(Artifact):
        def describe(self):
            return {"iterations": 7}

    rec.add(Bad())
    with pytest.raises(ValueError, match="iterations"):
        rec.describe()
    assert merge_facts({"a": 1}, {"b": 2}, {"c": 3}) == {"a": 1, "b": 2, "c": 3}


def test_add_replaces_same_kind_and_get_finds_by_class():
    rec = Reconstruction(images=torch.zeros(1, 1, 2, 2), labels=None, attack="x", seconds=0.0)
    assert rec.get(Halo) is None
    first = rec.add(Halo(torch.zeros(1), "first"))
    rec.add(Halo(torch.zeros(1), "second"))
    assert len(rec.artifacts) == 1 and rec.get(Halo).note == "second" and rec.get(Halo) is not first


def test_cpu_moves_every_tensor_of_every_artifact():
    moved = []

    class OnDevice(torch.Tensor):  # stands in for a GPU tensor: records that it was moved
        def cpu(self, *args, **kwargs):
            moved.append(self.shape)
            return torch.Tensor.cpu(self).as_subclass(torch.Tensor)

    def dev(*shape):
        return torch.zeros(*shape).as_subclass(OnDevice)

    rec = Reconstruction(images=dev(1, 1, 2, 2), labels=None, attack="x", seconds=0.0)
    rec.add(Halo(dev(2), "n", [(0, dev(3)), (1, dev(4))]))
    rec.cpu()
    halo = rec.get(Halo)
    assert type(rec.images) is torch.Tensor and type(halo.guess) is torch.Tensor
    assert all(type(t) is torch.Tensor for _, t in halo.shifted) and len(moved) == 4


def test_gias_snapshots_are_scored_and_drawn_in_the_run_directory(tmp_path):
    cfg = load_config(None, ["data.name=digits", "data.batch_size=2", "model.name=lenet", "attack.name=gi-x",
                             "attack.options.iterations=4", "attack.options.snapshot_every=2",
                             "metrics.tagger=none"])
    result = audit(cfg)
    m = write_run(result, tmp_path / "run")
    assert m["snapshots"] == {"every": 2, "iterations": [0, 2, 4]}
    rows = m["snapshot_scores"]
    assert [r["iteration"] for r in rows] == [0, 2, 4]
    # the last snapshot is the returned restart's final search iterate: scored like the final images
    assert rows[-1]["psnr"] == pytest.approx(m["psnr"]["mean"], abs=1e-4)
    assert (tmp_path / "run" / "snapshots.png").is_file()
    assert "Snapshots of the returned restart" in (tmp_path / "run" / "report.html").read_text()


def test_snapshot_scores_and_figure_are_bounded_and_keep_first_and_last(tmp_path):
    from types import SimpleNamespace

    from gradleak.attacks.generative import SnapshotSeries

    truth = torch.rand(2, 1, 4, 4)
    items = [(i, torch.rand(3, 2, 1, 4, 4)) for i in range(0, 100, 2)]  # 50 snapshots of 3 restarts
    calls = []

    def scorer(images, t):
        calls.append(images)
        return SimpleNamespace(psnr={"mean": float(images.mean())}, ssim={"mean": 0.0}, semantic={})

    snaps = SnapshotSeries(2, items, best_restart=1)
    rows = snaps.score(truth, scorer)["snapshot_scores"]
    assert len(rows) == 32 and rows[0]["iteration"] == 0 and rows[-1]["iteration"] == 98
    assert all(torch.equal(c, dict(items)[r["iteration"]][1]) for c, r in zip(calls, rows))  # the returned restart
    figures = snaps.draw(tmp_path, truth, [1, 0])
    assert figures == [("Snapshots of the returned restart during the search; originals last", "snapshots.png")]
    assert (tmp_path / "snapshots.png").is_file()
