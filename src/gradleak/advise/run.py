"""``gradleak advise``: per defense family, the weakest setting that stops the attacks, and its cost.

For every candidate (family, strength):

* **privacy** — an audit of the client the setting file describes, with the family's change applied (a defense
  chain, a batch size or a PRECODE model): :func:`assess`, the audit's verdict and its worst-case margin
  (ΔPSNR over the best no-information reference, per image, worst image). *Safe* means the verdict is
  :data:`SAFE_VERDICT`. The attack is the setting file's ``attack`` section; its default ``auto`` is the trusted
  audit (:mod:`gradleak.autoaudit`: the portfolio picks the attacks that model the defense from the
  observation — ROG for quantised and signed uploads, masked distances for sparsified ones — and a positive
  control makes *no leakage found* mean something). ``--budget`` sets its budget (a cell re-audited for
  confirmation gets four times it);
* **utility** — the test accuracy after ``rounds`` rounds of FedAvg with the defense on
  (:func:`gradleak.experiments.simulation.simulate_fedavg`, train on the dataset's public split, test on its
  private split), and the upload size (:mod:`gradleak.advise.families`).

The search per family (:func:`gradleak.advise.search.find_threshold`) runs the coarse grid in parallel
(``workers`` processes), then bisects; every evaluation is a file under ``cells/`` (written atomically), so a
rerun of the same command resumes and redoes nothing finished. ``confirm``: each threshold is re-audited with
four times the budget and two other seeds (it must stay safe), and the one-step-weaker value must leak.

Outputs: ``advice.json`` (every number), ``recommendations.md`` (the table and the caveats), ``pareto.png``
(privacy margin against accuracy, one line per family; filled markers are safe).
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from gradleak.advise.families import FAMILIES, Family
from gradleak.advise.search import Threshold, find_threshold
from gradleak.errors import UserError, bad_value

#: the verdict under which a setting counts as stopping the attacks (the audit's, with a control that worked)
SAFE_VERDICT = "no leakage found"
#: the ``advise`` section of a setting file: key → (default, check, allowed)
ADVISE_KEYS: dict[str, tuple[Any, Callable[[Any], bool], str]] = {
    "task": ("", lambda v: isinstance(v, str), "a dataset name (default: the setting's own data)"),
    "rounds": (30, lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
    "num_clients": (10, lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
    "clients_per_round": (5, lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
    "alpha": (0.5, lambda v: isinstance(v, (int, float)) and v > 0, "a number > 0"),
    "local_steps": (5, lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
    "task_lr": (0.05, lambda v: isinstance(v, (int, float)) and v > 0, "a number > 0"),
    "local_batch_size": (16, lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
    "dataset_size": (500, lambda v: isinstance(v, int) and v >= 1, "an integer >= 1 (a client's examples)"),
    "delta": (1e-5, lambda v: isinstance(v, float) and 0 < v < 1, "a number in (0, 1)"),
    "dp_clip": (4.0, lambda v: _clips(v) is not None, "a number > 0 or a non-empty list of them (the DP family "
                "searches ε once per clip bound)"),
    "batches": (1, lambda v: isinstance(v, int) and v >= 1, "an integer >= 1 (audited batches per candidate)"),
}


@dataclass
class Cell:
    """One evaluated candidate."""

    family: str
    value: float
    label: str
    seed: int
    budget_scale: float  # × the command's budget (4 for the confirmation re-audits)
    verdict: str
    safe: bool
    margin_psnr: float | None  # worst image's ΔPSNR over the best reference (dB)
    psnr: float | None
    attacks: list[str]
    accuracy: float | None = None
    upload_bits: float | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    train_seconds: float | None = None  # wall time of the utility FedAvg run (1 torch thread): the compute cost


@dataclass
class FamilyAdvice:
    family: str
    axis: str
    threshold: float | None
    label: str | None
    weaker: float | None
    monotone: bool
    violations: list[tuple[float, float]]
    cells: list[Cell]
    confirmed: bool | None = None  # the threshold itself survived the re-audit (4× budget, two other seeds)
    weaker_leaks: bool | None = None  # the value one step weaker than the recommendation leaks
    variant: str = ""  # the second axis's value this search ran at (DP: "C = 1")
    recommended: float | None = None  # weakest value that survived its re-audit (escalating from the threshold)
    recommended_label: str | None = None
    recommended_weaker: float | None = None  # the leaking value one step weaker than the recommendation
    confirm_trail: list[tuple[float, bool]] = field(default_factory=list)  # (value, safe at 4×) in order


#: the undefended client: the baseline every family is compared with (not a family one can ask for)
NO_DEFENSE = Family("none", "-", (0,), strength=float, change=lambda v, ctx: {}, label=lambda v: "no defense")


def _clips(v) -> list[float] | None:
    """``advise.dp_clip`` as a list of positive finite clip bounds, or None when it is not one."""
    vals = v if isinstance(v, list) else [v]
    ok = vals and all(isinstance(c, (int, float)) and not isinstance(c, bool) and math.isfinite(c) and c > 0
                      for c in vals)
    return [float(c) for c in vals] if ok else None


def family_named(name: str) -> Family:
    return NO_DEFENSE if name == "none" else FAMILIES[name]


def load_setting(path: str | Path, overrides: list[str] = ()) -> tuple[Any, dict]:
    """The run config (data, model, client, attack, metrics; its ``defense`` must be empty: the families set it)
    and the ``advise`` section with defaults filled."""
    from gradleak.config import apply_override, validate_config

    p = Path(path)
    if not p.is_file():
        raise UserError(f"setting: file not found: {p}")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as err:
        raise UserError(f"setting: {p} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise UserError(f"setting: {p} must hold a mapping of sections, got {type(raw).__name__}")
    adv = raw.pop("advise", None) or {}
    if not isinstance(adv, dict):
        raise bad_value("advise", adv, "a mapping of " + ", ".join(ADVISE_KEYS))
    for o in overrides:
        apply_override(raw, o)
    raw.setdefault("attack", {"name": "auto"})  # the trusted audit unless the setting names an attack
    if raw.get("defense"):
        raise bad_value("defense", raw["defense"], "empty (advise sets the defense of every candidate)")
    cfg = validate_config(raw)
    ctx = {}
    for k, v in adv.items():
        if k not in ADVISE_KEYS:
            raise bad_value(f"advise.{k}", v, "one of " + ", ".join(ADVISE_KEYS))
    for k, (default, ok, allowed) in ADVISE_KEYS.items():
        v = adv.get(k, default)
        if isinstance(default, float) and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        if isinstance(v, bool) or not ok(v):
            raise bad_value(f"advise.{k}", v, allowed)
        ctx[k] = _clips(v) if k == "dp_clip" else v
    return cfg, ctx


def candidate_config(cfg, fam: Family, value: float, ctx: dict, seed: int):
    """The audited run config of candidate (fam, value) at ``seed``."""
    from gradleak.config import validate_config

    raw = cfg.model_dump()
    change = fam.change(value, ctx)
    raw["seed"] = seed
    raw["defense"] = change.get("defense", [])
    if "batch_size" in change:
        raw["data"]["batch_size"] = change["batch_size"]
    if "precode" in change:
        m = raw["model"]
        raw["model"] = {**m, "name": "precode", "options": {"base": m["name"], "base_options": m["options"],
                                                          "bottleneck": change["precode"], "seed": seed}}
    return validate_config(raw)


def preflight(cfg, ctx: dict, families: list[Family]) -> None:
    """Build and capture every family's weakest and strongest candidate once (one local round each), so that a
    defense the setting's client cannot run (e.g. Fed-CDP with an Adam client) fails in one line before any
    audit or file."""
    from gradleak.audit import build_case
    from gradleak.case import capture

    utility_task(cfg, ctx)
    for fam in families:
        for sub in fam.contexts(ctx):
            for v in dict.fromkeys((fam.grid[0], fam.grid[-1])):
                run_cfg = candidate_config(cfg, fam, v, sub, cfg.seed)
                try:
                    capture(build_case(run_cfg), seed=cfg.seed)
                except UserError as err:
                    raise UserError(f"--families {fam.name} ({fam.describe(v, sub)}): {err}") from None


def assess(run_cfg, budget: str | None) -> dict:
    """Privacy of one candidate: one audit of ``run_cfg`` (``attack: auto`` with ``budget``, or the configured
    attack) → verdict, worst-image margin over the best reference, mean PSNR, the attacks that ran."""
    from gradleak.autoaudit import is_auto, run_config

    if budget is not None and is_auto(run_cfg):
        run_cfg = run_cfg.model_copy(update={"attack": run_cfg.attack.model_copy(
            update={"options": {**run_cfg.attack.options, "budget": budget}})})
    r = run_config(run_cfg)
    cal = r.calibration
    margins = cal.margins["psnr"].get("per_image") or [cal.margins["psnr"]["mean"]]
    if r.audit is not None:
        verdict, attacks = r.audit.verdict, [a.name for a in r.audit.attacks]
    else:  # one configured attack: its graded level, never "no leakage found" (no control ran)
        verdict, attacks = cal.verdict["batch"], [r.reconstruction.attack]
    return {"verdict": verdict, "margin_psnr": max(margins), "psnr": r.scores.psnr["mean"], "attacks": attacks,
            "seconds": r.timing.attack}


def utility(cfg, fam: Family, value: float, ctx: dict) -> dict:
    """Accuracy after FedAvg with the candidate's defense, and the upload size."""
    from gradleak.defenses import build_defenses
    from gradleak.experiments.simulation import FedAvgConfig, simulate_fedavg
    from gradleak.models import build_model, init_model

    d, m = cfg.data, cfg.model
    change = fam.change(value, ctx)
    train, test = utility_task(cfg, ctx)
    if "precode" in change:
        model = build_model("precode", train.num_classes, d.channels, d.resolution, base=m.name,
                            base_options=dict(m.options), bottleneck=change["precode"], seed=cfg.seed)
    else:
        model = build_model(m.name, train.num_classes, d.channels, d.resolution, **m.options)
    init_model(model, cfg.seed)
    params = [p for p in model.parameters()]
    n, L = sum(p.numel() for p in params), len(params)
    fed = FedAvgConfig(rounds=ctx["rounds"], num_clients=ctx["num_clients"],
                       clients_per_round=min(ctx["clients_per_round"], ctx["num_clients"]), alpha=ctx["alpha"],
                       local_steps=ctx["local_steps"], lr=ctx["task_lr"], local_batch_size=ctx["local_batch_size"],
                       seed=cfg.seed)
    t0 = time.perf_counter()
    res = simulate_fedavg(model, train, test, build_defenses(change.get("defense", [])), fed)
    return {"accuracy": res["accuracy"], "upload_bits": fam.bits(value, n, L), "dense_bits": 32.0 * n,
            "train_seconds": time.perf_counter() - t0}


def utility_task(cfg, ctx: dict):
    """The classification task utility is measured on: ``advise.task`` (default: the setting's dataset), public
    side for training, private side for testing, at the victim's channels and resolution. A dataset whose two
    sides share no class (the photos, split by photograph) cannot measure accuracy: refused in one line."""
    from gradleak.data import load_dataset

    d = cfg.data
    name = ctx.get("task") or d.name
    root = d.root if name == d.name else None
    train = load_dataset(name, split="public", resolution=d.resolution, channels=d.channels, root=root)
    test = load_dataset(name, split="private", resolution=d.resolution, channels=d.channels, root=root)
    if not set(train.labels.tolist()) & set(test.labels.tolist()):
        raise bad_value("advise.task", name, "a dataset whose public and private sides share classes (e.g. digits); "
                        f"{name}'s sides hold different classes, so test accuracy is undefined")
    return train, test


def _scaled(budget: str, scale: float) -> str:
    """``budget`` × ``scale`` in the budget's own unit (seconds or iterations)."""
    from gradleak.attacks.budget import parse_budget

    b = parse_budget(budget)
    return f"{round(b.iterations * scale)}it" if b.iterations is not None else f"{b.seconds * scale:g}s"


def _key(*parts) -> str:
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _job(args) -> dict:
    """One cell (privacy of one seed, or utility), in a worker process with one torch thread."""
    import torch

    torch.set_num_threads(1)
    kind, cfg, fam_name, value, ctx, seed, budget = args
    fam = family_named(fam_name)
    if kind == "utility":
        return utility(cfg, fam, value, ctx)
    return assess(candidate_config(cfg, fam, value, ctx, seed), budget)


class CellFailed(RuntimeError):
    """A cell whose worker failed (an exception, or killed ``retries + 1`` times): the search cannot go on; every
    finished cell is on disk and the same command resumes from them."""


def _run_cell(runner: Callable[[tuple], dict], job: tuple, path: str) -> dict:
    """One cell in whatever worker the executor picked: ``runner(job)``, written atomically to ``path`` *by the
    worker* (so a finished cell survives the death of the driver or of a sibling worker), and returned."""
    from gradleak.atomic import atomic_write_json

    res = runner(job)
    atomic_write_json(Path(path), {"job": [job[0], job[2], job[3], job[5], job[6]], "result": res})
    return res


class Advisor:
    """Runs the cells of one ``advise`` command (resumable: every finished cell is a file under ``out/cells``).

    The cells of one search step (a coarse grid, a bisection probe, a confirmation) run on the sweep's executors
    (:func:`gradleak.experiments.workers.map_outcomes`): in this process (``workers == 1``), on the process pool
    (``workers > 1``: a worker that dies mid-cell is replaced and the cell retried ``retries`` times) or on Ray
    (``use_ray``: a local instance or the cluster at ``ray_address``, started once for the whole command; Ray
    retries a lost worker itself). A cell that still fails stops the command with :class:`CellFailed`; the cells
    already finished are files and are not redone by the rerun."""

    def __init__(self, cfg, ctx: dict, out: Path, budget: str | None, workers: int = 1,
                 runner: Callable[[tuple], dict] = _job, use_ray: bool = False, ray_address: str | None = None,
                 retries: int = 2, timeout: float | None = None):
        self.cfg, self.ctx, self.out, self.budget, self.workers, self.runner = cfg, ctx, out, budget, workers, runner
        self.use_ray, self.ray_address, self.retries, self.timeout = use_ray, ray_address, retries, timeout or None
        self._ray_started = False
        if use_ray:
            try:
                import ray
            except ImportError:
                raise UserError("advise --ray: the ray package is not installed; allowed: pip install "
                                "'gradleak[ray]'") from None
            if not ray.is_initialized():  # once for the command, not once per search step
                ray.init(address=ray_address or None, include_dashboard=False, log_to_driver=False)
                self._ray_started = True
        (out / "cells").mkdir(parents=True, exist_ok=True)

    def close(self) -> None:
        if self._ray_started:
            import ray

            ray.shutdown()
            self._ray_started = False

    def _path(self, job: tuple) -> Path:
        """``cells/<kind>-<hash>.json``, the hash of the setting, family, value, the ``advise`` section (less the
        second axes of other families: a new DP clip list does not redo the quantiser's cells), seed, budget."""
        kind, _cfg, name, value, ctx, seed, budget = job
        own = family_named(name).variant_key
        ctx = {k: v for k, v in ctx.items() if k == own or k not in {f.variant_key for f in FAMILIES.values()}}
        return self.out / "cells" / f"{kind}-{_key(self.cfg.model_dump(), name, value, ctx, seed, budget)}.json"

    def _run(self, jobs: list[tuple]) -> list[dict]:
        from gradleak.experiments.workers import map_outcomes

        paths = [self._path(j) for j in jobs]
        todo = {str(p): j for j, p in zip(jobs, paths) if not p.is_file()}
        failed = []
        for o in map_outcomes(_run_cell, [(k, (self.runner, j, k)) for k, j in todo.items()], workers=self.workers,
                              use_ray=self.use_ray, ray_address=self.ray_address, threads=1, retries=self.retries,
                              timeout=self.timeout, markers={k: k + ".timeout" for k in todo}, what="advise"):
            if not o.ok:
                failed.append(o)
            elif not Path(o.key).is_file():  # a Ray worker on another machine: its file is written here
                from gradleak.atomic import atomic_write_json

                j = todo[o.key]
                atomic_write_json(Path(o.key), {"job": [j[0], j[2], j[3], j[5], j[6]], "result": o.result})
        if failed:
            o = failed[0]
            j = todo[o.key]
            raise CellFailed(f"advise: {len(failed)} of {len(todo)} cells failed, e.g. {j[0]} of {j[2]} = {j[3]:g} "
                             f"(seed {j[5]}): {o.reason} after {o.attempts} attempt(s); the finished cells are kept "
                             f"in {self.out / 'cells'} — run the same command again to redo only the failed ones")
        return [json.loads(p.read_text())["result"] for p in paths]

    def cells(self, fam: Family, values: list[float], scale: float = 1.0, seeds: tuple[int, ...] | None = None,
              ctx: dict | None = None) -> list[Cell]:
        """Privacy (every seed in ``seeds``: the worst one counts) and utility of each value."""
        ctx = self.ctx if ctx is None else ctx
        seeds = seeds or tuple(self.cfg.seed + b for b in range(ctx["batches"]))
        budget = self.budget if self.budget is None or scale == 1.0 else _scaled(self.budget, scale)
        priv_jobs = [("privacy", self.cfg, fam.name, v, ctx, s, budget) for v in values for s in seeds]
        util_jobs = [("utility", self.cfg, fam.name, v, ctx, self.cfg.seed, None) for v in values]
        res = self._run(priv_jobs + util_jobs)
        priv, util = res[:len(priv_jobs)], res[len(priv_jobs):]
        out = []
        for i, v in enumerate(values):
            rs = priv[i * len(seeds):(i + 1) * len(seeds)]
            worst = max(rs, key=lambda r: -math.inf if r["margin_psnr"] is None else r["margin_psnr"])
            safe = all(r["verdict"] == SAFE_VERDICT for r in rs)
            verdict = worst["verdict"] if not safe else rs[0]["verdict"]
            out.append(Cell(fam.name, v, fam.describe(v, ctx), seeds[0], scale, verdict, safe, worst["margin_psnr"],
                            worst["psnr"], sorted({a for r in rs for a in r["attacks"]}), util[i]["accuracy"],
                            util[i]["upload_bits"], sum(r["seconds"] for r in rs),
                            train_seconds=util[i].get("train_seconds")))
        return out

    def family(self, fam: Family, confirm: bool = True, ctx: dict | None = None) -> FamilyAdvice:
        """Search ``fam``'s axis (at ``ctx``: one clip bound of the DP family), then confirm: re-audit the
        threshold with 4× the budget and two other seeds; when it leaks, go on to the next stronger value seen
        safe (escalation, at most :data:`CONFIRM_STEPS` re-audits) — the recommendation is the weakest value
        that survives its re-audit."""
        ctx = self.ctx if ctx is None else ctx
        seen: dict[float, Cell] = {}

        def many(values):
            for c in self.cells(fam, list(values), ctx=ctx):
                seen[c.value] = c
            return [seen[v].safe for v in values]

        t: Threshold = find_threshold(fam.grid, evaluate_many=many, strength=fam.strength,
                                      continuous=fam.continuous, to_axis=fam.to_axis, from_axis=fam.from_axis,
                                      tol=fam.tol, integer=fam.integer)
        variant = fam.variant(ctx)
        adv = FamilyAdvice(fam.name, fam.axis, t.threshold,
                           None if t.threshold is None else fam.describe(t.threshold, ctx), t.weaker, t.monotone,
                           t.violations, sorted(seen.values(), key=lambda c: fam.strength(c.value)), variant=variant)
        if confirm and t.threshold is not None:
            seeds = tuple(self.cfg.seed + 100 + k for k in range(2))
            ladder = [v for v in sorted(seen, key=fam.strength)
                      if fam.strength(v) >= fam.strength(t.threshold) and seen[v].safe][:CONFIRM_STEPS]
            weaker_strong = None  # the last value that leaked at 4× the budget
            for v in ladder:
                again = self.cells(fam, [v], scale=4.0, seeds=seeds, ctx=ctx)[0]
                adv.cells.append(again)
                adv.confirm_trail.append((v, again.safe))
                if again.safe:
                    adv.recommended, adv.recommended_label = v, fam.describe(v, ctx)
                    break
                weaker_strong = v
            adv.confirmed = adv.recommended == t.threshold if adv.recommended is not None else False
            if adv.recommended is not None:
                # the one-step-weaker evidence: the value that leaked at 4x (escalated), else the search's own
                if weaker_strong is not None:
                    adv.weaker_leaks, adv.recommended_weaker = True, weaker_strong
                else:
                    adv.weaker_leaks = None if t.weaker is None else not seen[t.weaker].safe
                    adv.recommended_weaker = t.weaker
        return adv


#: re-audits (4× budget, 2 other seeds) one family may spend climbing from its threshold to a confirmed value
CONFIRM_STEPS = 4


def advise(cfg, ctx: dict, families: list[Family], out: str | Path, budget: str | None = None,
           workers: int = 1, confirm: bool = True, runner: Callable[[tuple], dict] = _job, use_ray: bool = False,
           ray_address: str | None = None, retries: int = 2, timeout: float | None = None) -> dict:
    """Run the search for every family (and every clip bound of the DP family) and write the outputs; returns
    what ``advice.json`` holds."""
    from gradleak.atomic import atomic_write_json, atomic_write_text

    out = Path(out)
    preflight(cfg, ctx, families)
    adv = Advisor(cfg, ctx, out, budget, workers, runner, use_ray=use_ray, ray_address=ray_address,
                  retries=retries, timeout=timeout)
    try:
        baseline = adv.cells(NO_DEFENSE, [0])[0]
        results = [adv.family(f, confirm, sub) for f in families for sub in f.contexts(ctx)]
    finally:
        adv.close()
    summary = {"setting": cfg.model_dump(), "advise": ctx, "budget": budget, "baseline": asdict(baseline),
               "families": [asdict(r) for r in results]}
    summary["caveats"] = caveats(summary)
    atomic_write_json(out / "advice.json", summary)
    atomic_write_text(out / "recommendations.md", format_advice(summary) + "\n")
    pareto_plot(summary, out / "pareto.png")
    return summary


def _name(f: dict) -> str:
    """``dp (C = 1)`` for a DP search at one clip bound, else the family's name."""
    return f"{f['family']} ({f['variant']})" if f.get("variant") else f["family"]


def caveats(summary: dict) -> list[str]:
    """What the recommendations do not cover, in plain sentences."""
    out = []
    attacks = sorted({a for f in summary["families"] for c in f["cells"] for a in c["attacks"]})
    budget = summary["budget"] or "as the setting file states"
    out.append(f"Attacks used: {', '.join(attacks) or 'none'}; budget per audit: {budget} (×4 for the confirmation "
               "re-audits); "
               f"{summary['advise']['batches']} audited batch(es) per candidate (the worst counts).")
    base = summary["baseline"]
    if not base["safe"] and base["verdict"] not in ("leaks", "recognisable"):
        out.append(f"The undefended client itself is only '{base['verdict']}': thresholds below may be artefacts of "
                   "a weak attack, not of the defense.")
    if base["safe"]:
        out.append("The undefended client already shows no leakage at this budget: every threshold is vacuous; "
                   "raise the budget.")
    for f in summary["families"]:
        name = _name(f)
        if not f["monotone"]:
            pairs = "; ".join(f"{a:g} safe but {b:g} leaks" for a, b in f["violations"])
            out.append(f"{name}: not monotone along {f['axis']} ({pairs}); the threshold is the weakest value "
                       "from which every stronger value seen is safe.")
        if f["threshold"] is None:
            out.append(f"{name}: no setting on the searched range stopped the attacks.")
        elif f["weaker"] is None:
            out.append(f"{name}: already safe at the weakest searched value; a weaker one may suffice.")
        trail = f.get("confirm_trail") or []
        leaked = [v for v, ok in trail if not ok]
        if leaked and f.get("recommended") is not None:
            out.append(f"{name}: {', '.join(f'{v:g}' for v in leaked)} leaked when re-audited with 4× the budget and "
                       f"other seeds; the recommendation moved up to {f['recommended_label']}, which held.")
        elif leaked:
            out.append(f"{name}: every value re-audited with 4× the budget and other seeds leaked "
                       f"({', '.join(f'{v:g}' for v in leaked)}): nothing on the searched range is recommended.")
        bad = [c["label"] for c in f["cells"] if c["verdict"] == "inconclusive"]
        if bad:
            out.append(f"{name}: inconclusive cells (the control did not reconstruct): {', '.join(bad)}.")
    return out


def _fmt(v, spec: str, none: str = "–") -> str:
    return none if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def format_advice(summary: dict) -> str:
    """The recommendation table (markdown) and the caveats: per family (and DP clip bound) the weakest setting
    with no leakage found at the command's budget, the weakest that held when re-audited with 4× the budget and
    two other seeds (the recommendation), and what that one costs."""
    base = summary["baseline"]
    lines = ["| family | weakest safe setting (budget) | recommended: held at 4× budget, 2 other seeds | verdict | "
             "worst margin ΔPSNR (dB) | accuracy (Δ vs none) | upload (× smaller) | training time (× none) | "
             "one step weaker |",
             "|---|---|---|---|---:|---:|---:|---:|---|"]
    for f in summary["families"]:
        first = f["label"] or "none found"
        rec = f.get("recommended")
        if rec is None:
            why = "not re-audited" if not f.get("confirm_trail") else "none held"
            shown = next((c for c in f["cells"] if c["value"] == f["threshold"] and c["budget_scale"] == 1.0), None)
            if shown is None:
                lines.append(f"| {_name(f)} | {first} | – | – | – | – | – | – | – |")
                continue
            rec_text = why
        else:
            shown = next(c for c in f["cells"] if c["value"] == rec and c["budget_scale"] == 1.0)
            rec_text = f"**{f['recommended_label']}**"
        strong = next((c for c in f["cells"] if c["value"] == rec and c["budget_scale"] > 1.0), None)
        judged = strong if strong is not None else shown  # the recommendation's re-audit when there is one
        margin = judged["margin_psnr"]
        dacc = None if shown["accuracy"] is None else 100 * (shown["accuracy"] - base["accuracy"])
        ratio = base["upload_bits"] / shown["upload_bits"] if shown["upload_bits"] else None
        t, t0 = shown.get("train_seconds"), base.get("train_seconds")
        slower = t / t0 if t and t0 else None
        w = f.get("recommended_weaker") if rec is not None else f["weaker"]
        wl = f.get("weaker_leaks") if rec is not None else (None if f["weaker"] is None else True)
        # the evidence cell: the weaker value's re-audit when the recommendation climbed past it, else its search cell
        ev = [c for c in f["cells"] if w is not None and c["value"] == w]
        ev = max(ev, key=lambda c: c["budget_scale"]) if ev else None
        weak = "–" if w is None else (
            f"{w:g} safe (threshold not sharp)" if wl is False else
            f"{w:g} {ev['verdict'] if ev else 'leaks'}{' at 4×' if ev and ev['budget_scale'] > 1 else ''} "
            f"({_fmt(ev and ev['margin_psnr'], '+.2f')} dB)")
        lines.append(f"| {_name(f)} | {first} | {rec_text} | {judged['verdict']} | {_fmt(margin, '+.2f')} | "
                     f"{_fmt(shown['accuracy'], '.3f')} ({_fmt(dacc, '+.1f')} pp) | {_fmt(ratio, '.1f')}× | "
                     f"{_fmt(slower, '.1f')}× | {weak} |")
    head = (f"No defense: verdict {base['verdict']}, worst margin {_fmt(base['margin_psnr'], '+.2f')} dB over the best "
            f"reference, accuracy {_fmt(base['accuracy'], '.3f')} after {summary['advise']['rounds']} FedAvg rounds.")
    return "\n".join([head, "", *lines, "", "Caveats:", *(f"- {c}" for c in summary["caveats"])])


def pareto_plot(summary: dict, path: Path) -> Path:
    """Privacy margin (worst image, dB over the best reference) against accuracy; one line per family."""
    from gradleak.report import scatter_plot

    pts = [{"x": c["accuracy"], "y": c["margin_psnr"], "label": c["label"] + ("" if c["safe"] else " ✗"),
            "group": _name(f)} for f in summary["families"] for c in f["cells"] if c["budget_scale"] == 1.0]
    b = summary["baseline"]
    pts.append({"x": b["accuracy"], "y": b["margin_psnr"], "label": "no defense", "group": "none"})
    return scatter_plot(pts, path, xlabel="test accuracy after FedAvg (higher is better)",
                        ylabel="worst-image ΔPSNR over best reference (dB; lower is more private)",
                        title="defense frontier (✗ = leaks)", connect=True)
