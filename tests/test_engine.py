"""The search engine: batched restarts are independent, the schedule decays, presets behave."""
import pytest
import torch

from gradleak.attacks.engine import Objective, Stage, lr_scheduler, search
from gradleak.attacks.objectives import cosine_distance, l2_distance, total_variation
from gradleak.attacks.parametrizations import Pixels
from gradleak.attacks.presets import DLG, IDLG, InvertGrad
from gradleak.case import Case, capture
from gradleak.fl.protocol import Protocol
from gradleak.metrics import psnr
from gradleak.models import build_model, init_model


def _obs(batch=1, protocol=Protocol()):
    model = build_model("lenet", 10, 1, 16)
    init_model(model, 0)
    spec = {"name": "lenet", "num_classes": 10, "in_channels": 1, "resolution": 16, "options": {}}
    x = torch.rand(batch, 1, 16, 16)
    y = torch.arange(batch)
    return capture(Case(model, x, y, protocol, give_labels=True, model_spec=spec)), x


def test_batched_restarts_equal_independent_runs():
    obs, _ = _obs(batch=2)
    stages = lambda: [Stage("x", Pixels(init="uniform", box=True), 8, 0.05, signed=True)]
    both = search(obs, stages(), Objective(tv=1e-3), obs.labels, restarts=2, seed=5, progress=False)
    # the same two restarts, each run alone: draw the same initial values in the same order
    gen = torch.Generator().manual_seed(5)
    inits = torch.rand(2, 2, 1, 16, 16, generator=gen)
    alone = []
    for r in range(2):
        class Fixed(Pixels):
            def start(self, R, B, shape, prev, g, _x=inits[r:r + 1]):
                return super().start(R, B, shape, _x, g)
        st = [Stage("x", Fixed(init="previous", box=True), 8, 0.05, signed=True)]
        alone.append(search(obs, st, Objective(tv=1e-3), obs.labels, restarts=1, progress=False))
    torch.testing.assert_close(both.all_images, torch.cat([a.all_images for a in alone]), rtol=1e-5, atol=1e-6)
    assert both.best_restart == int(torch.stack([a.losses[0] for a in alone]).argmin())


def test_multistep_schedule_decays_at_fractions():
    x = torch.zeros(1, requires_grad=True)
    opt = torch.optim.Adam([x], lr=1.0)
    sched = lr_scheduler(opt, Stage("x", Pixels(), 80, 1.0))
    lrs = []
    for _ in range(80):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[29] == 1.0 and abs(lrs[30] - 0.1) < 1e-12 and abs(lrs[50] - 0.01) < 1e-12 and abs(lrs[70] - 1e-3) < 1e-12


def test_distances_and_tv():
    g = [torch.randn(3, 4), torch.randn(5)]
    trial = [t.unsqueeze(0).repeat(2, *[1] * t.dim()) for t in g]
    trial[0][1] *= -1
    assert torch.allclose(l2_distance(trial, g)[0], torch.tensor(0.0))
    c = cosine_distance(trial, g)
    assert abs(float(c[0])) < 1e-6 and float(c[1]) > 0
    flat = torch.ones(1, 1, 1, 4, 4)
    assert float(total_variation(flat)) == 0
    assert float(total_variation(torch.rand(1, 1, 1, 4, 4))) > 0


def test_invertgrad_reduces_loss_and_recovers_something():
    obs, x = _obs(batch=1)
    rec = InvertGrad(iterations=60, restarts=1)(obs, labels=obs.labels, progress=False)
    first = rec.trace[0]["loss"]
    assert rec.trace[-1]["loss"] < 0.5 * first
    assert rec.images.shape == x.shape and 0 <= rec.images.min() and rec.images.max() <= 1
    assert float(psnr(rec.images, x)) > 8.0


def _single(label):
    """A batch of one random image with the given label; the server is not told the label."""
    model = init_model(build_model("lenet", 10, 1, 16), 0)
    spec = {"name": "lenet", "num_classes": 10, "in_channels": 1, "resolution": 16, "options": {}}
    gen = torch.Generator().manual_seed(label)
    x = torch.rand(1, 1, 16, 16, generator=gen)
    return capture(Case(model, x, torch.tensor([label]), Protocol(), give_labels=False, model_spec=spec)), model


@pytest.mark.parametrize("label", [0, 3, 7])
def test_dlg_learns_labels_idlg_uses_given(label):
    """DLG learns the right label from the gradient alone (soft labels optimised jointly); iDLG's analytic rule
    recovers it from the last layer, and an attack given labels reports exactly those."""
    from gradleak.attacks.labels import recover_labels

    obs, model = _single(label)
    assert obs.labels is None
    rec = DLG(iterations=2)(obs, labels=None, progress=False)
    assert rec.labels.tolist() == [label]
    recovered = recover_labels(obs, model)
    assert recovered.tolist() == [label]
    given = torch.tensor([(label + 1) % 10])  # a wrong label handed over is used as is, not re-learned
    assert IDLG(iterations=1)(obs, labels=given, progress=False).labels.tolist() == given.tolist()
    assert IDLG.default_labels == "recover" and DLG.default_labels == "learn"


def test_fedavg_attack_runs():
    """InvertGrad on a FedAvg upload (3 local steps): the gradient-matching loss falls in every restart and more
    iterations from the same start reconstruct the images better."""
    obs, x = _obs(batch=2, protocol=Protocol(kind="fedavg", local_steps=3, lr=0.1, local_batch_size=1))
    short = InvertGrad(iterations=4, restarts=2)(obs, labels=obs.labels, seed=0, progress=False)
    rec = InvertGrad(iterations=40, restarts=2)(obs, labels=obs.labels, seed=0, progress=False)
    assert rec.all_images.shape == (2, *x.shape) and torch.isfinite(rec.losses).all()
    for r in range(2):
        losses = [t["loss"] for t in rec.trace if t["restart"] == r]
        assert losses[-1] < 0.5 * losses[0], (r, losses[0], losses[-1])
    assert float(psnr(rec.images, x).mean()) > float(psnr(short.images, x).mean()) + 1.0
