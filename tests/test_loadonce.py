"""Expensive networks are loaded once per process (issue 22): two audits in one process read the LPIPS weights
and the tagger once each, and a weight file replaced on disk is read again."""
import torch

from gradleak import loadonce
from gradleak.audit import audit
from gradleak.config import load_config
from gradleak.metrics import lpips_status
from gradleak.metrics.lpips import ALEXNET_FILE, LPIPS_ENV_VAR

from tests.test_metrics import _write_fake_weights, no_lpips_env  # noqa: F401 (fixture)


def _cfg(lpips_dir, seed):
    return load_config(None, ["data.name=digits", "data.batch_size=2", "model.name=lenet", "attack.name=invertgrad",
                              "attack.options.iterations=3", f"metrics.lpips_dir={lpips_dir}", f"seed={seed}"])


def test_two_audits_load_lpips_and_tagger_once(tmp_path, monkeypatch, no_lpips_env):
    monkeypatch.delenv(LPIPS_ENV_VAR, raising=False)
    _write_fake_weights(tmp_path / "w")
    loadonce.clear()
    first = audit(_cfg(tmp_path / "w", 0))
    second = audit(_cfg(tmp_path / "w", 1))
    assert first.scores.lpips is not None and second.scores.lpips is not None
    assert first.scores.semantic.get("jaccard") is not None  # the digits tagger scored both runs
    assert loadonce.LOADS["lpips"] == 1
    assert loadonce.LOADS["tagger"] == 1


def test_replaced_weight_file_is_read_again(tmp_path, monkeypatch, no_lpips_env):
    monkeypatch.delenv(LPIPS_ENV_VAR, raising=False)
    loadonce.clear()
    _write_fake_weights(tmp_path / "w", seed=0)
    a, _ = lpips_status(tmp_path / "w")
    assert lpips_status(tmp_path / "w")[0] is a
    _write_fake_weights(tmp_path / "w", seed=1)
    b, _ = lpips_status(tmp_path / "w")
    assert b is not a and loadonce.LOADS["lpips"] == 2
    key = "features.0.weight"
    assert not torch.equal(a.features.state_dict()["0.weight"], b.features.state_dict()["0.weight"]), key
    assert not any(p.requires_grad for p in b.parameters())
    assert (tmp_path / "w" / ALEXNET_FILE).exists()
