"""Resume checkpoints for the training loops: periodic and on Ctrl-C, bit-identical resume.

:class:`TrainState` is the whole mechanism for the small loops (train-enhancer, train-autoencoder,
train-tagger). After every completed step the loop calls :meth:`TrainState.step_done`: every ``every`` steps
(``--checkpoint-every``) it writes ``OUT/checkpoint.safetensors`` + ``.json`` — every module, optimizer and
scheduler state, the loop's ``torch.Generator`` states (batch order, augmentation, noise: the data-order
state), torch's global RNG state, the step and the loss history — and on Ctrl-C
(:func:`gradleak.interrupt.deferred_interrupt`: the step in flight is finished first) it writes the same and
stops with ``KeyboardInterrupt`` (the CLI exits 130). A SIGKILL (OOM killer, preemption, power loss) cannot
be caught; it loses only the steps since the last periodic checkpoint. Running the same command again resumes
(:meth:`TrainState.resume`) and ends with the same weights, bit for bit, as an uninterrupted run; the checkpoint
is removed once the result is written. A checkpoint made with other settings is refused (one line);
``--checkpoint-every`` itself may change between runs.

:func:`train_loop` is the loop every trainer runs (resume, progress bar, one step at a time, checkpoint every N
steps and on Ctrl-C); a trainer gives it its step and its checkpoint (a :class:`TrainState`, or its own
``resume``/``step_done`` pair where its checkpoints keep another layout, as ``train-prior``'s).

The pieces every trainer shares — optimizer state as tensors + JSON (:func:`optimizer_tensors`,
:func:`optimizer_state`), the settings comparison (:func:`changed_settings`), the ``--checkpoint-every`` check
(:func:`check_every`) and the interrupt message (:func:`say_interrupted`) — are used by ``train-prior``
(:mod:`gradleak.priors.train`, :mod:`gradleak.priors.checkpoint`) and ``giml`` (:mod:`gradleak.giml.meta`) too,
whose checkpoints are also prior files and so keep their own layout.

Files are read and written as safetensors + JSON only (:mod:`gradleak.filepair`: temporary files, then
renames, and a pair id that detects a kill between the two renames), so a kill while saving leaves the previous
checkpoint intact and loading never executes code.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable, Protocol

import torch
from torch import Tensor, nn

from gradleak.errors import UserError, bad_value
from gradleak.filepair import read_pair, write_pair
from gradleak.interrupt import deferred_interrupt

FORMAT = "gradleak-train-state"
FREE_KEYS = ("checkpoint_every",)  # settings that may change between an interrupted run and its resumption


# --- shared pieces -----------------------------------------------------------------------------------------

def check_every(command: str, every: object) -> None:
    """``--checkpoint-every`` must be an integer >= 1 (one-line error otherwise)."""
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise bad_value(f"{command} --checkpoint-every", every, "an integer >= 1")


def optimizer_tensors(opt: torch.optim.Optimizer, prefix: str) -> tuple[dict[str, Tensor], dict]:
    """``opt.state_dict()`` split into tensors (``prefix/<param index>/<key>``) and JSON (param groups and
    the non-tensor per-parameter entries)."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, state in sd["state"].items():
        for key, v in state.items():
            if isinstance(v, Tensor):
                tensors[f"{prefix}/{idx}/{key}"] = v
            else:
                scalars[f"{idx}/{key}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_state(tensors: dict[str, Tensor], meta: dict, prefix: str) -> dict:
    """The ``state_dict`` that :func:`optimizer_tensors` split, for ``opt.load_state_dict``."""
    state: dict = {}
    p = prefix + "/"
    for k, v in tensors.items():
        if k.startswith(p):
            idx, key = k[len(p):].split("/", 1)
            state.setdefault(int(idx), {})[key] = v
    for k, v in meta["scalars"].items():
        idx, key = k.split("/", 1)
        state.setdefault(int(idx), {})[key] = v
    return {"state": state, "param_groups": meta["param_groups"]}


def changed_settings(saved: object, config: dict, free: tuple[str, ...] = FREE_KEYS) -> list[str]:
    """The keys of ``config`` (except ``free``) whose value in the checkpoint's ``saved`` config differs."""
    return sorted(k for k in config if k not in free and (not isinstance(saved, dict) or saved.get(k) != config[k]))


def say_interrupted(command: str, step: int, path: Path) -> None:
    print(f"{command}: interrupted; step {step} is saved in {path}.json — run the same command again to resume",
          file=sys.stderr)


def incomplete(command: str, path: Path, err: Exception, hint: str, what: str = "checkpoint") -> UserError:
    """The one-line error for a checkpoint pair whose contents do not load."""
    return UserError(f"{command}: {path}.safetensors/.json is not a complete {what} "
                     f"({type(err).__name__}: {(str(err).splitlines() or [''])[0][:200]}); {hint}")


# --- the small loops ---------------------------------------------------------------------------------------

class TrainState:
    """Checkpoint and resume of one training loop writing into ``out`` (see the module docstring).

    ``config`` (JSON-able) identifies the run: a checkpoint whose config differs (except :data:`FREE_KEYS`) is
    refused. ``every``: write a checkpoint after every ``every``-th completed step."""

    def __init__(self, out: str | Path, command: str, config: dict, modules: dict[str, nn.Module],
                 optimizers: dict[str, torch.optim.Optimizer], schedulers: dict | None = None,
                 generators: dict[str, torch.Generator] | None = None, every: int | None = None):
        self.path = Path(out) / "checkpoint"
        self.command, self.config = command, json.loads(json.dumps(config))  # as the JSON will hold it
        self.modules, self.optimizers = modules, optimizers
        self.schedulers, self.generators = schedulers or {}, generators or {}
        if every is not None:
            check_every(command, every)
        self.every = every

    # --- writing -------------------------------------------------------------------------------------------
    def save(self, step: int, history: list) -> None:
        tensors: dict[str, Tensor] = {"rng/global": torch.get_rng_state()}
        meta: dict = {"format": FORMAT, "command": self.command, "config": self.config, "step": step,
                      "history": history, "optimizers": {}, "schedulers": {}}
        for name, m in self.modules.items():
            tensors |= {f"module/{name}/{k}": v for k, v in m.state_dict().items()}
        for name, opt in self.optimizers.items():
            t, meta["optimizers"][name] = optimizer_tensors(opt, f"optim/{name}")
            tensors |= t
        for name, s in self.schedulers.items():
            meta["schedulers"][name] = s.state_dict()
        for name, g in self.generators.items():
            tensors[f"rng/{name}"] = g.get_state()
        write_pair(self.path, tensors, meta)

    def step_done(self, step: int, history: list, stop_requested: bool = False) -> None:
        """Call after each completed ``step`` (counted from 1): checkpoint every ``every`` steps; on Ctrl-C
        (``stop_requested``) checkpoint and stop."""
        if stop_requested:
            self.interrupted(step, history)
        if self.every and step % self.every == 0:
            self.save(step, history)

    def interrupted(self, step: int, history: list) -> None:
        """Save the completed ``step`` and stop (``KeyboardInterrupt``)."""
        self.save(step, history)
        say_interrupted(self.command, step, self.path)
        raise KeyboardInterrupt

    def finished(self) -> None:
        for suffix in (".safetensors", ".json"):
            self.path.with_suffix(suffix).unlink(missing_ok=True)

    # --- reading -------------------------------------------------------------------------------------------
    def resume(self) -> tuple[int, list]:
        """Restore a checkpoint in place when one exists; returns (completed steps, loss history)."""
        if not self.path.with_suffix(".json").is_file():
            return 0, []
        tensors, meta = read_pair(self.path, self.command, FORMAT)
        changed = changed_settings(meta.get("config"), self.config)
        if changed:
            raise UserError(f"{self.command}: {self.path}.json was made with other settings ({', '.join(changed)}); "
                            "use a new --out or delete the checkpoint to start over")
        try:
            for name, m in self.modules.items():
                p = f"module/{name}/"
                m.load_state_dict({k[len(p):]: v for k, v in tensors.items() if k.startswith(p)})
            for name, opt in self.optimizers.items():
                opt.load_state_dict(optimizer_state(tensors, meta["optimizers"][name], f"optim/{name}"))
            for name, s in self.schedulers.items():
                s.load_state_dict(meta["schedulers"][name])
            for name, g in self.generators.items():
                g.set_state(tensors[f"rng/{name}"])
            torch.set_rng_state(tensors["rng/global"])
            return int(meta["step"]), list(meta["history"])
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise incomplete(self.command, self.path, err, "delete it to start over") from None


# --- the loop ----------------------------------------------------------------------------------------------

class Checkpoint(Protocol):
    """What :func:`train_loop` needs of a checkpoint: :meth:`TrainState.resume` and :meth:`TrainState.step_done`."""

    def resume(self) -> tuple[int, list]: ...

    def step_done(self, step: int, history: list, stop_requested: bool = False) -> None: ...


def train_loop(state: Checkpoint, steps: int, step: Callable[[int], "float | dict | None"], desc: str,
               progress: bool = True, shown: str = "loss", digits: int = 4) -> list:
    """Resume from ``state``, then ``step(i)`` for i = start … steps − 1 under one progress bar; after each, the
    checkpoint rules of ``state`` (every N steps; Ctrl-C: the step in flight is finished, checkpointed, and the
    loop stops with ``KeyboardInterrupt``). ``step`` returns its loss (kept in the history, its 20-step mean shown
    as ``shown``), a dict of values to show, or None. Returns the loss history."""
    from tqdm.auto import tqdm

    start, history = state.resume()
    bar = tqdm(range(start, steps), initial=min(start, steps), total=steps, desc=desc, disable=not progress,
               dynamic_ncols=True)
    with deferred_interrupt() as stop:
        for i in bar:
            out = step(i)
            if isinstance(out, float):
                history.append(out)
                out = {shown: f"{sum(history[-20:]) / len(history[-20:]):.{digits}f}"}
            if out and i % 20 == 0:
                bar.set_postfix(out)
            state.step_done(i + 1, history, stop.requested)
    bar.close()
    return history
