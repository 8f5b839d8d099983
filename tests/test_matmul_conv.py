"""Small convolutions as im2col + matrix product (gradleak.fl.matmul_conv): the same function as
F.conv2d to first and second order, in both of its paths, and a model copy with the same names."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradleak.fl import matmul_conv
from gradleak.fl.matmul_conv import MatmulConv2d, eligible, matmul_convs
from gradleak.models import build_model, init_model

CONVS = [  # (in, out, kernel, stride, padding, dilation, bias)
    (3, 4, 5, 2, 2, 1, True), (2, 3, 3, 1, 1, 1, False), (2, 2, (3, 2), (1, 2), (0, 1), 1, True),
    (1, 2, 3, 1, 2, 2, True),
]


@pytest.mark.parametrize("small", [True, False], ids=["im2col", "conv2d"])
@pytest.mark.parametrize("spec", CONVS)
def test_matches_conv2d_to_second_order(spec, small, monkeypatch):
    """Output, ∇_x and ∇_W, and ∇_x of a function of ∇_W (the attack's second-order term), float64."""
    monkeypatch.setattr(matmul_conv, "SMALL_CONV_MACS", 10**9 if small else 0)
    cin, cout, k, s, p, d, bias = spec
    torch.manual_seed(0)
    conv = nn.Conv2d(cin, cout, k, s, p, d, bias=bias).double()
    mm = MatmulConv2d(conv)
    x = torch.randn(2, cin, 9, 8, dtype=torch.float64, requires_grad=True)
    v = torch.randn_like(conv.weight)

    def second_order(layer):
        out = layer(x)
        (gw,) = torch.autograd.grad((out.sin()).sum(), conv.weight, create_graph=True)
        (gx,) = torch.autograd.grad((gw * v).sum(), x)
        return out, gx

    ref_out, ref_gx = second_order(conv)
    out, gx = second_order(mm)
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gx, ref_gx, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(mm(x[0]), conv(x[0]), rtol=1e-10, atol=1e-10)  # unbatched input


def test_model_copy_keeps_names_and_outputs():
    model = init_model(build_model("lenet", 10, 3, 32), 0)
    mm = matmul_convs(model)
    assert mm is not model and matmul_convs(model) is mm  # cached
    assert dict(mm.named_parameters()).keys() == dict(model.named_parameters()).keys()
    assert any(isinstance(m, MatmulConv2d) for m in mm.modules())
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(torch.func.functional_call(mm, state, (x,)),
                               torch.func.functional_call(model, state, (x,)), rtol=1e-5, atol=1e-6)
    model.eval()
    assert not matmul_convs(model).training  # follows the original's mode


def test_only_plain_convolutions_switch():
    assert eligible(nn.Conv2d(2, 2, 3))
    assert not eligible(nn.Conv2d(2, 2, 3, groups=2))
    assert not eligible(nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"))
    assert not eligible(nn.Conv2d(2, 2, 3, padding="same"))
    assert not eligible(nn.Conv1d(2, 2, 3))
