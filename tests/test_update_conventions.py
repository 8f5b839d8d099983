"""One invariant over every consumer of an Observation (issue 22, item 6): the client's upload stated as
old − new (Δ = θ_0 − θ_τ), new − old or the new weights θ_τ is the same information, so every consumer —
the attacks' objectives, label recovery, the defense estimate and ``distance: auto``, R-GAP's gradient, the
analytic attack, the random-gradient control, GIML's meta-objective, ``gradleak verify`` — gives the same
answer under all three. The observations are captured by the client itself in each convention (with a
top-k defense, applied to Δ by the client) — not converted by the code under test."""
import pytest
import torch
from torch import nn

from gradleak.attacks import build_attack
from gradleak.attacks.engine import Objective, SearchContext, objective_value
from gradleak.case import Case, capture
from gradleak.defenses import build_defenses
from gradleak.fl.protocol import Protocol
from gradleak.models import build_model, init_model

CONVENTIONS = ["old_minus_new", "new_minus_old", "new_weights"]


def _lenet_case(convention: str, n: int = 2, steps: int = 2) -> tuple:
    model = build_model("lenet", 10, 1, 16, width=4)
    init_model(model, 0)
    g = torch.Generator().manual_seed(3)
    x, y = torch.rand(n, 1, 16, 16, generator=g), torch.tensor([3, 7])[:n]
    proto = Protocol(kind="fedavg", local_steps=steps, lr=0.1, local_batch_size=1, momentum=0.5, update=convention)
    obs = capture(Case(model, x, y, proto, build_defenses([{"name": "topk", "sparsity": 0.5}]), give_labels=True))
    return obs, x, y


def _mlp_case(convention: str) -> tuple:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    x, y = torch.rand(1, 1, 4, 4), torch.tensor([2])
    obs = capture(Case(model, x, y, Protocol(kind="fedavg", lr=0.1, update=convention), give_labels=True))
    return obs, x, y


def _objective(obs, x, y, distance):
    """The search's objective at the true and at a perturbed batch (the engine reads the upload as Δ)."""
    obs = obs.as_delta()
    names = list(obs.parameters)
    ctx = SearchContext(obs.build_model(), obs, names, [obs.update[n] for n in names])
    trial = torch.stack([x, (x + 0.1 * torch.rand(x.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)])
    return objective_value(ctx, Objective(distance=distance), trial, torch.stack([y, y])).detach()


def search(obs, x, y):
    rec = build_attack("invertgrad", iterations=3, restarts=1)(obs, obs.labels, seed=0, progress=False)
    return {"images": rec.images, "losses": torch.as_tensor(rec.losses)}


def rog_objective(obs, x, y):
    """ROG's relative L2 (normalised by the upload's norm) on the search's context."""
    atk = build_attack("rog", distance="l2", representation="pixels", enhancer="none")
    o = obs.as_delta()
    names = list(o.parameters)
    ctx = SearchContext(o.build_model(), o, names, [o.update[n] for n in names])
    trial = torch.stack([(x + 0.1 * torch.rand(x.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)])
    return objective_value(ctx, atk.objective(obs), trial, y[None]).detach()


def labels(obs, x, y):
    from gradleak.attacks.labels import class_scores, last_layer, recover_labels

    model = obs.build_model()
    return {"labels": recover_labels(obs, model).float(), "scores": class_scores(last_layer(obs, model))}


def estimate(obs, x, y):
    from gradleak.defenses.estimate import choose_distance, estimate_defense

    e = estimate_defense(obs)
    told = {**obs.__dict__, "defenses": []}  # the distance ``auto`` resolves to from the estimate alone
    return {"sparsity": torch.tensor(e["sparsity"]), "norm": torch.tensor(e["norm"]),
            "flags": torch.tensor([e["sign_like"], e["quantized"], e["per_layer_clip"]]).float(),
            "auto": torch.tensor(float(["cosine", "masked_cosine", "tanh_sign"].index(
                choose_distance(type(obs)(**told)))))}


def control(obs, x, y):
    from gradleak.attacks.generative import control_observation

    c = control_observation(obs, seed=0).as_delta()
    return {n: c.update[n] for n in c.update}


def verify(obs, x, y):
    from gradleak.deploy import verify_observation

    wrong = (x + 0.05 * torch.rand(x.shape, generator=torch.Generator().manual_seed(2))).clamp(0, 1)
    return {"true": torch.tensor(verify_observation(obs, x, y).overall),
            "perturbed": torch.tensor(verify_observation(obs, wrong, y).overall)}


def giml_task_cost(obs, x, y):
    from gradleak.giml import GIMLConfig, initial_prior
    from gradleak.giml.meta import task_cost

    cfg = GIMLConfig(latent_dim=8, width=4, distance="cosine")
    torch.manual_seed(0)
    prior = initial_prior(cfg, tuple(obs.image_shape))
    z = prior.sample_latent(obs.num_images, torch.Generator().manual_seed(0))
    return task_cost(prior, obs, z, obs.labels, obs.build_model(), cfg).detach()


def rgap_gradient(obs, x, y):
    from gradleak.attacks.rgap import observed_gradient

    return observed_gradient(obs)


def fc_analytic(obs, x, y):
    return build_attack("fc-analytic")(obs, obs.labels, progress=False).images


CONSUMERS = {  # name -> (the observation's case, the consumer)
    "search_objective_l2": (_lenet_case, lambda o, x, y: _objective(o, x, y, "l2")),
    "search_objective_cosine": (_lenet_case, lambda o, x, y: _objective(o, x, y, "cosine")),
    "invertgrad_search": (_lenet_case, search),
    "rog_relative_l2": (_lenet_case, rog_objective),
    "label_recovery": (_lenet_case, labels),
    "defense_estimate_and_auto_distance": (_lenet_case, estimate),
    "random_gradient_control": (_lenet_case, control),
    "deploy_verify": (_lenet_case, verify),
    "giml_task_cost": (_lenet_case, giml_task_cost),
    "rgap_observed_gradient": (lambda c: _lenet_case(c, n=1, steps=1), rgap_gradient),
    "fc_analytic": (_mlp_case, fc_analytic),
}


def _close(a, b, where):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _close(a[k], b[k], f"{where}[{k}]")
        return
    # new weights carry Δ as θ_0 − θ_τ, exact up to float32 rounding of θ_0's magnitude
    torch.testing.assert_close(a.double(), b.double(), rtol=1e-4, atol=1e-5, msg=lambda m: f"{where}: {m}")


@pytest.mark.parametrize("convention", CONVENTIONS[1:])
@pytest.mark.parametrize("consumer", list(CONSUMERS))
def test_every_consumer_reads_every_convention_alike(consumer, convention):
    case, fn = CONSUMERS[consumer]
    ref_obs, x, y = case("old_minus_new")
    obs, _, _ = case(convention)
    assert obs.protocol.update == convention
    _close(fn(obs, x, y), fn(ref_obs, x, y), f"{consumer} under {convention}")


def test_the_conventions_differ_on_the_wire():
    """The three observations are not the same tensors (else the test above would prove nothing)."""
    a, b, c = (_lenet_case(conv)[0] for conv in CONVENTIONS)
    n = "conv.0.weight" if "conv.0.weight" in a.update else next(iter(a.update))
    assert torch.allclose(b.update[n], -a.update[n]) and not torch.allclose(b.update[n], a.update[n])
    assert torch.allclose(c.update[n], a.parameters[n] - a.update[n], atol=1e-7)
