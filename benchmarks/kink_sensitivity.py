"""How far the eager GI-z matching step moves under rounding-size changes of its input (docs/speed.md,
"Session 4"): the image gradient of the cosine distance on the ConvNet w16 BN victim, at uniform images and
a generator's images, against float64 and against 1e-6-relative perturbations of the images, and how many
pre-activations lie within 1e-5 (of the layer's largest) of a ReLU kink. Eager only; ~1 min, 1 thread.

    python benchmarks/kink_sensitivity.py
"""
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import speed as S  # noqa: E402

S._imports()
torch.set_num_threads(1)
from gradleak.backends.fast import FastStep  # noqa: E402
from gradleak.attacks.objectives import DISTANCES  # noqa: E402
from gradleak.fl.functional_bn import functional_model  # noqa: E402
from gradleak.priors import load_prior  # noqa: E402

model, obs, y = S.victim_case("convnet", 16, 4, "fedsgd", "cpu")
names = list(obs.parameters)
observed = [obs.update[n] for n in names]
img_fn, _ = S._param_factory("z", load_prior("photos"))(1, 4, "cpu", torch.Generator().manual_seed(1))
generated = img_fn().detach()
uniform = torch.rand(generated.shape, generator=torch.Generator().manual_seed(0))
fs = FastStep(model, obs.protocol, dict(model.named_parameters()), dict(model.named_buffers()), observed,
              DISTANCES["cosine"])
m64 = copy.deepcopy(model).double()
fs64 = FastStep(m64, obs.protocol, dict(m64.named_parameters()), dict(m64.named_buffers()),
                [o.double() for o in observed], DISTANCES["cosine"])
lab = y.unsqueeze(0)
fm = functional_model(model)
model.train(), fm.train()
print("torch", torch.__version__, "1 thread; relative = max abs difference / max abs of the image gradient")
for name, x in (("uniform", uniform), ("G(z)", generated)):
    ref = fs.eager_step(x, lab)
    scale = float(ref[1].abs().max())
    f64 = float((ref[1].double() - fs64.eager_step(x.double(), lab)[1]).abs().max()) / scale
    moves = []
    for s in range(4):
        xp = x * (1 + 1e-6 * torch.randn(x.shape, generator=torch.Generator().manual_seed(10 + s)))
        moves.append(float((fs.eager_step(xp, lab)[1] - ref[1]).abs().max()) / scale)
    h, near = x[0], []
    for lname, layer in fm.features.named_children():
        if isinstance(layer, torch.nn.ReLU):
            near.append(int((h.abs() < 1e-5 * h.abs().max()).sum()))
        h = layer(h)
    print(f"{name:8s} f32 vs f64 {f64:.1e} | under 1e-6 perturbations: {' '.join(f'{m:.1e}' for m in moves)}"
          f" | pre-activations near a kink per ReLU: {near}")
