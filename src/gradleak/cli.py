"""The gradleak command line. Each command is a thin wrapper over the Python API (see README)."""
from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path
from typing import List, Optional

import typer

from gradleak.errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Audit how much private data leaks from federated-learning client updates.")


def _summary(metrics: dict, out: Path) -> None:
    lp = metrics.get("lpips")
    lp_txt = f"{lp['mean']:.3f}" if lp else f"unavailable ({metrics.get('lpips_unavailable')})"
    typer.echo(
        f"{metrics['attack']}: PSNR mean {metrics['psnr']['mean']:.2f} dB (best {metrics['psnr']['best']:.2f}), "
        f"SSIM mean {metrics['ssim']['mean']:.3f}, LPIPS {lp_txt}, label accuracy "
        f"{metrics['label_accuracy']:.2f}, {metrics['seconds']:.1f} s\nrun directory: {out} (open report.html)"
    )


def _run_config(path: Optional[Path], out: Path, overrides: List[str], progress: bool) -> None:
    from gradleak.config import load_config
    from gradleak.run import run

    cfg = load_config(path, overrides)
    metrics = run(cfg, out, progress=progress)
    _summary(metrics, out)


@app.command()
def demo(out: Path = typer.Option(Path("runs/demo"), "--out", help="Run directory to write."),
         set_: List[str] = typer.Option([], "--set", help="Override a config key, e.g. attack.options.iterations=200."),
         progress: bool = typer.Option(True, help="Show a progress bar with the current loss.")) -> None:
    """Built-in audit: FedSGD client, LeNet, built-in digits, batch of 4, InvertGrad. No data or network needed."""
    with resources.as_file(resources.files("gradleak.configs") / "demo.yaml") as cfg_path:
        _run_config(cfg_path, out, set_, progress)


@app.command("run")
def run_cmd(config: Path = typer.Argument(..., help="YAML config (sections: seed, data, model, client, defense, attack, metrics)."),
            out: Path = typer.Option(..., "--out", help="Run directory to write."),
            set_: List[str] = typer.Option([], "--set", help="Override a config key (dotted), value parsed as YAML."),
            progress: bool = typer.Option(True, help="Show a progress bar with the current loss.")) -> None:
    """Run any audit case from a YAML config and write its run directory."""
    _run_config(config, out, set_, progress)


@app.command("list")
def list_cmd() -> None:
    """List the registered datasets, models, defenses and attacks."""
    from gradleak.attacks.presets import ATTACKS
    from gradleak.data import DATASETS
    from gradleak.defenses import DEFENSES
    from gradleak.models import MODELS

    for title, reg in (("datasets", DATASETS), ("models", MODELS), ("defenses", DEFENSES), ("attacks", ATTACKS)):
        typer.echo(f"{title}: {', '.join(reg) or '-'}")


@app.command("train-prior")
def train_prior_cmd(
    data: str = typer.Option(..., "--data", help="Dataset whose public side the prior learns (digits, photos, cifar10, folder, ...)."),
    out: Path = typer.Option(..., "--out", help="Directory: checkpoint.*, samples/, prior.safetensors + prior.json."),
    split: str = typer.Option("public", "--split", help="Dataset split to train on (public = the prior-training side)."),
    resolution: int = typer.Option(32, "--resolution", help="32 or 64."),
    channels: int = typer.Option(3, "--channels", help="1 or 3."),
    root: Optional[str] = typer.Option(None, "--root", help="Data root (cifar10/100, folder)."),
    conditional: bool = typer.Option(False, "--conditional/--unconditional", help="Label-conditioned generator."),
    latent_dim: int = typer.Option(64, "--latent-dim", help="Size of z."),
    width: int = typer.Option(32, "--width", help="Base width w of the DCGAN (generator widths 4w, 2w, w at 32x32)."),
    steps: int = typer.Option(3000, "--steps", help="Total training steps (resume continues up to this)."),
    batch_size: int = typer.Option(64, "--batch-size"),
    lr: float = typer.Option(2e-4, "--lr", help="Adam learning rate of both nets (betas 0.5, 0.999)."),
    augment: bool = typer.Option(True, "--augment/--no-augment", help="Random translation of real and fake images before D (DiffAugment)."),
    seed: int = typer.Option(0, "--seed", help="Initialisation, batch order, z and augmentation."),
    sample_every: int = typer.Option(500, "--sample-every", help="Write samples/step_N.png every N steps (0: only first/last)."),
    checkpoint_every: int = typer.Option(500, "--checkpoint-every", help="Write the resume checkpoint every N steps."),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Continue from OUT/checkpoint.* when present."),
    threads: int = typer.Option(0, "--threads", help="torch CPU threads (0: torch's default)."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Train a DCGAN generative prior (and its discriminator) for the GIAS attacks (gi-z, gi-w, gi-zw, ...)."""
    import torch

    from gradleak.priors.train import TrainConfig, train_prior

    if threads:
        torch.set_num_threads(threads)
    cfg = TrainConfig(data=data, split=split, resolution=resolution, channels=channels, root=root,
                      latent_dim=latent_dim, width=width, conditional=conditional, steps=steps,
                      batch_size=batch_size, lr=lr, augment=augment, seed=seed, sample_every=sample_every,
                      checkpoint_every=checkpoint_every)
    path = train_prior(cfg, out, resume=resume, progress=progress)
    typer.echo(f"prior written: {path} (+ .json); use it with attack.options.prior={out}")


def main() -> None:
    """Entry point: user errors print one line and exit 2, no traceback."""
    try:
        app(standalone_mode=False)
    except UserError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("aborted", err=True)
        sys.exit(130)
    except Exception as err:  # click usage errors
        import click

        if isinstance(err, click.ClickException):
            err.show()
            sys.exit(2)
        raise


if __name__ == "__main__":
    main()
