"""The privacy–utility trade-off of ROG §5.2 / Figure 9a: for every defense setting, the test accuracy of
a model trained by FedAvg under it (utility) against how much an attack reconstructs under it (leakage).

Utility: :func:`gradleak.experiments.simulation.simulate_fedavg` on a held-out classification task (default: the
built-in digits at 32×32 RGB, public side split over 100 clients by Dir(α = 0.5), 10 clients per round, τ = 5
local steps of b = 16, lr 0.05), accuracy on the task's private side. Leakage: ROG and InvertGrad on a
FedAvg client (τ = 5, lr 5e-3, full local batch) holding a batch of the built-in photos at 64×64, under the
same defense, scored by PSNR / SSIM (and LPIPS when its weights are installed) after optimal matching.
Both use the same victim architecture (ROG's LeNet-5, :mod:`gradleak.experiments.victims`; PRECODE wraps it);
the attacked model is the freshly initialised one (seeded), as in the paper's reconstruction experiments.

How the paper's scale maps to this one (defaults): CIFAR-10 (50 000 images) → digits public side (898);
100 clients, α = 0.5, 10 per round → the same; 100 rounds → 30 (``rounds``); ImageNet 128×128, B = 16 →
photos 64×64, B = 4; LeNet-5 (32, 64, 512) → (16, 32, 256); InvertGrad 20 000 / ROG 100 iterations → 300 / 100.

Settings (``settings``): ``none``, ``soteria[:rate]`` (80 %), ``precode[:bottleneck]`` (the PRECODE model,
white-box), ``fedcdp-eps:<ε>`` (C = 4, δ = 1e-5, σ from Opacus for the target ε; the default sweeps
ε = 1, 4, 16, 64), ``fedcdp:<SNR dB>`` (C = 4, SNR over the clipped gradient; −20…0 dB in the paper),
``quantize[:bits]`` (3), ``qsgd[:bits]`` (3), ``topk[:sparsity]`` (0.95), ``noise:<SNR dB>``.

FedCDP's stated privacy setting (its accounting, :mod:`gradleak.defenses.fedcdp`): ``rounds`` = the
trade-off's rounds (as if a client took part in every round: the worst case), τ = 5 noisy steps per round,
``dataset_size`` = 500 (FedCDP's default) so the sample rate is q = b / 500 — b = 16 for a training client,
the attack batch for the attacked client — and δ = 1e-5. σ = √L · z(ε, δ, q, T) therefore differs between
the two sides (a smaller q needs less noise for the same ε); the table's ε is the accounted one.

Writes ``results.json`` (every number and the configuration), ``tradeoff.md`` (the table),
``tradeoff_psnr.png`` (accuracy vs PSNR, one marker per attack, drawn with
:func:`gradleak.report.scatter_plot`), ``tradeoff_lpips.png`` when LPIPS is available and
``reconstructions.png`` (one row per setting and attack, originals on top).
"""
from __future__ import annotations

import json
import math
import multiprocessing as mp
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from gradleak.errors import UserError, bad_value
from gradleak.experiments.simulation import Federation
from gradleak.experiments.victims import ROG_LENET5

DEFAULT_SETTINGS = ("none", "soteria", "precode", "fedcdp-eps:1", "fedcdp-eps:4", "fedcdp-eps:16", "fedcdp-eps:64",
                    "quantize", "topk")
SETTING_FORMS = ("none, soteria[:rate], precode[:bottleneck], fedcdp-eps:<epsilon>, fedcdp:<snr_db>, quantize[:bits], "
                 "qsgd[:bits], topk[:sparsity], noise:<snr_db>")
#: δ of the ``fedcdp-eps`` settings
DP_DELTA = 1e-5
ATTACK_NAMES = ("rog", "invertgrad")


@dataclass
class Setting:
    name: str
    defense: list[dict] = field(default_factory=list)
    precode: int | None = None  # PRECODE bottleneck when the model is wrapped


def _num(text: str, key: str, cast=float):
    try:
        v = cast(text)
    except ValueError:
        raise bad_value(key, text, "a number" if cast is float else "an integer") from None
    if isinstance(v, float) and not math.isfinite(v):
        raise bad_value(key, text, "a finite number")
    return v


def parse_setting(text: str) -> Setting:
    """``name[:value]`` → :class:`Setting` (see the module docstring); one-line UserError otherwise."""
    if not isinstance(text, str) or not text.strip():
        raise bad_value("tradeoff.settings", text, SETTING_FORMS)
    name, _, arg = text.strip().partition(":")
    key = f"tradeoff.settings[{text}]"
    if name == "none" and not arg:
        return Setting("none")
    if name == "soteria":
        rate = _num(arg, key) if arg else 0.8
        return Setting(f"soteria {rate:g}", [{"name": "soteria", "pruning_rate": rate}])
    if name == "precode":
        k = _num(arg, key, int) if arg else 256
        if k < 1:
            raise bad_value(key, arg, "a bottleneck size >= 1")
        return Setting("precode", [], precode=k)
    if name == "fedcdp-eps" and arg:
        eps = _num(arg, key)
        if eps <= 0:
            raise bad_value(key, arg, "an epsilon > 0")
        return Setting(f"fedcdp ε={eps:g}", [{"name": "fedcdp", "clip": 4.0, "epsilon": eps, "delta": DP_DELTA}])
    if name == "fedcdp" and arg:
        snr = _num(arg, key)
        return Setting(f"fedcdp {snr:g} dB", [{"name": "fedcdp", "clip": 4.0, "snr_db": snr}])
    if name in ("quantize", "qsgd"):
        bits = _num(arg, key, int) if arg else 3
        return Setting(f"{name} {bits}-bit", [{"name": name, "bits": bits}])
    if name == "topk":
        s = _num(arg, key) if arg else 0.95
        return Setting(f"topk {s:g}", [{"name": "topk", "sparsity": s}])
    if name == "noise" and arg:
        snr = _num(arg, key)
        return Setting(f"noise {snr:g} dB", [{"name": "noise", "snr_db": snr}])
    raise bad_value("tradeoff.settings", text, SETTING_FORMS)


@dataclass
class TradeoffConfig(Federation):
    """The trade-off: utility is FedAvg of the :class:`~gradleak.experiments.simulation.Federation` (rounds,
    clients, α, per round, τ, b) on the classification ``task``; leakage is the attacked client's."""

    settings: list[str] = field(default_factory=lambda: list(DEFAULT_SETTINGS))
    attacks: list[str] = field(default_factory=lambda: list(ATTACK_NAMES))
    task: str = "digits"
    task_resolution: int = 32
    task_lr: float = 0.05
    # the victim architecture (options for it) used on both sides
    model: str = ROG_LENET5
    model_options: dict = field(default_factory=dict)
    # leakage: the attacked client
    attack_data: str = "photos"
    attack_resolution: int = 64
    attack_batch: int = 4
    attack_batches: int = 1
    client_lr: float = 5e-3
    rog_iterations: int = 100
    invertgrad_iterations: int = 300
    enhancer: str = "auto"
    workers: int = 2
    seed: int = 0

    def check(self) -> list[Setting]:
        if not self.settings:
            raise bad_value("tradeoff.settings", self.settings, SETTING_FORMS)
        parsed = [parse_setting(s) for s in self.settings]
        for s in parsed:  # FedCDP's stated setting: every client may take part in every round (worst case)
            for d in s.defense:
                if d["name"] == "fedcdp":
                    d.setdefault("rounds", self.rounds)
        from gradleak.defenses import build_defenses

        for s in parsed:
            try:
                build_defenses(s.defense)
            except UserError as err:
                raise UserError(f"tradeoff.settings[{s.name}]: {err}") from None
        for a in self.attacks:
            if a not in ATTACK_NAMES:
                raise bad_value("tradeoff.attacks", a, ", ".join(ATTACK_NAMES))
        for key, ok, allowed in (
            ("rounds", self.rounds >= 1, "an integer >= 1"),
            ("attack_batch", self.attack_batch >= 1, "an integer >= 1"),
            ("attack_batches", self.attack_batches >= 0, "an integer >= 0"),
            ("rog_iterations", self.rog_iterations >= 1, "an integer >= 1"),
            ("invertgrad_iterations", self.invertgrad_iterations >= 1, "an integer >= 1"),
            ("workers", self.workers >= 1, "an integer >= 1"),
            ("client_lr", self.client_lr > 0, "a number > 0"),
        ):
            if not ok:
                raise bad_value(f"tradeoff.{key}", getattr(self, key), allowed)
        self.fedavg().check()
        from gradleak.data import load_dataset

        for name, res in ((self.task, self.task_resolution), (self.attack_data, self.attack_resolution)):
            load_dataset(name, split="private", resolution=res, channels=3, limit=1)  # validates name/resolution
        return parsed

    def fedavg(self):
        from gradleak.experiments.simulation import FedAvgConfig

        return FedAvgConfig(**self.federation(), lr=self.task_lr, seed=self.seed)


def _victim(cfg: TradeoffConfig, setting: Setting, seed: int) -> tuple[str, dict]:
    """The victim's model name and options: the trade-off's model, wrapped by PRECODE (white-box) in a
    ``precode`` setting."""
    if setting.precode:
        return "precode", {"base": cfg.model, "base_options": dict(cfg.model_options), "bottleneck": setting.precode,
                           "seed": seed}
    return cfg.model, dict(cfg.model_options)


def _build_model(cfg: TradeoffConfig, setting: Setting, num_classes: int, resolution: int, seed: int):
    from gradleak.models import build_model, init_model

    name, options = _victim(cfg, setting, seed)
    model = build_model(name, num_classes, 3, resolution, **options)
    init_model(model, seed)
    return model


def _train_job(cfg: TradeoffConfig, setting: Setting) -> dict:
    from gradleak.data import load_dataset
    from gradleak.defenses import build_defenses
    from gradleak.experiments.simulation import simulate_fedavg

    train = load_dataset(cfg.task, split="public", resolution=cfg.task_resolution, channels=3)
    test = load_dataset(cfg.task, split="private", resolution=cfg.task_resolution, channels=3)
    model = _build_model(cfg, setting, train.num_classes, cfg.task_resolution, cfg.seed)
    res = simulate_fedavg(model, train, test, build_defenses(setting.defense), cfg.fedavg())
    return {"kind": "train", "setting": setting.name, "accuracy": res["accuracy"],
            "initial_accuracy": res["initial_accuracy"], "seconds": res["seconds"]}


def _attack_job(cfg: TradeoffConfig, setting: Setting, attack: str, batch: int) -> dict:
    """One audit of the setting's victim, described as a run config (:func:`gradleak.audit.build_case` and
    :func:`gradleak.audit.audit_case`, as ``gradleak run``): ROG, or InvertGrad with the distance that sees
    through the defense (``auto``: masked cosine for sparsifiers, tanh-sign for signSGD)."""
    import torch

    from gradleak.attacks.presets import InvertGrad
    from gradleak.attacks.rog import ROG
    from gradleak.audit import audit_case, build_case
    from gradleak.config import validate_config

    seed = cfg.seed + batch
    name, options = _victim(cfg, setting, seed)
    run_cfg = validate_config({"seed": seed, "data": {"name": cfg.attack_data, "resolution": cfg.attack_resolution,
                                                      "channels": 3, "batch_size": cfg.attack_batch,
                                                      "distinct_labels": False},
                               "model": {"name": name, "options": options},
                               "client": {"protocol": "fedavg", "local_steps": cfg.local_steps, "lr": cfg.client_lr},
                               "defense": setting.defense, "attack": {"name": attack, "labels": "oracle"},
                               "metrics": {"tagger": "none"}})
    if attack == "rog":
        atk = ROG(iterations=cfg.rog_iterations, enhancer=cfg.enhancer)
    else:
        atk = InvertGrad(iterations=cfg.invertgrad_iterations, distance="auto")
    r = audit_case(run_cfg, build_case(run_cfg), atk)  # the victim as a run config: gradleak run's case
    x = r.case.images
    obs, s, cal = r.observation, r.scores, r.calibration  # references on the same matched originals
    refs = cal.reference
    best_ref = [max(refs[n]["psnr"][i] for n in ("grey", "public_mean", "same_class")
                    if n in refs and refs[n]["psnr"][i] is not None) for i in range(len(x))]
    fed = next((d for d in obs.defenses if d.get("name") == "fedcdp"), {})
    eps, sigma = fed.get("epsilon"), fed.get("sigma_used")
    sigma = sigma[0] if isinstance(sigma, list) else sigma  # FedAvg: the same σ at every local step
    return {"kind": "attack", "setting": setting.name, "attack": attack, "batch": batch, "sigma": sigma,
            "ref_psnr": sum(best_ref) / len(best_ref), "margin_psnr": cal.margins["psnr"]["mean"],
            "margin_ssim": cal.margins["ssim"]["mean"], "verdict": cal.verdict["batch"],
            "psnr": s.psnr["mean"], "ssim": s.ssim["mean"], "lpips": None if s.lpips is None else s.lpips["mean"],
            "seconds": r.timing.attack, "iterations": r.reconstruction.iterations, "epsilon": eps,
            "images": r.matched.to(torch.float16), "originals": x.to(torch.float16)}


def _run_job(job):
    import torch

    torch.set_num_threads(1)
    kind, cfg, setting, *rest = job
    return _train_job(cfg, setting) if kind == "train" else _attack_job(cfg, setting, *rest)


def _mean(vals):
    vals = [v for v in vals if v is not None]
    return sum(vals) / len(vals) if vals else None


def run_tradeoff(cfg: TradeoffConfig, out: str | Path, progress: bool = True) -> dict:
    """Run every (setting × {training, attacks}) job in ``cfg.workers`` processes and write the outputs
    (see the module docstring). Returns the summary dict written to ``results.json``."""
    from tqdm.auto import tqdm

    from gradleak.report import image_rows, scatter_plot
    from gradleak.atomic import atomic_write_json, atomic_write_text

    settings = cfg.check()
    out = Path(out)
    jobs = [("attack", cfg, s, a, b) for a in ("invertgrad", "rog") if a in cfg.attacks
            for s in settings for b in range(cfg.attack_batches)]
    jobs += [("train", cfg, s) for s in settings]
    t0 = time.time()
    results = []
    bar = tqdm(total=len(jobs), desc="tradeoff", disable=not progress, dynamic_ncols=True)
    if cfg.workers <= 1:
        for j in jobs:
            results.append(_run_job(j))
            bar.update(1)
    else:
        with mp.get_context("spawn").Pool(min(cfg.workers, len(jobs))) as pool:
            for r in pool.imap(_run_job, jobs, chunksize=1):
                results.append(r)
                bar.update(1)
    bar.close()
    wall = time.time() - t0
    rows = []
    for s in settings:
        row = {"setting": s.name, "defense": s.defense, "precode": s.precode}
        tr = next(r for r in results if r["kind"] == "train" and r["setting"] == s.name)
        row["accuracy"], row["initial_accuracy"], row["train_seconds"] = tr["accuracy"], tr["initial_accuracy"], tr["seconds"]
        for a in cfg.attacks:
            rs = [r for r in results if r["kind"] == "attack" and r["setting"] == s.name and r["attack"] == a]
            for m in ("psnr", "ssim", "lpips", "seconds", "ref_psnr", "margin_psnr", "margin_ssim"):
                row[f"{a}_{m}"] = _mean([r[m] for r in rs])
            levels = [r["verdict"] for r in rs]
            row[f"{a}_verdict"] = max(levels, key=("none", "partial", "recognisable").index) if levels else None
            if rs and rs[0]["epsilon"] is not None:
                row["epsilon"] = rs[0]["epsilon"]
                row["sigma_attacked"] = rs[0]["sigma"]
        rows.append(row)
    have_lpips = any(row.get(f"{a}_lpips") is not None for row in rows for a in cfg.attacks)
    summary = {"config": asdict(cfg), "rows": rows, "wall_seconds": wall, "lpips_available": have_lpips}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "results.json", summary)
    atomic_write_text(out / "tradeoff.md", format_table(summary) + "\n")
    label = {"rog": "ROG", "invertgrad": "InvertGrad"}
    for metric, xl in (("psnr", "attack PSNR (dB) — more leakage →"), ("lpips", "attack LPIPS — more privacy →")):
        if metric == "lpips" and not have_lpips:
            continue
        pts = [{"x": row[f"{a}_{metric}"], "y": row["accuracy"], "label": row["setting"], "group": label[a]}
               for row in rows for a in cfg.attacks]
        scatter_plot(pts, out / f"tradeoff_{metric}.png", xlabel=xl, ylabel=f"test accuracy ({cfg.task}, FedAvg)",
                     title=f"privacy–utility trade-off ({cfg.rounds} rounds)")
    grid_rows, grid_labels = [], []
    firsts = [r for r in results if r["kind"] == "attack" and r["batch"] == 0]
    if firsts:
        grid_rows.append(firsts[0]["originals"].float())
        grid_labels.append("original")
        for s in settings:
            for a in cfg.attacks:
                r = next((r for r in firsts if r["setting"] == s.name and r["attack"] == a), None)
                if r is not None:
                    grid_rows.append(r["images"].float())
                    grid_labels.append(f"{label[a]}, {s.name}")
        image_rows(grid_rows, grid_labels, out / "reconstructions.png", scale=max(1, 64 // cfg.attack_resolution))
    return summary


def format_table(summary: dict) -> str:
    """Markdown table of a :func:`run_tradeoff` summary."""
    cfg, rows = summary["config"], summary["rows"]
    attacks = cfg["attacks"]
    label = {"rog": "ROG", "invertgrad": "InvertGrad"}
    head = "| setting | ε (FedCDP) | accuracy |"
    sep = "|---|---:|---:|"
    for a in attacks:
        head += f" {label[a]} PSNR | {label[a]} SSIM | {label[a]} LPIPS | {label[a]} ΔPSNR / ΔSSIM vs best ref | " \
                f"{label[a]} verdict |"
        sep += "---:|---:|---:|---:|---|"
    lines = [head, sep]

    def f(v, d=2):
        return "–" if v is None else (f"{v:.{d}f}" if isinstance(v, float) else str(v))

    for r in rows:
        eps = r.get("epsilon")
        eps_txt = "–" if eps is None else ("∞" if isinstance(eps, str) or eps == math.inf else f"{eps:.3g}")
        line = f"| {r['setting']} | {eps_txt} | {r['accuracy']:.3f} |"
        for a in attacks:
            line += (f" {f(r.get(f'{a}_psnr'))} | {f(r.get(f'{a}_ssim'), 3)} | {f(r.get(f'{a}_lpips'), 3)} | "
                     f"{f(r.get(f'{a}_margin_psnr'))} / {f(r.get(f'{a}_margin_ssim'), 3)} | "
                     f"{r.get(f'{a}_verdict') or '–'} |")
        lines.append(line)
    refs = [r.get(f"{a}_ref_psnr") for r in rows for a in attacks if r.get(f"{a}_ref_psnr") is not None]
    note = (f"Utility: {cfg['task']} {cfg['task_resolution']}×{cfg['task_resolution']}, FedAvg {cfg['rounds']} rounds, "
            f"{cfg['num_clients']} clients (Dir α = {cfg['alpha']}), {cfg['clients_per_round']} per round, τ = "
            f"{cfg['local_steps']}, b = {cfg['local_batch_size']}, lr {cfg['task_lr']}. Leakage: {cfg['attack_data']} "
            f"{cfg['attack_resolution']}×{cfg['attack_resolution']}, batch {cfg['attack_batch']} × "
            f"{cfg['attack_batches']}, FedAvg τ = {cfg['local_steps']}, lr {cfg['client_lr']}; ROG "
            f"{cfg['rog_iterations']} iterations, InvertGrad {cfg['invertgrad_iterations']}. Victim {cfg['model']} "
            f"{cfg['model_options'] or '(defaults)'}. Wall time {summary['wall_seconds'] / 60:.1f} min, "
            f"{cfg['workers']} workers.")
    if refs:
        note += (f" References (grey, public mean, random same-class public image where labels are shared) on the "
                 f"same matched originals: best reference PSNR {sum(refs) / len(refs):.2f} dB on average; Δ columns are "
                 "margins over the best reference per image, the verdict is the highest level of any attacked image "
                 "(gradleak.metrics.reference).")
    return "\n".join(lines + ["", note])
