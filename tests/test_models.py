"""Tests for gradleak.models: shapes, options, seeding, import paths, torch.func, pretraining."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.nn import functional as F

from gradleak.errors import UserError
from gradleak.models import (
    MODELS,
    build_model,
    feature_layer,
    init_model,
    pretrain,
)

# Small widths keep the suite fast; the architecture (depth, pooling, heads) is unchanged.
SMALL = {
    "lenet": {},
    "convnet": {"width": 4},
    "resnet18": {"width": 4},
    "vgg7": {"width": 4, "hidden": 16},
}


def _params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_registry_names():
    assert {"lenet", "convnet", "resnet18", "vgg7", "precode"} <= set(MODELS)


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize("channels", [1, 3])
def test_output_shape_32(name, channels):
    model = build_model(name, num_classes=7, in_channels=channels, resolution=32, **SMALL[name])
    out = model(torch.rand(2, channels, 32, 32))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()
    assert model.gradleak_name == name
    assert feature_layer(model) is model.classifier
    assert isinstance(model.classifier, nn.Linear) and model.classifier.out_features == 7


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("resnet18", {"width": 4}),  # imagenet stem chosen automatically above 32
        ("resnet18", {"width": 4, "stem": "imagenet"}),
        ("vgg7", {"width": 4, "hidden": 16}),
        ("vgg7", {"width": 4, "hidden": 16, "pool": 2}),
        ("convnet", {"width": 4}),
        ("lenet", {}),
    ],
)
@pytest.mark.parametrize("channels", [1, 3])
def test_output_shape_64(name, options, channels):
    model = build_model(name, 5, channels, 64, **options)
    assert model(torch.rand(2, channels, 64, 64)).shape == (2, 5)


def test_resnet_stem_selection_and_override():
    assert build_model("resnet18", 10, resolution=32, width=4).stem == "cifar"
    imagenet = build_model("resnet18", 10, resolution=64, width=4)
    assert imagenet.stem == "imagenet"
    assert imagenet.conv1.kernel_size == (7, 7) and isinstance(imagenet.maxpool, nn.MaxPool2d)
    cifar64 = build_model("resnet18", 10, resolution=64, width=4, stem="cifar")
    assert cifar64.conv1.kernel_size == (3, 3) and cifar64.conv1.stride == (1, 1)
    assert cifar64(torch.rand(1, 3, 64, 64)).shape == (1, 10)


def test_architecture_details():
    lenet = build_model("lenet", 100, 3, 32)
    assert lenet.classifier.in_features == 768  # DLG's 12 * 8 * 8
    # DLG initialisation: every weight and bias in [-0.5, 0.5]
    assert all(p.abs().max() <= 0.5 for p in lenet.parameters())
    convnet = build_model("convnet", 10, width=8)
    assert convnet.classifier.in_features == 36 * 8
    assert sum(isinstance(m, nn.Conv2d) for m in convnet.modules()) == 8
    vgg = build_model("vgg7", 10)
    assert vgg.fc1.in_features == 512 * 4 * 4 and vgg.fc1.out_features == 1024
    assert vgg.classifier.bias is None
    assert sum(isinstance(m, nn.Conv2d) for m in vgg.modules()) == 6
    resnet = build_model("resnet18", 10, width=8)
    assert resnet.classifier.in_features == 64
    assert sum(isinstance(m, nn.Conv2d) for m in resnet.modules()) == 20  # 17 + 3 shortcuts


@pytest.mark.parametrize("name", ["convnet", "resnet18", "vgg7"])
def test_batchnorm_switch(name):
    with_bn = build_model(name, 10, **SMALL[name], batchnorm=True)
    without = build_model(name, 10, **SMALL[name], batchnorm=False)
    norm_types = (nn.BatchNorm2d, nn.BatchNorm1d, nn.GroupNorm, nn.LayerNorm)
    assert any(isinstance(m, nn.BatchNorm2d) for m in with_bn.modules())
    assert not any(isinstance(m, norm_types) for m in without.modules())
    assert without(torch.rand(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_seeded_init_is_deterministic(name):
    a = init_model(build_model(name, 10, **SMALL[name]), seed=3)
    b = init_model(build_model(name, 10, **SMALL[name]), seed=3)
    c = init_model(build_model(name, 10, **SMALL[name]), seed=4)
    assert _same(_params(a), _params(b))
    assert not _same(_params(a), _params(c))
    # re-initialising a trained model restores the seeded state, and leaves the global RNG alone
    before = _params(a)
    with torch.no_grad():
        for p in a.parameters():
            p.add_(1.0)
    state = torch.get_rng_state()
    init_model(a, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert _same(_params(a), before)


def test_init_model_generic_module_and_uncovered_parameter():
    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))

        def forward(self, x):
            return self.body(x)

    a, b = init_model(Custom(), 1), init_model(Custom(), 1)
    assert _same(_params(a), _params(b))

    class Loose(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(3))

    with pytest.raises(UserError, match="scale"):
        init_model(Loose(), 0)
    with pytest.raises(UserError, match="seed"):
        init_model(Custom(), -1)


@pytest.fixture
def factory_module(tmp_path, monkeypatch):
    source = textwrap.dedent(
        """
        import torch
        from torch import nn

        class Tiny(nn.Module):
            def __init__(self, num_classes, in_channels, resolution, hidden=8):
                super().__init__()
                self.hidden = hidden
                self.features = nn.Linear(in_channels * resolution * resolution, hidden)
                self.classifier = nn.Linear(hidden, num_classes)

            def forward(self, x):
                return self.classifier(torch.sigmoid(self.features(torch.flatten(x, 1))))

        def make_tiny(num_classes, in_channels=3, resolution=32, hidden=8):
            return Tiny(num_classes, in_channels, resolution, hidden)

        def not_a_module(num_classes, in_channels, resolution):
            return 42
        """
    )
    (tmp_path / "gl_test_factory.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "gl_test_factory"
    sys.modules.pop("gl_test_factory", None)


def test_import_path_factory(factory_module):
    model = build_model(f"{factory_module}:make_tiny", 4, 1, 8, hidden=5)
    assert model.gradleak_name == f"{factory_module}:make_tiny"
    assert model.hidden == 5
    assert model(torch.rand(3, 1, 8, 8)).shape == (3, 4)
    assert feature_layer(model) is model.classifier
    # classes work as factories too
    assert build_model(f"{factory_module}:Tiny", 2, 3, 4)(torch.rand(1, 3, 4, 4)).shape == (1, 2)


def test_import_path_errors(factory_module):
    with pytest.raises(UserError, match="no_such_module_xyz:make"):
        build_model("no_such_module_xyz:make", 10)
    with pytest.raises(UserError, match="missing_factory"):
        build_model(f"{factory_module}:missing_factory", 10)
    with pytest.raises(UserError, match="depth") as info:
        build_model(f"{factory_module}:make_tiny", 10, depth=3)
    assert "hidden" in str(info.value)
    with pytest.raises(UserError, match="nn.Module"):
        build_model(f"{factory_module}:not_a_module", 10)


def test_bad_name_and_options():
    with pytest.raises(UserError, match="resnet99") as info:
        build_model("resnet99", 10)
    message = str(info.value)
    assert "\n" not in message and all(name in message for name in MODELS)
    with pytest.raises(UserError, match="depth") as info:
        build_model("resnet18", 10, depth=50)
    assert all(key in str(info.value) for key in ("width", "batchnorm", "stem"))
    with pytest.raises(UserError, match="stem: got 'tiny'"):
        build_model("resnet18", 10, stem="tiny")
    with pytest.raises(UserError, match="width: got 0"):
        build_model("convnet", 10, width=0)
    with pytest.raises(UserError, match="batchnorm: got 'yes'"):
        build_model("vgg7", 10, batchnorm="yes")
    with pytest.raises(UserError, match="resolution: got 30"):
        build_model("lenet", 10, resolution=30)
    with pytest.raises(UserError, match="resolution: got 36"):
        build_model("vgg7", 10, resolution=36)
    with pytest.raises(UserError, match="num_classes: got 0"):
        build_model("lenet", 0)
    assert build_model("LeNet", 3).gradleak_name == "lenet"


def test_feature_layer_without_linear_head():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten())
    with pytest.raises(UserError, match="Linear"):
        feature_layer(model)
    fallback = nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.ReLU(), nn.Linear(6, 2))
    assert feature_layer(fallback) is fallback[3]


@pytest.mark.parametrize(
    ("name", "options"),
    [("lenet", {}), ("resnet18", {"width": 4}), ("resnet18", {"width": 4, "batchnorm": False})],
)
def test_functional_call_double_backward(name, options):
    model = init_model(build_model(name, 10, **options), seed=0).eval()
    params = {k: v.detach().requires_grad_(True) for k, v in model.named_parameters()}
    buffers = dict(model.named_buffers())
    x = torch.rand(2, 3, 32, 32)
    y = torch.tensor([1, 4])
    target = torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))

    # gradient matching as an inversion attack does: d/d(dummy) || grad(dummy) - target ||^2
    dummy = torch.rand(2, 3, 32, 32, requires_grad=True)
    loss = F.cross_entropy(functional_call(model, (params, buffers), (dummy,)), y)
    dummy_grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
    match = sum(((g - t) ** 2).sum() for g, t in zip(dummy_grads, target))
    (image_grad,) = torch.autograd.grad(match, dummy)
    assert image_grad.shape == dummy.shape
    assert torch.isfinite(image_grad).all() and image_grad.abs().sum() > 0


@pytest.mark.parametrize(("name", "options"), [("lenet", {}), ("resnet18", {"width": 4})])
def test_vmap_per_sample_gradients(name, options):
    model = build_model(name, 10, **options).eval()
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = dict(model.named_buffers())
    x, y = torch.rand(3, 3, 32, 32), torch.tensor([0, 5, 9])

    def loss_fn(p, xi, yi):
        out = functional_call(model, (p, buffers), (xi.unsqueeze(0),))
        return F.cross_entropy(out, yi.unsqueeze(0))

    per_sample = vmap(grad(loss_fn), in_dims=(None, 0, 0))(params, x, y)
    single = loss_fn(dict(model.named_parameters()), x[1], y[1])
    reference = torch.autograd.grad(single, list(model.parameters()))
    for key, ref in zip(params, reference):
        assert per_sample[key].shape == (3, *params[key].shape)
        torch.testing.assert_close(per_sample[key][1], ref, rtol=1e-4, atol=1e-6)


def _toy_data(channels=3, resolution=32, count=16, classes=4):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(count, channels, resolution, resolution, generator=g)
    return images, torch.randint(0, classes, (count,), generator=g)


@pytest.mark.parametrize(
    ("name", "options", "lr"),
    [
        ("lenet", {"init": "default"}, 0.5),
        ("convnet", {"width": 4}, 0.05),
        ("resnet18", {"width": 4}, 0.05),
    ],
)
def test_pretrain_reduces_loss_and_is_deterministic(name, options, lr):
    images, labels = _toy_data()

    def full_loss(model):
        model.eval()
        with torch.no_grad():
            return F.cross_entropy(model(images), labels).item()

    def trained():
        model = init_model(build_model(name, 4, **options), seed=0)
        start = full_loss(model)
        model.train()
        losses = pretrain(model, images, labels, steps=30, lr=lr, batch_size=8, seed=1)
        return model, start, losses

    a, start, losses = trained()
    assert len(losses) == 30
    assert a.training  # mode restored
    assert all(p.grad is None for p in a.parameters())
    assert full_loss(a) < start
    b, _, losses_b = trained()
    assert losses == losses_b
    assert _same(_params(a), _params(b))


def test_pretrain_zero_steps_and_bad_input():
    model = build_model("lenet", 4)
    images, labels = _toy_data()
    before = _params(model)
    assert pretrain(model, images, labels, steps=0) == []
    assert _same(before, _params(model))
    with pytest.raises(UserError, match="steps"):
        pretrain(model, images, labels, steps=-1)
    with pytest.raises(UserError, match="lr"):
        pretrain(model, images, labels, steps=1, lr=0)
    with pytest.raises(UserError, match="labels"):
        pretrain(model, images, labels[:3], steps=1)
    with pytest.raises(UserError, match="labels: got 9"):
        pretrain(model, images, torch.full((16,), 9), steps=1)
    with pytest.raises(UserError, match="images"):
        pretrain(model, images[0], labels, steps=1)


def test_lenet_width_and_batchnorm_options():
    plain = build_model("lenet", 10, 1, 32)
    small = build_model("lenet", 10, 1, 32, width=4, batchnorm=True)
    assert [k for k in plain.state_dict()] == ["body.0.weight", "body.0.bias", "body.2.weight", "body.2.bias",
                                               "body.4.weight", "body.4.bias", "classifier.weight", "classifier.bias"]
    assert small.classifier.in_features == 4 * 8 * 8
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in small.modules()) == 3
    assert small(torch.rand(2, 1, 32, 32)).shape == (2, 10)
    with pytest.raises(UserError, match="lenet option width"):
        build_model("lenet", 10, 1, 32, width=0)


def test_build_model_records_the_spec_that_rebuilds_it():
    model = build_model("LeNet", 10, 1, 32, width=4, batchnorm=True)
    assert model.gradleak_spec == {"name": "lenet", "num_classes": 10, "in_channels": 1, "resolution": 32,
                                   "options": {"width": 4, "batchnorm": True}}
    spec = model.gradleak_spec
    again = build_model(spec["name"], spec["num_classes"], spec["in_channels"], spec["resolution"], **spec["options"])
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
