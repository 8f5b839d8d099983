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
