"""Standalone reproducer: Inductor (torch 2.13, CPU) reads max-pool backward's scatter_add buffer before
the scatter. Plain torch; ~1 minute. Prints the worst relative error of Inductor against eager over every
intermediate of the traced gradient graph (expected: ~1e-6; observed: 1.0, i.e. the ReLU backward after the
pooling layer is all zeros). See docs/speed.md, "Session 4"; gradleak works around it in
gradleak.backends.inductor_workarounds."""
import sys

import torch
from torch import nn
from torch.fx.experimental.proxy_tensor import make_fx



class BN(nn.Module):  # train-mode BatchNorm from its two-pass mean and variance
    def __init__(self, c):
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.rand(c) + 0.5), nn.Parameter(torch.randn(c) * 0.1)

    def forward(self, x):
        centred = x - x.mean((0, 2, 3), keepdim=True)
        y = centred * torch.rsqrt((centred * centred).mean((0, 2, 3), keepdim=True) + 1e-5)
        return y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


torch.manual_seed(0)
torch.set_num_threads(1)
net = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1, bias=False), BN(64), nn.ReLU(), nn.MaxPool2d(3),
                    nn.AdaptiveAvgPool2d(3), nn.Flatten(), nn.Linear(576, 10))
params = {k: v.detach() for k, v in net.named_parameters()}
x, y = torch.relu(torch.randn(4, 64, 10, 10)), torch.arange(4)


def loss(p, x):
    return nn.functional.cross_entropy(torch.func.functional_call(net, p, (x,)), y)


table = {}
if "--workaround" in sys.argv:  # gradleak's gather form of the max-pool backward: then ~1e-6
    from gradleak.backends.inductor_workarounds import TRACE_DECOMPOSITIONS as table
gm = make_fx(torch.func.grad(loss), decomposition_table=table)(params, x)
# make every intermediate an output (as in a larger graph that still needs them later)
nodes = [n for n in gm.graph.nodes if n.op not in ("placeholder", "output")]
gm.graph.erase_node([n for n in gm.graph.nodes if n.op == "output"][0])
gm.graph.output(tuple(nodes))
gm.graph._codegen = torch.fx.graph.CodeGen()  # flat inputs and outputs
gm.recompile()
flat = [*params.values(), x]

ref = gm(*flat)
out = torch.compile(gm, dynamic=False)(*flat)
errors = sorted(((float((o - r).abs().max()) / (float(r.abs().max()) + 1e-30), n.format_node())
                for n, o, r in zip(nodes, out, ref) if torch.is_tensor(r) and r.is_floating_point() and r.numel()),
               reverse=True)
print("worst relative errors of Inductor against eager over the intermediates:")
for e, node in errors[:3]:
    print(f"  {e:.2e}  {node[:150]}")
