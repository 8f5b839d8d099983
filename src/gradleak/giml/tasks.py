"""The GIML task set S = {(θ_i, g_i)} (GIAS/GIML §4.2, §5.3): uploads of many clients over several rounds.

:func:`make_task_set` simulates the paper's setting ("4 rounds of gradient reports from 200 nodes"): each
of M clients holds a fixed local batch of B private images; in every round each participating client
computes its upload at the current global parameters θ_r with the gradleak client
(:func:`gradleak.case.capture`, defense chain included), and the server moves the global model as FedAvg
would, θ_{r+1} = θ_r − η_s · (1/M_r) Σ_m Δ̃_m (η_s = ``server_lr``; for FedSGD Δ̃ is the defended gradient).
Every upload is one task, saved as an :class:`~gradleak.fl.observation.Observation`.

On disk a task set is a directory::

    tasks.json                 index: format, settings, command, one entry per task (file, round, client)
    task_000000.safetensors    the Observations (safetensors + JSON pairs)
    task_000000.json
    truth.json                 simulation ground truth (each client's dataset indices) — never read by GIML

:meth:`TaskSet.load` also accepts a directory of Observation pairs without ``tasks.json`` (updates
captured elsewhere, e.g. saved with ``Observation.save``): every ``*.safetensors`` with a ``.json`` beside it
is one task, in file-name order. All tasks must share the victim architecture.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from gradleak.errors import UserError, bad_value
from gradleak.fl.observation import Observation
from gradleak.atomic import atomic_write_json

FORMAT = "gradleak-giml-tasks"
INDEX = "tasks.json"


@dataclass
class TaskSetConfig:
    """Settings of the simulated FL run that produces the task set (paper §5.3: 200 clients, 4 rounds)."""

    data: str = "digits"
    split: str = "private"  # the clients' (private) data; GIML only ever sees their uploads
    resolution: int = 32
    channels: int = 1
    root: str | None = None
    clients: int = 200  # M
    rounds: int = 4
    per_round: int | None = None  # clients reporting per round (None: all)
    batch: int = 4  # B, images per client
    model: str = "lenet"
    model_options: dict = field(default_factory=lambda: {"width": 12, "batchnorm": True})  # GIAS-table victim
    protocol: str = "fedsgd"
    local_steps: int = 1
    client_lr: float = 0.1
    server_lr: float = 0.5  # η_s
    sparsity: float = 0.0  # top-k gradient sparsity applied to every upload (GIAS §5.2); 0 = none
    give_labels: bool = True  # threat model: the server is told each client's labels
    seed: int = 0

    def check(self) -> None:
        for key, ok, allowed in (
            ("clients", self.clients >= 1, "an integer >= 1"),
            ("rounds", self.rounds >= 1, "an integer >= 1"),
            ("per_round", self.per_round is None or 1 <= self.per_round <= self.clients, "1..clients or null"),
            ("batch", self.batch >= 1, "an integer >= 1"),
            ("server_lr", math.isfinite(self.server_lr) and self.server_lr >= 0, "a finite number >= 0"),
            ("client_lr", math.isfinite(self.client_lr) and self.client_lr > 0, "a finite number > 0"),
            ("local_steps", self.local_steps >= 1, "an integer >= 1"),
            ("sparsity", 0 <= self.sparsity < 1, "a number in [0, 1)"),
        ):
            if not ok:
                raise bad_value(f"giml-tasks.{key}", getattr(self, key), allowed)


class TaskSet:
    """A list of task files (Observations) loaded on demand; ``entries[i]`` holds round/client when known."""

    def __init__(self, root: Path, entries: list[dict], meta: dict):
        self.root, self.entries, self.meta = Path(root), entries, meta

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int) -> Observation:
        return Observation.load(self.root / self.entries[i]["file"])  # shapes checked against the victim

    @property
    def model_spec(self) -> dict:
        return self[0].model_spec

    def fingerprint(self) -> str:
        """Identifies the task set in GIML checkpoints (number of tasks and their files)."""
        import hashlib

        h = hashlib.sha256("\n".join(e["file"] for e in self.entries).encode()).hexdigest()[:16]
        return f"{len(self)}:{h}"

    @classmethod
    def load(cls, path: str | Path) -> "TaskSet":
        """Load a task-set directory (see the module docstring); one-line errors for bad input."""
        root = Path(path)
        if not root.is_dir():
            raise UserError(f"giml --tasks: {root} is not a directory (make one with gradleak giml-tasks)")
        index = root / INDEX
        if index.is_file():
            try:
                meta = json.loads(index.read_text())
            except ValueError as err:
                raise UserError(f"giml --tasks: cannot read {index}: {err}") from None
            if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("tasks"), list):
                raise UserError(f"giml --tasks: {index} is not a gradleak task index (format {meta.get('format') if isinstance(meta, dict) else meta!r})")
            entries = meta.pop("tasks")
            for i, e in enumerate(entries):
                f = e.get("file") if isinstance(e, dict) else None
                if not isinstance(f, str) or not f or "/" in f or "\\" in f or f.startswith("."):
                    raise UserError(f"giml --tasks: {index} task {i} has no valid 'file' entry (got {f!r}); "
                                    "allowed: the stem of a task file in the same directory")
        else:
            entries = [{"file": p.stem} for p in sorted(root.glob("*.safetensors")) if p.with_suffix(".json").is_file()]
            meta = {"format": FORMAT, "source": "observation files"}
        if not entries:
            raise UserError(f"giml --tasks: {root} holds no tasks (no {INDEX} and no observation .safetensors/.json pairs)")
        for e in entries:
            if not (root / f"{e['file']}.safetensors").is_file() or not (root / f"{e['file']}.json").is_file():
                raise UserError(f"giml --tasks: task file {root / e['file']}.safetensors/.json is missing")
        ts = cls(root, entries, meta)
        ts[0].build_model()  # validates the tensors' shapes once; the rest must declare the same victim
        ref = None
        for e in entries:
            try:
                m = json.loads((root / f"{e['file']}.json").read_text())
                key = (json.dumps(m["model"], sort_keys=True), tuple(m["image_shape"]))
            except (ValueError, KeyError, TypeError) as err:
                raise UserError(f"giml --tasks: cannot read {root / e['file']}.json: {err}") from None
            if ref is None:
                ref = key
            elif key != ref:
                raise UserError(f"giml --tasks: task {e['file']} has another victim architecture or image shape "
                                "than the first task; all tasks must share one")
        ts.validate()
        return ts

    def validate(self) -> None:
        """Load every task once and check its tensors against the victim (shapes, NaN/inf), so a bad task is
        found before anything is written, not when it is first sampled."""
        from gradleak.fl.observation import validate_against

        model = self[0].build_model()
        for e in self.entries:
            obs = Observation.load(self.root / e["file"], validate=False)  # (same architecture: checked above)
            try:
                validate_against(model, obs)
            except UserError as err:
                raise UserError(f"giml --tasks: task {self.root / e['file']}: {err}") from None


def _client_data(n_images: int, clients: int, batch: int, gen: torch.Generator) -> list[list[int]]:
    """Disjoint local datasets while the split lasts (a fresh permutation when it runs out)."""
    out, perm, pos = [], torch.randperm(n_images, generator=gen), 0
    for _ in range(clients):
        if pos + batch > n_images:
            perm, pos = torch.randperm(n_images, generator=gen), 0
        out.append(perm[pos:pos + batch].tolist())
        pos += batch
    return out


def make_task_set(cfg: TaskSetConfig, out: str | Path, progress: bool = True, command: str = "") -> TaskSet:
    """Simulate the FL run of the module docstring and write the task-set directory ``out``."""
    import gradleak as gl
    from gradleak.models import build_model, init_model

    cfg.check()
    defense_specs = [{"name": "topk", "sparsity": cfg.sparsity}] if cfg.sparsity else []
    defenses = gl.build_defenses(defense_specs)
    data = gl.load_dataset(cfg.data, split=cfg.split, resolution=cfg.resolution, channels=cfg.channels,
                           root=cfg.root, seed=cfg.seed)
    if cfg.batch > len(data):
        raise bad_value("giml-tasks.batch", cfg.batch, f"1..{len(data)} (images in {cfg.data} {cfg.split})")
    model = init_model(build_model(cfg.model, data.num_classes, cfg.channels, cfg.resolution,
                                   **cfg.model_options), cfg.seed)
    spec = {"name": cfg.model, "num_classes": data.num_classes, "in_channels": cfg.channels,
            "resolution": cfg.resolution, "options": dict(cfg.model_options)}
    protocol = gl.Protocol(kind=cfg.protocol, local_steps=cfg.local_steps, lr=cfg.client_lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    local = _client_data(len(data), cfg.clients, cfg.batch, gen)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    per_round = cfg.per_round or cfg.clients
    bar = tqdm(total=cfg.rounds * per_round, desc="giml-tasks", disable=not progress, dynamic_ncols=True)
    for r in range(cfg.rounds):
        chosen = sorted(torch.randperm(cfg.clients, generator=gen)[:per_round].tolist())
        agg = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
        for m in chosen:
            idx = torch.tensor(local[m])
            case = gl.Case(model, data.images[idx], data.labels[idx], protocol, defenses, spec,
                           give_labels=cfg.give_labels)
            obs = gl.capture(case, seed=int(torch.randint(0, 2 ** 31, (1,), generator=gen)))
            obs.extra = {**obs.extra, "giml_round": r, "giml_client": m}
            name = f"task_{len(entries):06d}"
            obs.save(out / name)
            entries.append({"file": name, "round": r, "client": m})
            delta = obs.as_delta().update  # the server's step reads Δ = θ_0 − θ_τ
            for k in agg:
                agg[k] += delta[k] / len(chosen)
            bar.update(1)
        with torch.no_grad():  # the server's FedAvg step moves θ for the next round
            for k, p in model.named_parameters():
                p.sub_(cfg.server_lr * agg[k])
    bar.close()
    meta = {"format": FORMAT, "version": 1, "config": asdict(cfg), "command": command, "model": spec,
            "defenses": defense_specs, "tasks": entries}
    atomic_write_json(out / "truth.json", {"note": "simulation ground truth; GIML never reads it",
                                           "dataset": cfg.data, "split": cfg.split, "client_indices": local})
    atomic_write_json(out / INDEX, meta)
    return TaskSet.load(out)
