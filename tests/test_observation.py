import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from gradleak.attacks.labels import label_accuracy, recover_labels
from gradleak.case import Case, capture
from gradleak.errors import UserError
from gradleak.fl.observation import Observation
from gradleak.fl.protocol import Protocol
from gradleak.models import build_model, init_model


def _obs(batch=4, share_bn=False, give_labels=True, protocol=None):
    model = build_model("convnet", 10, 3, 32, width=4)
    init_model(model, 0)
    model.gradleak_spec = {"name": "convnet", "num_classes": 10, "in_channels": 3, "resolution": 32,
                           "options": {"width": 4}}
    y = torch.randperm(10)[:batch]
    x = torch.rand(batch, 3, 32, 32)
    proto = protocol or Protocol(share_bn_stats=share_bn)
    return capture(Case(model, x, y, proto, give_labels=give_labels, model_spec=model.gradleak_spec)), y


def test_save_load_roundtrip(tmp_path):
    obs, y = _obs(share_bn=True)
    st, js = obs.save(tmp_path / "obs")
    assert st.exists() and js.exists()
    back = Observation.load(tmp_path / "obs")
    assert back.protocol == obs.protocol and back.num_images == 4
    assert torch.equal(back.labels, y)
    for n in obs.update:
        assert torch.equal(back.update[n], obs.update[n])
    assert set(back.bn_stats) == set(obs.bn_stats) and len(obs.bn_stats) > 0
    assert json.loads(js.read_text())["model"]["name"] == "convnet"


def test_load_refuses_nan_naming_tensor(tmp_path):
    obs, _ = _obs()
    st, _ = obs.save(tmp_path / "obs")
    tensors = load_file(str(st))
    key = next(k for k in tensors if k.startswith("update/"))
    tensors[key][0] = float("nan")
    save_file(tensors, str(st))
    with pytest.raises(UserError, match=key):
        Observation.load(tmp_path / "obs")


def test_load_refuses_shape_mismatch_naming_both_shapes(tmp_path):
    obs, _ = _obs()
    st, _ = obs.save(tmp_path / "obs")
    tensors = load_file(str(st))
    key = next(k for k in tensors if k.startswith("update/") and k.endswith("weight"))
    tensors[key] = torch.zeros(3, 3)
    save_file(tensors, str(st))
    with pytest.raises(UserError) as err:
        Observation.load(tmp_path / "obs")
    msg = str(err.value)
    assert key in msg and "(3, 3)" in msg and "\n" not in msg


def test_load_missing_file_names_path(tmp_path):
    with pytest.raises(UserError, match="nothing.safetensors"):
        Observation.load(tmp_path / "nothing")


def test_labels_withheld_unless_granted():
    obs, _ = _obs(give_labels=False)
    assert obs.labels is None


@pytest.mark.parametrize("batch", [1, 4])
def test_label_recovery_fedsgd(batch):
    obs, y = _obs(batch=batch, give_labels=False)
    rec = recover_labels(obs, obs.build_model())
    assert label_accuracy(rec, y) == 1.0


def test_label_recovery_fedavg():
    obs, y = _obs(batch=4, give_labels=False,
                  protocol=Protocol(kind="fedavg", local_steps=3, lr=0.01, local_batch_size=2))
    assert label_accuracy(recover_labels(obs, obs.build_model()), y) >= 0.75


def test_label_accuracy_is_order_free():
    assert label_accuracy(torch.tensor([3, 1]), torch.tensor([1, 3])) == 1.0
    assert label_accuracy(torch.tensor([3, 3]), torch.tensor([1, 3])) == 0.5
