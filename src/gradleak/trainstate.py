"""Checkpoint-on-interrupt and bit-identical resume for the small training loops (train-enhancer,
train-autoencoder, train-tagger).

Ctrl-C inside the loop (:func:`gradleak.interrupt.deferred_interrupt`) finishes the current step, then
:meth:`TrainState.interrupted` writes ``OUT/checkpoint.safetensors`` + ``.json`` — every module, optimizer and
scheduler state, the loop's ``torch.Generator`` states, torch's global RNG state, the step and the loss
history — and stops with ``KeyboardInterrupt`` (the CLI exits 130). Running the same command again resumes
from it (:meth:`TrainState.resume`) and ends with the same weights as an uninterrupted run; the checkpoint is
removed once the result is written. A checkpoint made with other settings is refused (one line).
Files are read and written as safetensors + JSON only (:mod:`gradleak.filepair`).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch import Tensor, nn

from gradleak.errors import UserError
from gradleak.filepair import read_pair, write_pair

FORMAT = "gradleak-train-state"


class TrainState:
    def __init__(self, out: str | Path, command: str, config: dict, modules: dict[str, nn.Module],
                 optimizers: dict[str, torch.optim.Optimizer], schedulers: dict | None = None,
                 generators: dict[str, torch.Generator] | None = None):
        self.path = Path(out) / "checkpoint"
        self.command, self.config = command, json.loads(json.dumps(config))  # as the JSON will hold it
        self.modules, self.optimizers = modules, optimizers
        self.schedulers, self.generators = schedulers or {}, generators or {}

    # --- writing -------------------------------------------------------------------------------------------
    def save(self, step: int, history: list) -> None:
        tensors: dict[str, Tensor] = {"rng/global": torch.get_rng_state()}
        meta: dict = {"format": FORMAT, "command": self.command, "config": self.config, "step": step,
                      "history": history, "optimizers": {}, "schedulers": {}}
        for name, m in self.modules.items():
            tensors |= {f"module/{name}/{k}": v for k, v in m.state_dict().items()}
        for name, opt in self.optimizers.items():
            sd = opt.state_dict()
            scalars = {}
            for idx, st in sd["state"].items():
                for k, v in st.items():
                    if isinstance(v, Tensor):
                        tensors[f"optim/{name}/{idx}/{k}"] = v
                    else:
                        scalars[f"{idx}/{k}"] = v
            meta["optimizers"][name] = {"param_groups": sd["param_groups"], "scalars": scalars}
        for name, s in self.schedulers.items():
            meta["schedulers"][name] = s.state_dict()
        for name, g in self.generators.items():
            tensors[f"rng/{name}"] = g.get_state()
        write_pair(self.path, tensors, meta)

    def interrupted(self, step: int, history: list) -> None:
        """Save the completed ``step`` and stop (``KeyboardInterrupt``)."""
        self.save(step, history)
        print(f"{self.command}: interrupted; step {step} is saved in {self.path}.json — run the same command again "
              "to resume", file=sys.stderr)
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
        saved = meta.get("config")
        if not isinstance(saved, dict) or saved != self.config:
            changed = sorted(k for k in self.config if not isinstance(saved, dict) or saved.get(k) != self.config[k])
            raise UserError(f"{self.command}: {self.path}.json was made with other settings ({', '.join(changed)}); "
                            "use a new --out or delete the checkpoint to start over")
        try:
            for name, m in self.modules.items():
                p = f"module/{name}/"
                m.load_state_dict({k[len(p):]: v for k, v in tensors.items() if k.startswith(p)})
            for name, opt in self.optimizers.items():
                p, info = f"optim/{name}/", meta["optimizers"][name]
                state: dict = {}
                for k, v in tensors.items():
                    if k.startswith(p):
                        idx, key = k[len(p):].split("/", 1)
                        state.setdefault(int(idx), {})[key] = v
                for k, v in info["scalars"].items():
                    idx, key = k.split("/", 1)
                    state.setdefault(int(idx), {})[key] = v
                opt.load_state_dict({"state": state, "param_groups": info["param_groups"]})
            for name, s in self.schedulers.items():
                s.load_state_dict(meta["schedulers"][name])
            for name, g in self.generators.items():
                g.set_state(tensors[f"rng/{name}"])
            torch.set_rng_state(tensors["rng/global"])
            return int(meta["step"]), list(meta["history"])
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise UserError(f"{self.command}: {self.path}.safetensors/.json is not a complete checkpoint "
                            f"({type(err).__name__}: {(str(err).splitlines() or [''])[0][:200]}); "
                            "delete it to start over") from None
