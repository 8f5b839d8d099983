"""The training commands' options, declared once: generated from the trainers' config fields.

:func:`trainer_command` turns a function ``train(cfg, out, progress, resume, **extra) -> message`` into a typer
command whose options are the config's fields (:mod:`gradleak.trainconfig`: flag, default, help), plus what every
training command takes: ``--out`` (checked), ``--threads``, ``--progress/--no-progress`` and, for trainers whose
checkpoints are prior files, ``--resume/--no-resume``. The command validates the config (one line, exit 2)
before the function runs, and prints the message it returns.
"""
import inspect
import typing
from pathlib import Path
from typing import Callable, Optional

import typer

from gradleak.cli_support import checked_out, set_threads
from gradleak.trainconfig import TrainerConfig, cli_fields

THREADS_HELP = "torch CPU threads (0: torch's default)."
RESUME_HELP = "Continue from OUT/checkpoint.* when present."
LAST = ("steps", "seed", "checkpoint_every")


def _option(cls: type[TrainerConfig], f) -> inspect.Parameter:
    meta = cls.meta(f.name)
    flag = meta["flag"] or f"--{f.name.replace('_', '-')}"
    if f.type is bool and "/" not in flag:
        flag = f"{flag}/--no-{flag[2:]}"
    default = ... if meta["required"] else f.default
    hint = typing.get_type_hints(cls)[f.name]
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=hint,
                             default=typer.Option(default, flag, help=cls.help(f.name)))


def trainer_command(app: typer.Typer, cls: type[TrainerConfig], out_help: str, resume: bool = False,
                    extra: Optional[dict[str, tuple[type, object]]] = None) -> Callable:
    """Decorator: register ``cls.command`` on ``app``, running the decorated ``train(cfg, out, progress, resume,
    **extra)`` and printing what it returns. ``extra``: options of the command that are not config fields, as
    name -> (type, ``typer.Option``), given first."""

    def register(train: Callable[..., str]) -> Callable:
        params = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, annotation=t, default=o)
                  for n, (t, o) in (extra or {}).items()]
        options = cli_fields(cls)  # --data and --out first, the run's length, seed and checkpoints last
        last = [f for name in LAST for f in options if f.name == name]
        params += [_option(cls, f) for f in options if f.name == "data"]
        params.append(inspect.Parameter("out", inspect.Parameter.KEYWORD_ONLY, annotation=Path,
                                        default=typer.Option(..., "--out", callback=checked_out, help=out_help)))
        params += [_option(cls, f) for f in options if f.name != "data" and f not in last]
        params += [_option(cls, f) for f in last]
        if resume:
            params.append(inspect.Parameter("resume", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
                                            default=typer.Option(True, "--resume/--no-resume", help=RESUME_HELP)))
        params += [
            inspect.Parameter("threads", inspect.Parameter.KEYWORD_ONLY, annotation=int,
                              default=typer.Option(0, "--threads", help=THREADS_HELP)),
            inspect.Parameter("progress", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
                              default=typer.Option(True, help="Show a progress bar."))]

        def command(**kw) -> None:
            set_threads(kw.pop("threads"))
            out, progress, again = kw.pop("out"), kw.pop("progress"), kw.pop("resume", True)
            more = {n: kw.pop(n) for n in (extra or {})}
            cfg = cls(**kw)
            cfg.check()
            typer.echo(train(cfg, out, progress, again, **more))

        command.__signature__ = inspect.Signature(params)  # what typer reads
        command.__name__ = train.__name__
        command.__doc__ = train.__doc__
        app.command(cls.command)(command)
        return train

    return register
