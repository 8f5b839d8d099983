"""Gradient inversion to meta-learn a generative model (GIML; Jeon et al., 2021, §4.2, Algorithm 2).

Given a task set S = {(θ_i, g_i)} (:mod:`gradleak.giml.tasks`), learn generator weights w from the uploads
alone — no images:

    1: initialise w randomly (an untrained DCGAN by default, or a given prior)
    2: while not done:
    3:     sample N tasks (θ_1, g_1) … (θ_N, g_N) from S
    4:     w' ← w
    5-7:   z*_i ← argmin_{z_i} c(G_{w'}(z_i1), …, G_{w'}(z_iB); θ_i, g_i) + λ Σ_j ‖z_ij‖₂     (latent search)
    8-10:  τ times: w' ← w' − α ∇_{w'} Σ_i c(G_{w'}(z*_i1), …, G_{w'}(z*_iB); θ_i, g_i)    (meta search)
    11:    w ← (1 − β) w + β w'

c is the GIAS cost: gradient distance d between the re-run client upload at θ_i and g_i (the client's own
code, :func:`gradleak.fl.client.batched_update`) plus λ_TV·TV. Line 6 is the one search engine
(:func:`gradleak.attacks.engine.search`) over the :class:`~gradleak.attacks.generative.Latent`
parametrization with the extra λ Σ_j ‖z_j‖₂ term (a sum over the B images, as written in Algorithm 2;
Adam, GIAS's lr_z and ×0.1 schedule); line 9 is plain gradient descent with step α, exactly as written.
Labels are the observation's when the server was told them, else recovered (Yin et al.).

:func:`train_giml` runs the loop with a progress bar and writes into ``out``::

    checkpoint.safetensors/.json   resume point every K steps (w, RNG state, step, history); also loadable as a prior
    steps/step_XXXXXX.*            the generator G_{w(t)} at every checkpoint, each a prior file (attack.options.prior=…)
    samples/step_XXXXXX.png        G_{w(t)}(z) for fixed z;  samples.png: one row per checkpoint, same z (Figure 4a)
    history.csv, loss.png          per step: the meta cost Σ_i c before and after the τ steps, latent-search cost
    prior.safetensors/.json        the final generator: ``attack.options.prior=OUT`` for gi-z / gi-zw / …

Every outer step depends only on (w, RNG state), both checkpointed; an interrupted run (Ctrl-C) first writes a
checkpoint of its last completed step, so a resumed run loses no completed step and ends bit-identical to an
uninterrupted one (tested).
"""
from __future__ import annotations

import copy
import csv
import io
import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from gradleak.attacks.engine import Objective, SearchContext, Stage, objective_value, search
from gradleak.attacks.generative import Latent
from gradleak.attacks.objectives import DISTANCES
from gradleak.errors import UserError, bad_value
from gradleak.fl.observation import Observation
from gradleak.giml.tasks import TaskSet
from gradleak.filepair import write_pair
from gradleak.priors.checkpoint import FORMAT, VERSION, generator_state, read_pair, save_prior
from gradleak.priors.dcgan import DCGANGenerator, dcgan_init_
from gradleak.priors.prior import Prior, load_prior
from gradleak.trainconfig import GIMLConfig  # noqa: F401  (Algorithm 2's settings; re-exported)
from gradleak.trainstate import changed_settings, incomplete, say_interrupted

Weights = dict[str, Tensor]
FREE_KEYS = ("steps", "checkpoint_every")  # may change on resume


# --- the generator w ------------------------------------------------------------------------------------

def initial_prior(cfg: GIMLConfig, image_shape: tuple[int, int, int]) -> Prior:
    """Line 1: a randomly initialised DCGAN (seeded; BN statistics calibrated on random latents so its eval
    mode is well scaled), matching the tasks' channels and resolution, or a copy of ``cfg.prior``."""
    if cfg.prior is not None:
        prior = load_prior(cfg.prior)
        if not isinstance(prior.net, DCGANGenerator):
            raise bad_value("giml --prior", cfg.prior, "a DCGAN prior (a built-in name or a gradleak prior file)")
        return Prior(copy.deepcopy(prior.net), prior.latent_shape, output_range=prior.output_range,
                     num_classes=prior.num_classes, name=f"giml from {cfg.prior}", meta=dict(prior.meta),
                     reinit=dcgan_init_)
    C, H, _ = image_shape
    resolution = 64 if H > 32 else 32
    net = DCGANGenerator(cfg.latent_dim, cfg.width, C, resolution)
    base = Prior(net, net.latent_shape, name="giml", meta={"arch": "dcgan"}, reinit=dcgan_init_)
    prior = base.untrained(torch.Generator().manual_seed(cfg.seed))
    prior.name, prior.meta = "giml", {"arch": "dcgan"}
    return prior


def adapted(prior: Prior) -> list[str]:
    """The generator parameters that form w (all of a DCGAN's; BN running statistics stay fixed)."""
    return prior.adapt_names()


def get_weights(prior: Prior) -> Weights:
    params = dict(prior.net.named_parameters())
    return {n: params[n].detach().clone() for n in adapted(prior)}


@torch.no_grad()
def set_weights(prior: Prior, w: Weights) -> None:
    params = dict(prior.net.named_parameters())
    for n, t in w.items():
        params[n].copy_(t)


# --- one outer step (lines 3-11) -----------------------------------------------------------------------------

def _labels(obs: Observation, model: nn.Module) -> Tensor:
    if obs.labels is not None:
        return obs.labels
    from gradleak.attacks.labels import recover_labels

    return recover_labels(obs, model)


def _distance(cfg: GIMLConfig, obs: Observation) -> str:
    if cfg.distance != "auto":
        return cfg.distance
    from gradleak.defenses.estimate import choose_distance

    return choose_distance(obs)


def task_cost(prior: Prior, obs: Observation, z: Tensor, labels: Tensor, model: nn.Module, cfg: GIMLConfig) -> Tensor:
    """c(G_w(z_1), …, G_w(z_B); θ, g) for one task, differentiable w.r.t. the generator weights (scalar)."""
    raw = prior.generate(z, labels if prior.conditional else None)
    images = prior.to_pixels(raw, tuple(obs.image_shape)).unsqueeze(0)
    obs = obs.as_delta()  # as the latent search (gradleak.attacks.engine.search) reads it
    names = list(obs.parameters)
    ctx = SearchContext(model, obs, names, [obs.update[n] for n in names])
    return objective_value(ctx, Objective(distance=_distance(cfg, obs), tv=cfg.tv), images, labels[None])[0]


def latent_search(prior: Prior, obs: Observation, labels: Tensor, model: nn.Module, cfg: GIMLConfig,
                  seed: int) -> tuple[Tensor, float]:
    """Line 6: z*_i = argmin_z c(G_w'(z)) + λ Σ_j ‖z_j‖₂ — the engine's search over :class:`Latent`.
    Returns z* (B, *latent_shape) and the final objective."""
    lat = Latent(prior)
    lat.labels = labels

    def z_norm(_images, _ctx):
        return lat.z.flatten(2).norm(dim=-1).sum(-1)  # Σ_j ‖z_ij‖₂ per restart

    objective = Objective(distance=_distance(cfg, obs), tv=cfg.tv, regularizers=[(cfg.lam, z_norm)] if cfg.lam else [])
    if cfg.latent_iterations == 0:
        z = prior.sample_latent(obs.num_images, torch.Generator().manual_seed(seed))
        return z, math.nan
    rec = search(obs, [Stage("z", lat, cfg.latent_iterations, cfg.lr_z)], objective, labels, restarts=1, seed=seed,
                 model=model, progress=False, name="giml-z")
    return lat.z.detach()[0].clone(), float(rec.losses[0])


def giml_step(prior: Prior, w: Weights, tasks: list[Observation], model: nn.Module, cfg: GIMLConfig,
              gen: torch.Generator) -> tuple[Weights, dict]:
    """Lines 4–11 for the sampled ``tasks``; returns the new w (``w`` itself is not modified) and statistics
    ({"latent": mean final latent-search objective, "meta": [Σ_i c at each of the τ steps and after],
    "z": the z*_i})."""
    set_weights(prior, w)  # line 4: w' ← w (the prior's module holds w')
    found = []
    for obs in tasks:  # lines 5-7
        labels = _labels(obs, model)
        z, loss = latent_search(prior, obs, labels, model, cfg, int(torch.randint(0, 2 ** 62, (1,), generator=gen)))
        found.append((obs, z, labels, loss))
    names = adapted(prior)
    params = dict(prior.net.named_parameters())
    wp = [params[n] for n in names]
    meta = []
    for p in wp:
        p.requires_grad_(True)
    try:
        for t in range(cfg.tau + 1):  # lines 8-10 (the extra pass only measures the cost after the τ steps)
            total = sum(task_cost(prior, obs, z, labels, model, cfg) for obs, z, labels, _ in found)
            meta.append(float(total.detach()))
            if t == cfg.tau:
                break
            grads = torch.autograd.grad(total, wp, allow_unused=True)
            with torch.no_grad():
                for p, g in zip(wp, grads):
                    if g is not None:
                        p.sub_(cfg.alpha * g)  # line 9
    finally:
        for p in wp:
            p.requires_grad_(False)
    w_prime = get_weights(prior)
    new_w = {n: (1 - cfg.beta) * w[n] + cfg.beta * w_prime[n] for n in names}  # line 11
    latent = [f[3] for f in found]
    return new_w, {"latent": sum(latent) / len(latent), "meta": meta, "z": [f[1] for f in found]}


# --- the loop, checkpoints, samples -----------------------------------------------------------------------------

def _full_state(prior: Prior, w: Weights) -> dict[str, Tensor]:
    sd = {k: v.detach().clone() for k, v in prior.net.state_dict().items()}
    sd.update({k: v.clone() for k, v in w.items()})
    return sd


def _save_prior_file(prior: Prior, w: Weights, path: Path, info: dict) -> None:
    net = copy.deepcopy(prior.net)
    net.load_state_dict(_full_state(prior, w))
    save_prior(path, net.eval(), "dcgan", net.config(), {"output_range": list(prior.output_range), **info})


def _history_csv(history: list[dict]) -> str:
    buf = io.StringIO()
    wr = csv.writer(buf, lineterminator="\n")
    wr.writerow(["step", "tasks", "latent_cost", "meta_cost_before", "meta_cost_after", "seconds"])
    for h in history:
        wr.writerow([h["step"], " ".join(map(str, h["tasks"])), f"{h['latent']:.6g}", f"{h['meta'][0]:.6g}",
                     f"{h['meta'][-1]:.6g}", f"{h['seconds']:.3f}"])
    return buf.getvalue()


def train_giml(cfg: GIMLConfig, tasks: str | Path | TaskSet, out: str | Path, resume: bool = True,
               progress: bool = True, command: str = "", on_step: Callable[[int], None] | None = None) -> Path:
    """Run GIML (Algorithm 2) on a task set and write ``out`` (see the module docstring); returns the path of
    ``prior.safetensors``. ``on_step(step)`` is called after every completed outer step."""
    from tqdm.auto import tqdm

    from gradleak.report import image_rows, line_plot
    from gradleak.atomic import atomic_write_text

    cfg.check()
    if cfg.distance != "auto" and cfg.distance not in DISTANCES:  # the registry lives above trainconfig's layer
        raise bad_value("giml.distance", cfg.distance, f"{', '.join(DISTANCES)}, auto")
    ts = tasks if isinstance(tasks, TaskSet) else TaskSet.load(tasks)
    first = ts[0]
    model = first.build_model()
    prior = initial_prior(cfg, tuple(first.image_shape))
    out = Path(out)
    ckpt = out / "checkpoint"
    config = asdict(cfg)
    w = get_weights(prior)
    rng = torch.Generator().manual_seed(cfg.seed)
    step, history, elapsed = 0, [], 0.0
    if resume and ckpt.with_suffix(".json").is_file():
        tensors, meta = read_pair(ckpt)
        saved = meta.get("giml_config", {})
        changed = changed_settings(saved, config, FREE_KEYS)
        if changed:
            raise UserError(f"giml: {ckpt}.json was run with different settings ({', '.join(changed)}); "
                            "use a new --out or --no-resume")
        if meta.get("tasks_fingerprint") != ts.fingerprint():
            raise UserError(f"giml: {ckpt}.json was run on another task set; use a new --out or --no-resume")
        try:
            state = generator_state(tensors)
            prior.net.load_state_dict(state)
            w = {n: state[n].clone() for n in w}
            rng.set_state(tensors["rng"])
            step, history, elapsed = int(meta["step"]), list(meta["history"]), float(meta.get("seconds", 0.0))
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise incomplete("giml", ckpt, err, "use a new --out or --no-resume", "GIML checkpoint") from None
    fixed_z = prior.sample_latent(cfg.samples, torch.Generator().manual_seed(10_000 + cfg.seed))
    info = {"dataset": None, "giml": {"tasks": str(getattr(ts, "root", "")), "config": config, "command": command}}
    t0 = time.perf_counter()

    def checkpoint(s: int, weights: Weights, rng_state: Tensor) -> None:
        tensors = {f"generator/{k}": v for k, v in _full_state(prior, weights).items()}
        tensors["rng"] = rng_state
        meta = {"format": FORMAT, "version": VERSION, "kind": "checkpoint", "arch": "dcgan",
                "generator_config": prior.net.config(), "output_range": list(prior.output_range), "step": s,
                "giml_config": config, "tasks_fingerprint": ts.fingerprint(), "history": history,
                "seconds": elapsed + time.perf_counter() - t0, "command": command}
        write_pair(ckpt, tensors, meta)

    def snapshot(s: int, weights: Weights) -> None:
        _save_prior_file(prior, weights, out / "steps" / f"step_{s:06d}", {**info, "giml_step": s})
        rows, labels = [], []
        for f in sorted((out / "steps").glob("step_*.safetensors")):
            p = load_prior(f)
            with torch.no_grad():
                rows.append(p.to_pixels(p.generate(fixed_z), tuple(first.image_shape)).clamp(0, 1))
            labels.append(f"step {int(f.stem.split('_')[1])}")
        image_rows(rows[-1:], labels[-1:], out / "samples" / f"step_{s:06d}.png", scale=2)
        image_rows(rows, labels, out / "samples.png", scale=2)
        atomic_write_text(out / "history.csv", _history_csv(history))
        if history:
            line_plot([h["step"] for h in history],
                      {"meta cost before τ steps": [h["meta"][0] for h in history],
                       "meta cost after τ steps": [h["meta"][-1] for h in history]},
                      out / "loss.png", xlabel="GIML step", ylabel="Σ_i c (N tasks)", title="GIML meta cost",
                      markers=False)

    out.mkdir(parents=True, exist_ok=True)
    if step == 0 and not (out / "steps" / "step_000000.safetensors").is_file():
        snapshot(0, w)
    bar = tqdm(total=cfg.steps, initial=min(step, cfg.steps), desc="giml", disable=not progress, dynamic_ncols=True)
    rng_state = rng.get_state()
    try:
        while step < cfg.steps:
            rng_state = rng.get_state()
            ts0 = time.perf_counter()
            chosen = torch.randperm(len(ts), generator=rng)[:cfg.tasks_per_step].tolist()  # line 3
            w, stats = giml_step(prior, w, [ts[i] for i in chosen], model, cfg, rng)
            stats.pop("z")
            step += 1
            history.append({"step": step, "tasks": chosen, **stats, "seconds": time.perf_counter() - ts0})
            bar.update(1)
            bar.set_postfix(meta=f"{stats['meta'][0]:.4g}→{stats['meta'][-1]:.4g}")
            rng_state = rng.get_state()
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                checkpoint(step, w, rng_state)
                snapshot(step, w)
            if on_step is not None:
                on_step(step)
    except KeyboardInterrupt:
        checkpoint(step, w, rng_state)  # the last completed step: nothing done is lost
        bar.close()
        say_interrupted("giml", step, ckpt)
        raise
    bar.close()
    if not ckpt.with_suffix(".json").is_file() or json.loads(ckpt.with_suffix(".json").read_text())["step"] != step:
        checkpoint(step, w, rng.get_state())
    _save_prior_file(prior, w, out / "prior", {**info, "giml_step": step})
    return out / "prior.safetensors"
