"""``gradleak audit``: a verdict that can be trusted — the attack portfolio, a positive control, one budget.

    observation ─► labels (given, else recovered) ─► portfolio (from the observation, never the truth)
                ─► every attack under the budget ─► per image the best reconstruction over all attacks
                ─► references, margins, level (gradleak.calibration) ─► control ─► verdict

Verdicts (:data:`VERDICTS`): *leaks* (an image recognisable, the rule of
:class:`gradleak.metrics.reference.VerdictRule`), *partial*, *no leakage found* — only when the positive control
reached recognisable —, *inconclusive* — when it did not ("the attacks could not reconstruct even the
undefended update within this budget"), when the audit was interrupted before anything leaked, or when the
defense chain holds a transform no attack models, or when no attack returned images within the budget.

The positive control is the same model, θ_0 and protocol without the defense chain (and, when there is no
defense, at batch 1), on the true images (a simulated case, or ``--truth``) or public images; it runs the
same portfolio (the same attack objects) with the same time. It is only run when the audited upload did not
already leak (a leak needs no control).

Budget (wall-clock): the setup (data, victim, capture, labels, plans) counts; 8 % (at least 1 s) is kept for
scoring and writing; the rest is split in two equal shares, one for the audited observation and one for the
control. Inside a share the searches race for the time (:mod:`gradleak.portfolio.run`: a short probe each,
ranked by one common truth-free matching distance, the leader continues from its state with the rest). An
iteration budget (``500it``) instead runs every search attack that many iterations (reproducible).

Anytime: Ctrl-C (or the budget's end) ends the running attack with its images so far; the result is
labelled ``interrupted`` and written like any other; the command then exits 130.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

from gradleak.attacks import Reconstruction
from gradleak.attacks.budget import AuditBudget, parse_budget
from gradleak.attacks.labels import label_accuracy, recover_labels
from gradleak.audit import AuditResult, Environment, Scores, Timing, build_case, check_tagger, score
from gradleak.calibration import calibration_of, protocol_text
from gradleak.case import Case, capture
from gradleak.config import RunConfig
from gradleak.devices import resolve as resolve_device
from gradleak.errors import UserError
from gradleak.fl.observation import Observation
from gradleak.metrics.reference import margins as reference_margins
from gradleak.portfolio import PortfolioRun, choose, run_portfolio, situation_of

VERDICTS = ("leaks", "partial", "no leakage found", "inconclusive")
RESERVE_FRACTION, RESERVE_MIN = 0.08, 1.0
LEVEL_VERDICT = {"recognisable": "leaks", "partial": "partial"}


# --- typed results (metrics.json's "audit" section) -----------------------------------------------------------

@dataclass
class AttackSummary:
    """One attack's row of the first screen: time, iterations, matched scores, margin over the best reference,
    the images it won (it gave the best reconstruction of), how it ended."""

    name: str
    reason: str
    closed_form: bool
    stopped: str | None
    note: str | None
    seconds: float
    share: float | None
    iterations: int
    psnr: float | None = None
    ssim: float | None = None
    lpips: float | None = None
    margin_psnr: float | None = None
    margin_ssim: float | None = None
    images_won: int = 0
    psnr_per_image: list[float] | None = None  # in the originals' order
    ssim_per_image: list[float] | None = None
    race_rank: int | None = None  # its rank in the portfolio's race (1: the leader; gradleak.portfolio.run)
    race_distance: float | None = None  # the common matching distance it was ranked by


@dataclass
class ControlSummary:
    """The positive control: how it was built, its level under the same rule, its attacks."""

    built: str
    batch: int
    level: str | None
    psnr: float | None
    margin_psnr: float | None
    attacks: list[AttackSummary]
    interrupted: bool = False
    skipped: str | None = None


@dataclass
class AuditSummary:
    """Everything the first screen shows, typed: the verdict and its sentence, the budget and what was spent,
    the attacks (with the winner of each image), the control, the attacker view and the full protocol."""

    verdict: str
    sentence: str
    budget: str
    budget_seconds: float | None
    budget_iterations: int | None
    seconds: float
    interrupted: bool
    attacks: list[AttackSummary]
    winners: list[str]
    worst_image: int | None
    level: str | None
    control: ControlSummary | None
    label_mode: str
    label_accuracy: float | None
    view: dict
    protocol: str
    flags: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


# --- scoring over attacks ------------------------------------------------------------------------------------

def score_portfolio(run: PortfolioRun, originals: Tensor, cfg: RunConfig) -> tuple[list[AttackSummary], dict]:
    """Score every attack that returned images (matched to the originals); per image the best reconstruction
    over all attacks by PSNR (the defender's worst case). Returns the summaries and ``{"images", "winners",
    "scores"}`` (images in the originals' order) — or empty when no attack returned images."""
    rows, matched = [], {}
    for r in run.runs:
        row = AttackSummary(name=r.name, reason=r.reason, closed_form=r.closed_form, stopped=r.stopped, note=r.note,
                            seconds=round(r.seconds, 3), share=None if r.share is None else round(r.share, 3),
                            iterations=r.iterations, race_rank=r.race_rank, race_distance=r.race_distance)
        rows.append(row)
        if r.reconstruction is None:
            continue
        images = r.reconstruction.images
        if images.shape[0] != originals.shape[0]:  # e.g. a one-image closed form on a batch: not comparable
            row.note = (row.note or "") + f"returned {images.shape[0]} images for {originals.shape[0]}"
            continue
        s, m = score(images, originals, cfg)
        matched[r.name] = (m, s)
        row.psnr, row.ssim = s.psnr["mean"], s.ssim["mean"]
        row.lpips = s.lpips["mean"] if s.lpips else None
        row.psnr_per_image = [float(v) for v in s.psnr["per_image"]]
        row.ssim_per_image = [float(v) for v in s.ssim["per_image"]]
    if not matched:
        return rows, {}
    names = list(matched)
    per = torch.tensor([matched[n][1].psnr["per_image"] for n in names])  # (A, B)
    win = per.nan_to_num(nan=-1e9).argmax(0).tolist()
    winners = [names[a] for a in win]
    worst = torch.stack([matched[names[a]][0][i] for i, a in enumerate(win)])
    for row in rows:
        row.images_won = winners.count(row.name)
    return rows, {"images": worst, "winners": winners, "matched": {n: matched[n][0] for n in names}}


def _attach_margins(rows: list[AttackSummary], references: dict) -> None:
    """Each attack's mean margins over the best reference per image (the worst case's references)."""
    for row in rows:
        if row.psnr_per_image is None:
            continue
        m = reference_margins({"psnr": row.psnr_per_image, "ssim": row.ssim_per_image, "jaccard": None}, references)
        row.margin_psnr = m["psnr"]["mean"] if m.get("psnr") else None
        row.margin_ssim = m["ssim"]["mean"] if m.get("ssim") else None


# --- one observation under the portfolio -----------------------------------------------------------------------

@dataclass
class _Side:
    """The audited observation, or the control: its run, its worst case and calibration."""

    obs: Observation
    images: Tensor
    labels: Tensor
    run: PortfolioRun
    rows: list[AttackSummary]
    worst: dict
    scores: Scores | None = None
    calibration: object = None


def _labels_for(obs: Observation, model) -> tuple[Tensor, str]:
    if obs.labels is not None:
        return obs.labels, "oracle"
    return recover_labels(obs, model), "recover"


def _attack_side(obs: Observation, plans, images: Tensor, true_labels: Tensor, cfg: RunConfig, seconds, iterations,
                 progress: bool, device: str, public=None, data: str | None = None,
                 seconds_per_iteration: float = 0.0) -> tuple[_Side, str]:
    model = obs.build_model()
    labels, mode = _labels_for(obs, model)
    run = run_portfolio(obs, plans, labels, model, seconds=seconds, iterations=iterations, seed=cfg.seed,
                        progress=progress, device=device, seconds_per_iteration=seconds_per_iteration)
    rows, worst = score_portfolio(run, images, cfg)
    side = _Side(obs, images, true_labels, run, rows, worst)
    if worst:
        side.scores, _ = score(worst["images"], images, cfg)
        side.calibration = calibration_of(cfg, side.scores, obs, images, true_labels, mode, public=public, data=data)
        _attach_margins(rows, side.calibration.reference)
    return side, mode


def control_case(model, images: Tensor, labels: Tensor, protocol, defended: bool, give_labels: bool,
                 model_spec: dict | None) -> Case:
    """The positive control's client: the same model (θ_0) and protocol, no defense chain, the same batch size
    — or batch 1 when the audited upload had no defense either (else the control would be the audit itself)."""
    n = images.shape[0] if defended else 1
    return Case(model=model, images=images[:n].clone(), labels=labels[:n].clone(), protocol=protocol, defenses=[],
                model_spec=model_spec, give_labels=give_labels)


def verdict_of(level: str | None, control_level: str | None, interrupted: bool, unmodelled: str | None) -> str:
    """The audit verdict from the worst case's level and the control's (see the module docstring)."""
    if level is None:  # no attack returned images: nothing was shown either way
        return "inconclusive"
    if level in LEVEL_VERDICT:
        return LEVEL_VERDICT[level]
    if interrupted or unmodelled or control_level != "recognisable":
        return "inconclusive"
    return "no leakage found"


def sentence_of(verdict: str, level_counts: dict | None, budget: AuditBudget, seconds: float, tried: list[str],
                interrupted: bool, control: ControlSummary | None, unmodelled: str | None) -> str:
    """The first screen's one sentence."""
    counts = level_counts or {}
    n = sum(counts.values())
    if verdict == "leaks":
        what = f"Leaks: {counts.get('recognisable', 0)} of {n} images recognisable"
    elif verdict == "partial":
        what = f"Partial leakage: {counts.get('partial', 0)} of {n} images partly reconstructed"
    elif verdict == "no leakage found":
        what = ("No leakage found: no image beat the references, while the same attacks reconstructed the "
                "undefended control")
    elif level_counts is None:
        what = "Inconclusive: no attack returned images within this budget"
    else:
        what = "Inconclusive: no image beat the references, but " + (
            "the audit was interrupted" if interrupted else
            f"the defense chain holds a transform no attack models ({unmodelled})" if unmodelled else
            "the attacks could not reconstruct even the undefended update within this budget"
            + (f" (control: {control.level or control.skipped})" if control else ""))
    return (f"{what} — budget {budget.describe()} ({seconds:.0f} s used{', interrupted' if interrupted else ''}); "
            f"attacks tried: {', '.join(tried) or 'none'}.")


def _control_summary(side: _Side, built: str, mode: str) -> ControlSummary:
    level = side.calibration.verdict["batch"] if side.calibration is not None else None
    return ControlSummary(built=built, batch=side.obs.num_images, level=level,
                          psnr=side.scores.psnr["mean"] if side.scores else None,
                          margin_psnr=(side.calibration.margins.get("psnr") or {}).get("mean")
                          if side.calibration else None,
                          attacks=side.rows, interrupted=side.run.interrupted,
                          skipped=None if side.calibration is not None else
                          "no attack returned images within the control's share of the budget")


def check_attackable(obs: Observation) -> None:
    """Refuse an observation with nothing to attack: an all-zero or non-finite upload."""
    if not obs.update or all(not bool(t.any()) for t in obs.update.values()):
        raise UserError("observation: got an upload that is zero in every tensor; allowed: an observation with a "
                        "non-zero update (nothing attackable)")


def check_prior(prior: str | None, image_shape) -> None:
    """A ``--prior`` must produce the data's shape natively (one-line error otherwise)."""
    if prior is None:
        return
    from gradleak.attacks.generative import native_shape
    from gradleak.priors.prior import load_prior

    got = native_shape(load_prior(prior))
    if tuple(got) != tuple(image_shape):
        raise UserError(f"--prior: got {prior!r} producing images {tuple(got)}; allowed: a prior producing the "
                        f"observation's images {tuple(image_shape)}")


def _warm_up() -> None:
    """One-off imports the first optimiser pulls in (torch._dynamo: seconds) happen in the setup, not inside an
    attack's measured time."""
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])


def _merge_trace(run: PortfolioRun) -> list[dict]:
    rows = []
    for r in run.runs:
        if r.reconstruction is not None:
            rows.extend({**t, "stage": f"{r.name}/{t['stage']}"} for t in r.reconstruction.trace)
    return rows


def _assemble(cfg: RunConfig, case: Case, main: _Side, mode: str, control: ControlSummary | None,
              budget: AuditBudget, t0: float, timing: Timing, device: str, unmodelled: str | None,
              notes: list[str], flags: list[str] | None = None) -> AuditResult:
    level = main.calibration.verdict["batch"] if main.calibration is not None else None
    counts = main.calibration.verdict["counts"] if main.calibration is not None else None
    verdict = verdict_of(level, control.level if control else None, main.run.interrupted, unmodelled)
    tried = [r.name for r in main.run.runs if r.stopped not in ("skipped",)]
    seconds = time.perf_counter() - t0
    winners = main.worst.get("winners", [])
    worst_image = None
    if main.calibration is not None:
        dp = main.calibration.margins["psnr"]["per_image"]
        worst_image = int(max(range(len(dp)), key=lambda i: dp[i]))
    rec_labels = None
    finished = main.run.finished
    if finished and finished[0].reconstruction.labels is not None:
        rec_labels = finished[0].reconstruction.labels
    acc = label_accuracy(rec_labels, case.labels) if rec_labels is not None and rec_labels.shape == case.labels.shape \
        else None
    flags = list(flags or [])
    from gradleak.defenses.estimate import attacker_view

    view = attacker_view(main.obs)
    if view.noise:
        flags.append("the defense is stochastic (noise): the server holds one draw; this verdict is for that draw")
    if unmodelled:
        flags.append(f"not modelled by any attack: {unmodelled}")
    summary = AuditSummary(
        verdict=verdict, sentence=sentence_of(verdict, counts, budget, seconds, tried, main.run.interrupted, control,
                                              unmodelled),
        budget=budget.describe(), budget_seconds=budget.seconds, budget_iterations=budget.iterations,
        seconds=round(seconds, 3), interrupted=main.run.interrupted, attacks=main.rows, winners=winners,
        worst_image=worst_image, level=level, control=control, label_mode=mode, label_accuracy=acc,
        view=view.to_dict(), protocol=protocol_text(main.obs.protocol, main.obs.num_images), flags=flags)
    images = main.worst["images"] if main.worst else torch.full_like(case.images, 0.5)
    rec = Reconstruction(images=images, labels=rec_labels, attack="auto", seconds=main.run.seconds,
                         iterations=sum(r.iterations for r in main.run.runs), trace=_merge_trace(main.run),
                         stopped="interrupted" if main.run.interrupted else "completed")
    scores = main.scores if main.scores is not None else score(images, case.images, cfg)[0]
    result = AuditResult(config=cfg, case=case, observation=main.obs, reconstruction=rec, label_mode=mode,
                         label_accuracy=acc, scores=scores, timing=timing,
                         environment=Environment.current(device), matched=images, calibration=main.calibration,
                         notes=notes, audit=summary,
                         attack_images={r.name: main.worst["matched"][r.name] for r in main.run.finished
                                        if r.name in main.worst.get("matched", {})})
    if main.calibration is not None:
        main.calibration.header["attack"] = (f"auto: {', '.join(tried) or 'none'} (budget {budget.describe()}; "
                                             "portfolio chosen from the observation)")
        main.calibration.header["verdict"] = summary.sentence
    return result


def _shares(budget: AuditBudget, t0: float) -> float | None:
    if budget.seconds is None:
        return None
    left = budget.seconds - (time.perf_counter() - t0)
    reserve = max(RESERVE_MIN, RESERVE_FRACTION * budget.seconds)
    return max(0.0, (left - reserve) / 2)


def run_control(main: _Side, model, images: Tensor, labels: Tensor, protocol, defended: bool, give_labels: bool,
                model_spec, plans, cfg: RunConfig, budget: AuditBudget, share: float | None, t0: float,
                progress: bool, device: str, built: str, seed: int, **side) -> ControlSummary:
    """The positive control (module docstring), run only when the audited side neither leaked nor was
    interrupted: :func:`control_case` captured and attacked by the same ``plans`` for at most ``share`` seconds
    (what is left of the budget after the reserve). ``built`` says how it was built (``{n}``: its batch)."""
    level = main.calibration.verdict["batch"] if main.calibration is not None else None
    if main.run.interrupted or level == "recognisable":
        return ControlSummary(built="", batch=0, level=None, psnr=None, margin_psnr=None, attacks=[],
                              skipped="interrupted before the control ran" if main.run.interrupted else
                              "not needed: the audited upload already leaks")
    ccase = control_case(model, images, labels, protocol, defended, give_labels, model_spec)
    cobs = capture(ccase, seed=seed)
    left = None if share is None else min(share, budget.seconds - (time.perf_counter() - t0)
                                          - max(RESERVE_MIN, RESERVE_FRACTION * budget.seconds))
    cside, cmode = _attack_side(cobs, plans, ccase.images, ccase.labels, cfg, left, budget.iterations, progress,
                                device, **side, seconds_per_iteration=main.run.seconds_per_iteration)
    return _control_summary(cside, built.format(n=ccase.images.shape[0]), cmode)


def audit_auto(cfg: RunConfig, budget: AuditBudget | str | None = None, prior: str | None = None,
               progress: bool = False) -> AuditResult:
    """``attack: auto``: audit the config's case with the portfolio, the positive control and one budget
    (``budget`` or ``cfg.attack.options["budget"]``, default ``10m``; ``prior`` or ``options["prior"]``).
    Nothing is written; ``result.audit`` is the :class:`AuditSummary`."""
    t0 = time.perf_counter()
    opts = dict(cfg.attack.options)
    unknown = set(opts) - {"budget", "prior"}
    if unknown:
        raise UserError(f"attack.options: got {sorted(unknown)}; allowed: budget, prior (attack: auto chooses "
                        "the attacks and their settings)")
    budget = budget if isinstance(budget, AuditBudget) else parse_budget(budget or opts.get("budget", "10m"),
                                                                         "attack.options.budget")
    prior = prior or opts.get("prior")
    device = str(resolve_device(cfg.device))
    torch.manual_seed(cfg.seed)
    check_tagger(cfg)
    _warm_up()
    case = build_case(cfg)
    check_prior(prior, tuple(case.images.shape[1:]))
    case.give_labels = cfg.attack.labels == "oracle"
    t1 = time.perf_counter()
    obs = capture(case, seed=cfg.seed)
    check_attackable(obs)
    model = obs.build_model()
    labels, mode = _labels_for(obs, model)
    situation = situation_of(obs, model, labels, prior)
    plans = choose(situation)
    if not plans:
        raise UserError("observation: no attack applies to it; allowed: an observation some attack models")
    t2 = time.perf_counter()
    share = _shares(budget, t0)
    main, mode = _attack_side(obs, plans, case.images, case.labels, cfg, share, budget.iterations, progress, device)
    t3 = time.perf_counter()
    control = run_control(main, case.model, case.images, case.labels, case.protocol, bool(case.defenses),
                          case.give_labels, case.model_spec, plans, cfg, budget, share, t0, progress, device,
                          "the same model, θ_0 and protocol without the defense chain, batch of {n}, on the case's "
                          "own private images", seed=cfg.seed)
    t4 = time.perf_counter()
    return _assemble(cfg, case, main, mode, control, budget, t0,
                     Timing(prepare=t1 - t0, capture=t2 - t1, attack=t3 - t2, score=t4 - t3), device,
                     situation.view.unmodelled, [f"portfolio: {', '.join(p.attack.name for p in plans)}"])


def is_auto(cfg: RunConfig) -> bool:
    return cfg.attack.name == "auto"


def run_config(cfg: RunConfig, progress: bool = False) -> AuditResult:
    """Any config: ``attack: auto`` → :func:`audit_auto`, else :func:`gradleak.audit.audit`."""
    from gradleak.audit import audit

    return audit_auto(cfg, progress=progress) if is_auto(cfg) else audit(cfg, progress=progress)


def audit_observation(observation, budget: AuditBudget | str, truth=None, public: str | None = None,
                      prior: str | None = None, seed: int = 0, progress: bool = False,
                      device: str = "cpu") -> AuditResult:
    """``gradleak audit OBS_DIR``: a captured observation with the portfolio, under ``budget``. ``truth`` (the
    client's images) scores it; the positive control is built from the observation's own model, θ_0 and
    protocol on the true images (or, without them, the ``public`` ones), with the observation's labels, the
    truth's, the public data's, or else the model's own predictions. Every input is checked before any work."""
    from gradleak.deploy import load_images, load_observation, load_public_data

    t0 = time.perf_counter()
    budget = budget if isinstance(budget, AuditBudget) else parse_budget(budget)
    obs = load_observation(observation)
    check_attackable(obs)
    check_prior(prior, obs.image_shape)
    if truth is None:
        raise UserError("--truth: got nothing; allowed: the client's true images (a directory or tensor file) — "
                        "the audit scores the reconstructions and builds its positive control from them")
    x, y_true = load_images(truth, obs.image_shape, "--truth")
    pub = load_public_data(public, obs.image_shape) if public is not None else None
    return audit_loaded(obs, x, y_true, budget, pub, prior, seed, progress, device, source=str(observation),
                        truth_text=str(truth), started=t0)


def audit_loaded(obs: Observation, x: Tensor, y_true: Tensor | None, budget: AuditBudget | str, pub=None,
                 prior: str | None = None, seed: int = 0, progress: bool = False, device: str = "cpu",
                 source: str = "an observation in memory", truth_text: str = "given",
                 started: float | None = None) -> AuditResult:
    """The audit of an Observation already in memory with its client's true images ``x`` (labels ``y_true``
    or None): what ``gradleak audit OBS_DIR``, ``gradleak audit-run`` and the Flower guard
    (:func:`gradleak.leakage.measure_leakage` with ``attack="auto"``) run. ``pub``: (images, labels, text) of
    public data for the references, or None (grey only)."""
    from gradleak.deploy import NO_PUBLIC, _run_config

    t0 = time.perf_counter() if started is None else started
    budget = budget if isinstance(budget, AuditBudget) else parse_budget(budget)
    check_attackable(obs)
    check_prior(prior, obs.image_shape)
    if x.shape[0] != obs.num_images:
        raise UserError(f"--truth: got {x.shape[0]} images; allowed: the client's {obs.num_images}")
    dev = str(resolve_device(device, "--device"))
    _warm_up()
    model = obs.build_model()
    if obs.labels is not None:
        y_true = obs.labels
    if y_true is None:
        with torch.no_grad():
            y_true = model.eval()(x).argmax(-1)
        how_labels = "the model's own predictions (no labels given)"
    else:
        how_labels = "the given labels"
    labels, mode = _labels_for(obs, model)
    situation = situation_of(obs, model, labels, prior)
    plans = choose(situation)
    if not plans:
        raise UserError("observation: no attack applies to it; allowed: an observation some attack models")
    cfg = _run_config(obs, "auto", {"budget": budget.text}, mode, seed, truth_text, dev)
    C, H, W = obs.image_shape
    data = (f"captured observation {source}; true images {truth_text}, {H}×{W}, {C} channel(s), batch of "
            f"{obs.num_images}; public data: {pub[2] if pub else 'none given'}")
    public_refs = (*pub[:2], None) if pub else (None, None, NO_PUBLIC)
    t1 = time.perf_counter()
    share = _shares(budget, t0)
    main, mode = _attack_side(obs, plans, x, y_true, cfg, share, budget.iterations, progress, dev, public_refs, data)
    t2 = time.perf_counter()
    control = run_control(main, model, x, y_true, obs.protocol, bool(obs.defenses), obs.labels is not None,
                          obs.model_spec, plans, cfg, budget, share, t0, progress, dev,
                          "the observation's model, θ_0 and protocol without the defense chain, batch of {n}, on "
                          f"the true images with {how_labels}", seed=seed, public=public_refs, data=data)
    case = Case(model=model, images=x, labels=y_true, protocol=obs.protocol, model_spec=obs.model_spec,
                give_labels=obs.labels is not None)
    return _assemble(cfg, case, main, mode, control, budget, t0,
                     Timing(prepare=t1 - t0, capture=0.0, attack=t2 - t1, score=time.perf_counter() - t2), dev,
                     situation.view.unmodelled,
                     [f"audited a saved observation: {source}",
                      f"portfolio: {', '.join(p.attack.name for p in plans)}"],
                     [] if pub else ["references: the grey image only (no --public data): a generative prior's "
                                     "generic output can beat grey alone; pass --public for the public-mean and "
                                     "same-class references"])
