"""``gradleak audit-run``: the leakage of a whole FL run, every (round, client) capture and every round's aggregate.

Input: a Flower capture directory (:class:`gradleak.integrations.flower.GradleakCapture`'s ``index.json``) or any
directory of Observations (``*.json`` + ``*.safetensors`` pairs) whose ``extra`` holds ``round`` and ``node_id``
(or ``client``), or whose path has a ``round-NNN`` folder. Each capture is one task,
:func:`audit_capture`, which loads it, measures its leakage with :func:`gradleak.leakage.measure_leakage` (the
trusted audit under ``--budget-per-update`` when one is given and no ``--attack``; else one configured attack)
and writes ``OUT/captures/<round>/<stem>/``
(``result.json`` last, atomically, + ``reconstruction.png``). Tasks run in this process, on a spawned process
pool or on Ray (:func:`gradleak.experiments.workers.map_outcomes`: a dead worker is retried, then its capture
is an error row), each with the same torch thread count, so the
numbers do not depend on the executor. A capture whose ``result.json`` exists with the same settings is done
and is not redone: an interrupted run resumes where it stopped.

Truth (optional, ``--truth MAP``): a YAML/JSON mapping ``node id -> images`` (a tensor file with ``images``
and optionally ``labels``, or a folder of images; paths relative to the map). A client's captures are scored
against its images; a round's aggregate against its clients' images in slot order when every one is mapped.
Without truth a capture is attacked but not scored: the page shows its reconstruction and recovered labels.
``--public`` (with truth) names public data the server holds, as for ``gradleak attack``: it adds the public-mean
and same-class references beside the grey image.

A capture that is listed but missing, or whose files are corrupt, is named in ``errors`` (one line each) and
the rest carry on; the run's exit status is then 1. Replies the clients did not send (a
:class:`~gradleak.integrations.flower.LeakageGuard` block) are listed with their reason.
"""
from __future__ import annotations

import functools
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gradleak.errors import UserError

RESULT = "result.json"
ROUND_DIR = re.compile(r"round-(\d+)")


@dataclass
class Capture:
    """One capture to audit: its files' stem, round, node id, kind (client / aggregate) and truth files."""

    key: str  # round-RRR/<stem>: the output sub-directory
    path: str | None
    round: int
    node_id: str
    kind: str = "client"
    truth: list[str] | None = None
    note: str | None = None  # e.g. a blocked reply's reason (no file to audit)
    clients: list[str] = field(default_factory=list)


# --- parsing -----------------------------------------------------------------------------------------------

def parse_budget(text: str | float | int | None) -> float | None:
    """``2m``, ``90s``, ``1.5h``, ``120`` (seconds) -> seconds (the audit's syntax,
    :func:`gradleak.attacks.budget.parse_budget`); None stays None."""
    from gradleak.attacks.budget import parse_budget as parse

    if text is None:
        return None
    b = parse(text, "--budget-per-update")
    if b.seconds is None:
        raise UserError(f"--budget-per-update: got {text!r}; allowed: a duration such as 90s, 2m, 1h")
    return b.seconds


def read_truth_map(path: str | Path | None) -> dict[str, str]:
    """``node id -> images path`` (absolute) from a YAML/JSON mapping file."""
    import yaml

    if path is None:
        return {}
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--truth: file not found: {str(p)!r}")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise UserError(f"--truth: {p} is not valid YAML/JSON: {str(err).splitlines()[0]}") from None
    if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        raise UserError(f"--truth: {p} must map node ids to image files or folders; got {type(raw).__name__}")
    out = {}
    for k, v in raw.items():
        target = Path(v).expanduser()
        target = target if target.is_absolute() else p.parent / target
        if not target.exists():
            raise UserError(f"--truth: {p}: node {k}: file not found: {str(target)!r}")
        out[str(k)] = str(target)
    return out


def read_index(path: Path) -> list[dict]:
    """The ``captures`` of a Flower capture index (``GradleakCapture``; read without importing Flower)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise UserError(f"audit-run: cannot read {str(path)!r}: {type(err).__name__}") from None
    if not isinstance(data, dict) or data.get("format") != "gradleak-flower-capture" \
            or not isinstance(data.get("captures"), list):
        raise UserError(f"audit-run: {str(path)!r} is not a gradleak Flower capture index; allowed: the index.json "
                        "GradleakCapture writes, or a directory of observations without one")
    return data["captures"]


def discover(captures: str | Path, truth: dict[str, str]) -> tuple[list[Capture], list[dict]]:
    """The captures of a directory (its ``index.json``, else every observation pair under it) and the files
    that could not be read as one (``{"path", "error"}``)."""
    root = Path(captures)
    if not root.is_dir():
        raise UserError(f"audit-run: CAPTURES: got {str(root)!r}; allowed: a capture directory (index.json) or a "
                        "directory of observations")
    index = root / "index.json"
    errors: list[dict] = []
    items: list[Capture] = []
    if index.is_file():
        entries = read_index(index)
        for i, e in enumerate(entries):
            try:
                rnd, node, kind = int(e["round"]), str(e["node_id"]), str(e.get("kind", "client"))
            except (KeyError, TypeError, ValueError):
                errors.append({"path": f"{index}#captures[{i}]", "error": "entry lacks round / node_id"})
                continue
            if not e.get("path"):
                items.append(Capture(key=f"round-{rnd:03d}/{kind}-{node}", path=None, round=rnd, node_id=node,
                                     kind="blocked", note=str(e.get("reason") or e.get("error") or "no upload")))
                continue
            items.append(Capture(key=str(Path(e["path"]).with_suffix("")), path=str(root / e["path"]), round=rnd,
                                 node_id=node, kind=kind, clients=[str(c) for c in e.get("client_nodes") or []]))
    else:
        for js in sorted(root.rglob("*.json")):
            if any(part.startswith(".") for part in js.relative_to(root).parts):
                continue
            try:
                meta = json.loads(js.read_text(encoding="utf-8"))
            except (OSError, ValueError, UnicodeDecodeError) as err:
                errors.append({"path": str(js), "error": f"cannot read: {type(err).__name__}"})
                continue
            if not isinstance(meta, dict) or not {"model", "protocol", "num_images"} <= set(meta):
                continue  # not an observation (e.g. someone's notes)
            extra = meta.get("extra") or {}
            rnd = extra.get("round")
            if rnd is None:
                m = ROUND_DIR.search(str(js.relative_to(root)))
                rnd = int(m.group(1)) if m else None
            node = extra.get("node_id", extra.get("client"))
            if rnd is None or node is None:
                errors.append({"path": str(js), "error": "no round / node_id in its extra metadata (or a round-NNN "
                                                         "folder in its path)"})
                continue
            stem = js.relative_to(root).with_suffix("")
            kind = str(extra.get("kind", "aggregate" if meta.get("aggregation") else "client"))
            items.append(Capture(key=str(stem), path=str(js.with_suffix("")), round=int(rnd), node_id=str(node),
                                 kind=kind, clients=[str(c) for c in extra.get("client_nodes") or []]))
    for c in items:
        if c.kind == "client" and c.node_id in truth:
            c.truth = [truth[c.node_id]]
        elif c.kind == "aggregate" and c.clients and all(n in truth for n in c.clients):
            c.truth = [truth[n] for n in c.clients]
    items.sort(key=lambda c: (c.round, c.kind != "client", c.node_id))
    return items, errors


# --- one capture (what every executor runs) ----------------------------------------------------------------

def settings_of(attack: str | None, options: dict, seed: int, labels: str, budget_s: float | None,
                public: str | None = None) -> dict:
    from gradleak.leakage import AUTO, DEFAULT_ATTACK

    name, opts = (attack, options) if attack else ((AUTO, {}) if budget_s is not None else DEFAULT_ATTACK)
    return {"attack": name, "options": opts, "seed": seed, "labels": labels, "budget_s": budget_s, "public": public}


@functools.lru_cache(maxsize=4)
def _public(spec: str, shape: tuple[int, int, int]):
    """Public (images, labels) for the public-mean and same-class references (``--public``), once per process."""
    from gradleak.deploy import load_public_data

    x, y, _ = load_public_data(spec, shape)
    return x, y


def done_result(out: Path, cap: Capture, settings: dict) -> dict | None:
    """The row of a capture already audited with these settings, else None."""
    path = out / "captures" / cap.key / RESULT
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data.get("row") if data.get("settings") == settings else None


def audit_capture(cap: Capture, out: str, settings: dict, threads: int = 1) -> dict:
    """Audit one capture and write ``OUT/captures/<key>/`` (result.json last); returns its row. A capture that
    cannot be read is an ``error`` row naming the file (nothing written for it)."""
    import torch

    from gradleak.deploy import load_images, load_observation
    from gradleak.fl.observation import Observation

    if threads:
        torch.set_num_threads(threads)
    row: dict[str, Any] = {"round": cap.round, "node_id": cap.node_id, "kind": cap.kind, "capture": cap.key}
    try:
        obs = load_observation(cap.path) if Path(cap.path).is_dir() else Observation.load(cap.path)
    except UserError as err:
        return {**row, "status": "error", "error": str(err)}
    except Exception as err:  # noqa: BLE001 - a corrupt file: named, the run carries on
        return {**row, "status": "error", "error": f"{cap.path}: cannot read ({type(err).__name__}: "
                                                   f"{str(err).splitlines()[0] if str(err) else ''})"}
    x = y = None
    try:
        if cap.truth:
            x, y = load_truth(cap, obs, load_images)
    except UserError as err:
        return {**row, "status": "error", "error": str(err)}
    leak = run_measure(obs, x, y, settings)
    row.update({"status": "ok", "num_images": obs.num_images,
                "clients": obs.aggregation.clients if obs.aggregation is not None else 1,
                **{k: v for k, v in leak.to_dict().items() if k not in ("options", "psnr_per_image", "notes")},
                "labels": " ".join(map(str, leak.labels or []))})
    row.pop("verdict_counts", None)
    d = Path(out) / "captures" / cap.key
    d.mkdir(parents=True, exist_ok=True)
    from gradleak.imagegrid import image_rows

    rows, names = ([x, leak.reconstruction], ["truth", "reconstruction"]) if x is not None else \
        ([leak.reconstruction], ["reconstruction"])
    image_rows(rows, names, d / "reconstruction.png", scale=2, max_per_row=16)
    from gradleak.atomic import atomic_write_json

    atomic_write_json(d / RESULT, {"settings": settings, "row": row, "leakage": leak.to_dict()})
    return row


def load_truth(cap: Capture, obs, load_images):
    """The capture's true images (and labels, when every truth file has them), in slot order."""
    import torch

    xs, ys = [], []
    for p in cap.truth or []:
        x, y = load_images(p, obs.image_shape, "--truth")
        xs.append(x)
        ys.append(y)
    x = torch.cat(xs)
    if x.shape[0] != obs.num_images:
        raise UserError(f"--truth: {cap.key}: got {x.shape[0]} images for node {cap.node_id}; allowed: the capture's "
                        f"{obs.num_images}")
    y = torch.cat(ys) if all(v is not None for v in ys) else None
    return x, y


def run_measure(obs, x, y, settings: dict):
    """The leakage of one upload: :func:`gradleak.leakage.measure_leakage` with the run's settings."""
    from gradleak.leakage import measure_leakage

    public = _public(settings["public"], tuple(obs.image_shape)) if settings.get("public") else None
    return measure_leakage(obs, x, y, attack=settings["attack"], options=settings["options"],
                           budget_s=settings["budget_s"], seed=settings["seed"], public=public,
                           give_labels=settings["labels"] == "given")


def _first_shape(caps: list[Capture]) -> tuple[int, int, int] | None:
    for c in caps:
        if c.path:
            try:
                meta = json.loads(Path(c.path).with_suffix(".json").read_text(encoding="utf-8"))
                return tuple(int(v) for v in meta["image_shape"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
    return None


# --- the run -----------------------------------------------------------------------------------------------

@dataclass
class RunResult:
    rows: list[dict]
    errors: list[dict]
    out: Path
    skipped: int  # captures already done (resumed)


def audit_run(captures: str | Path, out: str | Path, budget: str | float | None = None, truth: str | Path | None = None,
              workers: int = 1, use_ray: bool = False, ray_address: str | None = None, threads: int = 1,
              attack: str | None = None, options: dict | None = None, seed: int = 0, labels: str = "given",
              progress: bool = False, public: str | None = None) -> RunResult:
    """Audit every capture under ``captures`` not done yet, then write results.csv, the plots and audit_run.html."""
    from gradleak.experiments.workers import map_outcomes

    if labels not in ("given", "recover"):
        raise UserError(f"--labels: got {labels!r}; allowed: given | recover")
    if attack is not None and attack != "auto":
        from gradleak.attacks import build_attack

        build_attack(attack, **(options or {}))  # a bad attack or option fails before any work
    budget_s = parse_budget(budget)
    truth_map = read_truth_map(truth)
    caps, errors = discover(captures, truth_map)
    if not caps and not errors:
        raise UserError(f"audit-run: {str(captures)!r} holds no captures (no index.json and no observation files)")
    if public is not None:
        if truth is None:
            raise UserError(f"--public: got {public!r} without --truth; allowed: --public together with --truth "
                            "(the references are scored against the true images)")
        shape = _first_shape(caps)
        if shape is not None:
            _public(public, shape)  # a bad --public fails before any work
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    settings = settings_of(attack, dict(options or {}), seed, labels, budget_s, public)
    rows: dict[str, dict] = {}
    todo = []
    for c in caps:
        if c.kind == "blocked":
            rows[c.key] = {"round": c.round, "node_id": c.node_id, "kind": "blocked", "capture": c.key,
                           "status": "blocked", "error": c.note}
            continue
        done = done_result(out, c, settings)
        if done is not None:
            rows[c.key] = done
        else:
            todo.append(c)
    skipped = sum(1 for c in caps if c.kind != "blocked") - len(todo)
    t0 = time.time()
    by_key = {c.key: c for c in todo}
    outcomes = map_outcomes(audit_capture, [(c.key, (c, str(out), settings, threads)) for c in todo],
                            workers=workers, use_ray=use_ray, ray_address=ray_address, threads=threads,
                            what="audit-run")
    for i, o in enumerate(outcomes, 1):
        c = by_key[o.key]
        row = o.result if o.ok else {"round": c.round, "node_id": c.node_id, "kind": c.kind, "capture": c.key,
                                     "status": "error", "error": f"worker failed: {o.reason}"}
        rows[row["capture"]] = row
        if progress:
            print(f"[{i}/{len(todo)}] round {row['round']} {row['kind']} {row['node_id']}: "
                  + (f"{row.get('verdict') or 'unscored'}" if row["status"] == "ok" else row["status"])
                  + f" ({time.time() - t0:.0f} s)", flush=True)
    ordered = [rows[c.key] for c in caps if c.key in rows]
    errors = errors + [{"path": r["capture"], "error": r["error"]} for r in ordered if r["status"] == "error"]
    from gradleak.report.audit_run import write_outputs

    write_outputs(out, ordered, errors, settings, str(captures))
    return RunResult(ordered, errors, out, skipped)


__all__ = ["Capture", "RunResult", "audit_run", "audit_capture", "discover", "parse_budget", "read_truth_map"]
