"""Sweeps: one audit per (cell, batch), resumable, on one process, a local process pool, or Ray.

A sweep file is a base config plus axes::

    base: {data: {name: photos}, attack: {name: invertgrad, options: {iterations: 300}}}   # or a config path
    axes:                                  # grid: every combination of these keys' values
      data.batch_size: [1, 2, 4]
      defense: [[], [{name: topk, sparsity: 0.9}]]
    zip:                                   # groups of keys that move together (one value index at a time)
      - {client.local_steps: [1, 5], client.lr: [0.1, 0.02]}
    batches: 4                             # private batches per cell: seeds base.seed + 0 … + 3

A cell is one combination of axis values; a run is one cell × batch, written by
:func:`gradleak.report.writer.write_run` to ``OUT/runs/<cell>/b<batch>/``. A run whose ``metrics.json`` exists is
done and skipped on re-run, so an interrupted sweep loses at most the runs in flight. Every executor runs
each audit with the same thread count (``threads``, default 1), so the same sweep gives the same numbers
in-process, on the pool and on Ray.
"""
from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import yaml

from gradleak.errors import UserError
from gradleak.experiments.workers import Outcome, map_outcomes

SWEEP_KEYS = ("base", "axes", "zip", "batches", "name")


@dataclass(frozen=True)
class Run:
    """One audit of a sweep: the cell's overrides and the batch index (seed offset)."""

    cell: str
    batch: int
    values: tuple[tuple[str, Any], ...]  # (dotted key, value) of every swept key

    @property
    def key(self) -> str:
        return f"{self.cell}/b{self.batch}"


@dataclass
class Sweep:
    """A parsed sweep file (see the module docstring)."""

    base: dict
    axes: dict[str, list]
    zips: list[dict[str, list]] = field(default_factory=list)
    batches: int = 1
    name: str = "sweep"

    def to_dict(self) -> dict:
        """The sweep as a sweep file holds it (``load_sweep`` reads this back)."""
        return {"name": self.name, "base": self.base, "axes": self.axes, "zip": self.zips, "batches": self.batches}

    @property
    def keys(self) -> list[str]:
        return list(self.axes) + [k for group in self.zips for k in group]

    def cells(self) -> list[tuple[tuple[str, Any], ...]]:
        """Every combination: the grid of ``axes`` × each zip group's aligned values."""
        factors: list[list[tuple[tuple[str, Any], ...]]] = [[((k, v),) for v in vals] for k, vals in self.axes.items()]
        for group in self.zips:
            n = len(next(iter(group.values())))
            factors.append([tuple((k, group[k][i]) for k in group) for i in range(n)])
        return [tuple(itertools.chain.from_iterable(combo)) for combo in itertools.product(*factors)]

    def runs(self) -> list[Run]:
        return [Run(f"c{i:03d}", b, values) for i, values in enumerate(self.cells()) for b in range(self.batches)]

    def config(self, run: Run):
        """The validated RunConfig of one run (seed = base seed + batch)."""
        from gradleak.config import validate_config

        raw = json.loads(json.dumps(self.base))  # deep copy
        for key, value in run.values:
            set_key(raw, key, value)
        raw["seed"] = int(raw.get("seed", 0)) + run.batch
        return validate_config(raw)


def set_key(raw: dict, dotted: str, value: Any) -> None:
    """``raw[a][b][c] = value`` for ``a.b.c``, creating sections; a non-section on the way is an error."""
    node = raw
    parts = dotted.split(".")
    for p in parts[:-1]:
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise UserError(f"sweep axis {dotted!r}: {p!r} is not a config section")
        node = nxt
    node[parts[-1]] = value


def _check_key(key: Any, where: str) -> str:
    from gradleak.config import RunConfig

    if not isinstance(key, str) or not key:
        raise UserError(f"sweep {where}: got key {key!r}; allowed: a dotted config key such as data.batch_size")
    head = key.split(".")[0]
    if head not in RunConfig.model_fields:
        raise UserError(f"sweep {where}: got key {key!r}; allowed: keys under {', '.join(RunConfig.model_fields)}")
    return key


def _values(key: str, vals: Any, where: str) -> list:
    if not isinstance(vals, list) or not vals:
        raise UserError(f"sweep {where}.{key}: got {vals!r}; allowed: a non-empty list of values")
    return vals


def load_sweep(path: str | Path) -> Sweep:
    """Read and validate a sweep file: every key, every cell's config (one-line errors, nothing written)."""
    from gradleak.config import load_config

    p = Path(path)
    if not p.is_file():
        raise UserError(f"sweep: file not found: {p}")
    from gradleak.safefile import read_text

    text = read_text(p, "sweep")  # size-bounded UTF-8 (gradleak.limits.TEXT_BYTES)
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise UserError(f"sweep: {p} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise UserError(f"sweep: {p} must hold a mapping with keys {', '.join(SWEEP_KEYS)}")
    unknown = [k for k in raw if k not in SWEEP_KEYS]
    if unknown:
        raise UserError(f"sweep: got key {unknown[0]!r} in {p}; allowed: {', '.join(SWEEP_KEYS)}")
    base = raw.get("base") or {}
    if isinstance(base, str):
        base_path = (p.parent / base) if not Path(base).is_absolute() else Path(base)
        base = json.loads(json.dumps(load_config(base_path).model_dump(mode="json")))
    if not isinstance(base, dict):
        raise UserError(f"sweep base: got {type(base).__name__}; allowed: a config mapping or a config file path")
    axes_raw = raw.get("axes") or {}
    if not isinstance(axes_raw, dict):
        raise UserError(f"sweep axes: got {axes_raw!r}; allowed: a mapping of config key -> list of values")
    axes = {_check_key(k, "axes"): _values(k, v, "axes") for k, v in axes_raw.items()}
    zips = []
    for i, group in enumerate(raw.get("zip") or []):
        if not isinstance(group, dict) or not group:
            raise UserError(f"sweep zip[{i}]: got {group!r}; allowed: a mapping of config key -> list of values")
        g = {_check_key(k, f"zip[{i}]"): _values(k, v, f"zip[{i}]") for k, v in group.items()}
        if len({len(v) for v in g.values()}) != 1:
            raise UserError(f"sweep zip[{i}]: got lists of lengths {[len(v) for v in g.values()]}; allowed: equal "
                            "lengths (the keys move together)")
        zips.append(g)
    seen = [k for k in list(axes) + [k for g in zips for k in g]]
    dup = next((k for k in seen if seen.count(k) > 1), None)
    if dup:
        raise UserError(f"sweep: key {dup!r} is swept twice; allowed: each key in one axis or zip group")
    batches = raw.get("batches", 1)
    if isinstance(batches, bool) or not isinstance(batches, int) or batches < 1:
        raise UserError(f"sweep batches: got {batches!r}; allowed: an integer >= 1")
    name = str(raw.get("name") or p.stem)
    sweep = Sweep(base=base, axes=axes, zips=zips, batches=batches, name=name)
    from gradleak.audit import attack_once

    for run in sweep.runs()[:: sweep.batches]:  # every cell's config and attack options, before any work
        try:
            cfg = sweep.config(run)
            if cfg.attack.name == "auto":  # the portfolio: only its budget is an option
                from gradleak.attacks.budget import parse_budget

                parse_budget(cfg.attack.options.get("budget", "10m"), "attack.options.budget")
            else:
                attack_once(cfg)  # built once: the runs in this process reuse it
        except UserError as err:
            where = ", ".join(f"{k}={_short(v)}" for k, v in run.values)
            raise UserError(f"sweep cell {run.cell} ({where}): {err}") from None
    return sweep


def _short(v: Any) -> str:
    text = json.dumps(v, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


# --- one run (what every executor calls) --------------------------------------------------------------------

def run_one(sweep: Sweep, run: Run, out: str, threads: int = 1) -> dict:
    """Audit one run and write its directory; returns its results row. Runs in any worker process; the cell's
    attack is built once per process (:func:`gradleak.audit.attack_once`)."""
    import torch

    from gradleak.audit import attack_once, audit
    from gradleak.autoaudit import audit_auto
    from gradleak.report.writer import write_run

    if threads:
        torch.set_num_threads(threads)
    cfg = sweep.config(run)
    # attack: auto runs the audit's portfolio
    result = audit_auto(cfg) if cfg.attack.name == "auto" else audit(cfg, attack=attack_once(cfg))
    write_run(result, Path(out) / "runs" / run.key)
    return row_of(run, result)


def _swept(run: Run) -> dict:
    """The run's swept values, as CSV cells."""
    return {k: v if isinstance(v, (int, float, str)) and not isinstance(v, bool) else _short(v) for k, v in run.values}


def row_of(run: Run, result) -> dict:
    """The results.csv row of a finished run, from its :class:`gradleak.audit.AuditResult`."""
    sc, cal, rec = result.scores, result.calibration, result.reconstruction
    jac = sc.semantic.get("jaccard")
    return {"cell": run.cell, "batch": run.batch, "seed": result.config.seed, **_swept(run),
            "psnr": sc.psnr["mean"], "psnr_best": sc.psnr["best"], "ssim": sc.ssim["mean"],
            "lpips": sc.lpips["mean"] if sc.lpips else None, "jaccard": jac["mean"] if jac else None,
            "label_accuracy": result.label_accuracy, "seconds": round(rec.seconds, 3), "distance": rec.distance,
            "dpsnr": (cal.margins.get("psnr") or {}).get("mean") if cal is not None else None,
            "verdict": result.audit.verdict if result.audit is not None else
            cal.verdict["batch"] if cal is not None else None}


def row_of_metrics(run: Run, m: dict) -> dict:
    """The same row, of a run finished earlier, from its ``metrics.json`` (a resumed sweep)."""
    def mean(key):
        v = m.get(key)
        return v.get("mean") if isinstance(v, dict) else None

    return {"cell": run.cell, "batch": run.batch, "seed": m.get("seed"), **_swept(run),
            "psnr": mean("psnr"), "psnr_best": (m.get("psnr") or {}).get("best"), "ssim": mean("ssim"),
            "lpips": mean("lpips"), "jaccard": mean("jaccard"), "label_accuracy": m.get("label_accuracy"),
            "seconds": m.get("seconds"), "distance": m.get("distance"),
            "dpsnr": ((m.get("margins") or {}).get("psnr") or {}).get("mean"),
            "verdict": (m.get("audit") or {}).get("verdict") or (m.get("verdict") or {}).get("batch")}


def done_row(run: Run, out: Path) -> dict | None:
    """The row of a run whose ``metrics.json`` exists (a finished run), else None."""
    path = out / "runs" / run.key / "metrics.json"
    if not path.is_file():
        return None
    try:
        return row_of_metrics(run, json.loads(path.read_text()))
    except (OSError, ValueError):
        return None  # unreadable: run again


# --- executors ----------------------------------------------------------------------------------------------

def execute(sweep: Sweep, runs: list[Run], out: Path, workers: int = 0, ray_address: str | None = None,
            use_ray: bool = False, threads: int = 1, retries: int = 2,
            timeout: float | None = None) -> Iterator[Outcome]:
    """Run ``runs``, yielding each run's :class:`~gradleak.experiments.workers.Outcome` (key ``cell/bN``; the
    results row when it succeeded, the reason when it failed) in completion order, on the executor
    :func:`~gradleak.experiments.workers.map_outcomes` picks (this process, the process pool or Ray): a worker
    that dies is retried ``retries`` times, then the run is reported failed; a run longer than ``timeout``
    seconds is killed and counts as a failed attempt; an exception fails its run only."""
    yield from map_outcomes(run_one, [(run.key, (sweep, run, str(out), threads)) for run in runs], workers=workers,
                            use_ray=use_ray, ray_address=ray_address, threads=threads, retries=retries,
                            timeout=timeout, markers={r.key: str(out / "runs" / r.key / ".timeout") for r in runs},
                            what="sweep")


# --- the sweep ----------------------------------------------------------------------------------------------

FAILURES = "failures.json"


def run_sweep(sweep: Sweep, out: str | Path, workers: int = 0, use_ray: bool = False,
              ray_address: str | None = None, threads: int = 1, progress: bool = True, retries: int = 2,
              timeout: float | None = None) -> list[dict]:
    """Run every run not already done, then write results.csv, summary.csv, the plots and sweep.html.

    A run whose worker dies is retried ``retries`` times, a run longer than ``timeout`` seconds is killed (an
    attempt); runs that still fail are listed with the reason in ``OUT/failures.json`` and counted per cell in
    summary.csv (``failed``, ``failure``); every other run finishes. Running the same sweep again redoes only
    the runs without ``metrics.json`` — the failed ones and those in flight at a Ctrl-C or a kill."""
    from gradleak.locks import out_lock

    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise UserError(f"sweep --retries: got {retries!r}; allowed: an integer >= 0")
    if timeout is not None and (not isinstance(timeout, (int, float)) or not math.isfinite(timeout) or timeout < 0):
        raise UserError(f"sweep --timeout: got {timeout!r}; allowed: seconds >= 0 (0: no limit)")
    out = Path(out)
    with out_lock(out, f"gradleak sweep {sweep.name}"):  # one sweep per directory (held already under the CLI)
        return _run_sweep(sweep, out, workers, use_ray, ray_address, threads, progress, retries, timeout or None)


def read_failures(out: str | Path) -> list[dict]:
    """The failed runs of the last sweep into ``out`` (empty when every run finished)."""
    p = Path(out) / FAILURES
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError):
        return []
    return data.get("failed", []) if isinstance(data, dict) else []


def _run_sweep(sweep: Sweep, out: Path, workers: int, use_ray: bool, ray_address: str | None, threads: int,
               progress: bool, retries: int, timeout: float | None) -> list[dict]:
    import os

    from tqdm.auto import tqdm

    from gradleak.atomic import atomic_write_text

    atomic_write_text(out / "sweep.json", json.dumps(sweep.to_dict(), indent=1, default=str))
    runs = sweep.runs()
    rows: dict[str, dict] = {}
    todo = []
    for run in runs:
        row = done_row(run, out)
        if row is None:
            todo.append(run)
        else:
            rows[run.key] = row
    workers = workers or min(len(todo), os.cpu_count() or 1) or 1
    bar = tqdm(total=len(runs), initial=len(rows), desc=f"sweep {sweep.name}", unit="run", disable=not progress,
               dynamic_ncols=True)
    by_key = {r.key: r for r in runs}
    failed: list[dict] = []
    try:
        for res in execute(sweep, todo, out, workers=workers, ray_address=ray_address, use_ray=use_ray,
                           threads=threads, retries=retries, timeout=timeout):
            if res.ok:
                rows[res.key] = res.result
            else:
                run = by_key[res.key]
                failed.append({"run": res.key, "cell": run.cell, "batch": run.batch,
                               "values": {k: v for k, v in run.values}, "reason": res.reason,
                               "attempts": res.attempts})
            bar.update(1)
    except KeyboardInterrupt:
        bar.close()
        import sys

        print(f"sweep: interrupted; {len(rows)} of {len(runs)} runs are finished and kept in {out / 'runs'} — "
              "run the same command again to do the rest", file=sys.stderr)
        raise
    bar.close()
    from gradleak.atomic import atomic_write_json

    if failed:
        failed.sort(key=lambda f: f["run"])
        atomic_write_json(out / FAILURES, {"failed": failed, "retries": retries, "timeout": timeout,
                                           "note": "rerun the same sweep to redo only these runs"})
    else:
        (out / FAILURES).unlink(missing_ok=True)
    ordered = [rows[r.key] for r in runs if r.key in rows]
    write_outputs(sweep, ordered, out, failed)
    return ordered


def bootstrap_ci(values: list[float], seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (scipy.stats.bootstrap); a single value is its own interval."""
    import numpy as np
    from scipy import stats

    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if v.size == 0:
        return (math.nan, math.nan)
    if v.size == 1 or np.all(v == v[0]):
        return (float(v[0]), float(v[0]))
    res = stats.bootstrap((v,), np.mean, confidence_level=level, n_resamples=2000, method="percentile",
                          random_state=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


METRICS = ("psnr", "dpsnr", "ssim", "lpips", "jaccard", "label_accuracy", "seconds")


def summarize(sweep: Sweep, rows: list[dict], failed: list[dict] | None = None) -> list[dict]:
    """Per cell: the swept values, runs, and for each metric mean, 95 % bootstrap interval; PSNR best-in-batch;
    ``dpsnr`` is the margin over the best no-gradient reference (:mod:`gradleak.calibration`), and
    ``verdicts`` counts the batches' verdicts. With ``failed`` (:func:`run_sweep`'s failed runs) every cell also
    gets ``failed`` (how many of its runs failed) and ``failure`` (the first reason); a cell whose runs all
    failed is listed with ``runs`` 0."""
    out = []
    for cell, values in [(f"c{i:03d}", v) for i, v in enumerate(sweep.cells())]:
        rs = [r for r in rows if r["cell"] == cell]
        bad = [f for f in failed or [] if f["cell"] == cell]
        if not rs:
            if bad:
                out.append({"cell": cell, **{k: _csv_value(v) for k, v in values}, "runs": 0, "failed": len(bad),
                            "failure": f"{bad[0]['run']}: {bad[0]['reason']}"})
            continue
        s: dict = {"cell": cell, **{k: rs[0][k] for k, _ in values}, "runs": len(rs)}
        if failed is not None:
            s["failed"] = len(bad)
            s["failure"] = f"{bad[0]['run']}: {bad[0]['reason']}" if bad else None
        for m in METRICS:
            vals = [r[m] for r in rs if r.get(m) is not None]
            if not vals:
                s[f"{m}_mean"] = s[f"{m}_lo"] = s[f"{m}_hi"] = None
                continue
            s[f"{m}_mean"] = sum(vals) / len(vals)
            s[f"{m}_lo"], s[f"{m}_hi"] = bootstrap_ci(vals)
        best = [r["psnr_best"] for r in rs if r.get("psnr_best") is not None]
        s["psnr_best_in_batch"] = max(best) if best else None
        verdicts = [r["verdict"] for r in rs if r.get("verdict")]
        s["verdicts"] = ", ".join(f"{verdicts.count(v)} {v}" for v in dict.fromkeys(verdicts)) or None
        out.append(s)
    return out


def _write_csv(path: Path, rows: list[dict]) -> None:
    import csv
    import io

    from gradleak.atomic import atomic_write_text

    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def _csv_value(v: Any) -> Any:
    return v if isinstance(v, (int, float, str)) and not isinstance(v, bool) else _short(v)


def write_outputs(sweep: Sweep, rows: list[dict], out: Path, failed: list[dict] | None = None) -> None:
    """results.csv, summary.csv, plots (leakage vs each numeric axis; heatmap for two axes), sweep.html."""
    from gradleak.report.sweep import sweep_plots, write_sweep_html

    summary = summarize(sweep, rows, failed)
    _write_csv(out / "results.csv", rows)
    _write_csv(out / "summary.csv", summary)
    summary = [s for s in summary if s["runs"]]  # plots and the page: cells with finished runs
    plots = sweep_plots(sweep.keys, summary, out)
    write_sweep_html(out / "sweep.html", sweep.name, sweep.keys, summary, plots,
                     grids={s["cell"]: out / "runs" / s["cell"] / "b0" / "reconstruction.png" for s in summary})
