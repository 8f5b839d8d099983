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
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
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
    from gradleak.attacks import build_attack

    for run in sweep.runs()[:: sweep.batches]:  # every cell's config and attack options, before any work
        try:
            cfg = sweep.config(run)
            if cfg.attack.name == "auto":  # the portfolio: only its budget is an option
                from gradleak.attacks.budget import parse_budget

                parse_budget(cfg.attack.options.get("budget", "10m"), "attack.options.budget")
            else:
                build_attack(cfg.attack.name, **cfg.attack.options)
        except UserError as err:
            where = ", ".join(f"{k}={_short(v)}" for k, v in run.values)
            raise UserError(f"sweep cell {run.cell} ({where}): {err}") from None
    return sweep


def _short(v: Any) -> str:
    text = json.dumps(v, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


# --- one run (what every executor calls) --------------------------------------------------------------------

def run_one(sweep: Sweep, run: Run, out: str, threads: int = 1) -> dict:
    """Audit one run and write its directory; returns its results row. Runs in any worker process."""
    import torch

    from gradleak.autoaudit import run_config
    from gradleak.report.writer import write_run

    if threads:
        torch.set_num_threads(threads)
    cfg = sweep.config(run)
    result = run_config(cfg)  # attack: auto runs the audit's portfolio
    write_run(result, Path(out) / "runs" / run.key)
    return row_of(run, result.metrics())


def row_of(run: Run, m: dict) -> dict:
    """The results.csv row of a finished run from its metrics."""
    def mean(key):
        v = m.get(key)
        return v.get("mean") if isinstance(v, dict) else None

    row: dict = {"cell": run.cell, "batch": run.batch, "seed": m.get("seed")}
    for k, v in run.values:
        row[k] = v if isinstance(v, (int, float, str)) and not isinstance(v, bool) else _short(v)
    row.update({"psnr": mean("psnr"), "psnr_best": (m.get("psnr") or {}).get("best"), "ssim": mean("ssim"),
                "lpips": mean("lpips"), "jaccard": mean("jaccard"), "label_accuracy": m.get("label_accuracy"),
                "seconds": m.get("seconds"), "distance": m.get("distance"),
                "dpsnr": ((m.get("margins") or {}).get("psnr") or {}).get("mean"),
                "verdict": (m.get("audit") or {}).get("verdict") or (m.get("verdict") or {}).get("batch")})
    return row


def done_row(run: Run, out: Path) -> dict | None:
    """The row of a run whose ``metrics.json`` exists (a finished run), else None."""
    path = out / "runs" / run.key / "metrics.json"
    if not path.is_file():
        return None
    try:
        return row_of(run, json.loads(path.read_text()))
    except (OSError, ValueError):
        return None  # unreadable: run again


# --- executors ----------------------------------------------------------------------------------------------

def execute(sweep: Sweep, runs: list[Run], out: Path, workers: int = 0, ray_address: str | None = None,
            use_ray: bool = False, threads: int = 1) -> Iterator[dict]:
    """Run ``runs``, yielding each results row as it finishes (in completion order)."""
    if use_ray:
        yield from _execute_ray(sweep, runs, out, ray_address, threads)
        return
    if workers == 1 or len(runs) <= 1:
        for run in runs:
            yield run_one(sweep, run, str(out), threads)
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    ctx = mp.get_context("spawn")
    pool = ProcessPoolExecutor(max_workers=min(workers, len(runs)), mp_context=ctx)  # run_one sets the threads
    try:
        futures = [pool.submit(run_one, sweep, run, str(out), threads) for run in runs]
        for fut in as_completed(futures):
            yield fut.result()
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _execute_ray(sweep: Sweep, runs: list[Run], out: Path, address: str | None, threads: int) -> Iterator[dict]:
    try:
        import ray
    except ImportError:
        raise UserError("sweep --ray: the ray package is not installed; allowed: pip install 'gradleak[ray]'") from None
    started = False
    if not ray.is_initialized():
        ray.init(address=address or None, include_dashboard=False, log_to_driver=False)
        started = True
    try:
        task = ray.remote(num_cpus=threads or 1)(run_one)
        pending = [task.remote(sweep, run, str(out), threads) for run in runs]
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            yield ray.get(ready[0])
    finally:
        if started:
            ray.shutdown()


# --- the sweep ----------------------------------------------------------------------------------------------

def run_sweep(sweep: Sweep, out: str | Path, workers: int = 0, use_ray: bool = False,
              ray_address: str | None = None, threads: int = 1, progress: bool = True) -> list[dict]:
    """Run every run not already done, then write results.csv, summary.csv, the plots and sweep.html."""
    import os

    from tqdm.auto import tqdm

    from gradleak.atomic import atomic_write_text

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
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
    for row in execute(sweep, todo, out, workers=workers, ray_address=ray_address, use_ray=use_ray,
                       threads=threads):
        rows[f"{row['cell']}/b{row['batch']}"] = row
        bar.update(1)
    bar.close()
    ordered = [rows[r.key] for r in runs if r.key in rows]
    write_outputs(sweep, ordered, out)
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


def summarize(sweep: Sweep, rows: list[dict]) -> list[dict]:
    """Per cell: the swept values, runs, and for each metric mean, 95 % bootstrap interval; PSNR best-in-batch;
    ``dpsnr`` is the margin over the best no-gradient reference (:mod:`gradleak.calibration`), and
    ``verdicts`` counts the batches' verdicts."""
    out = []
    for cell, values in [(f"c{i:03d}", v) for i, v in enumerate(sweep.cells())]:
        rs = [r for r in rows if r["cell"] == cell]
        if not rs:
            continue
        s: dict = {"cell": cell, **{k: rs[0][k] for k, _ in values}, "runs": len(rs)}
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


def write_outputs(sweep: Sweep, rows: list[dict], out: Path) -> None:
    """results.csv, summary.csv, plots (leakage vs each numeric axis; heatmap for two axes), sweep.html."""
    from gradleak.report.sweep import sweep_plots, write_sweep_html

    summary = summarize(sweep, rows)
    _write_csv(out / "results.csv", rows)
    _write_csv(out / "summary.csv", summary)
    plots = sweep_plots(sweep.keys, summary, out)
    write_sweep_html(out / "sweep.html", sweep.name, sweep.keys, summary, plots,
                     grids={s["cell"]: out / "runs" / s["cell"] / "b0" / "reconstruction.png" for s in summary})
