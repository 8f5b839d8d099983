"""A run's calibration: the references and verdict of :mod:`gradleak.metrics.reference` for the run's own
data (the public side of its dataset), and the header a reader sees first (model, data, protocol, defense
chain, threat model). Used by :func:`gradleak.audit.audit` and, with the public data the user names (or
none), by ``gradleak attack`` (:func:`gradleak.deploy.attack_saved`); the result is :class:`Calibration`."""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from gradleak.metrics.reference import calibrate


@dataclass
class Calibration:
    """References (``reference``), per-image margins over the best one (``margins``), the graded
    ``verdict`` and the report ``header`` — each JSON-ready (see :mod:`gradleak.metrics.reference`)."""

    reference: dict
    margins: dict
    verdict: dict
    header: dict

#: the public side of each private split name (as :func:`gradleak.run.build_case` pretrains on)
PUBLIC_OF = {"private": "public", "test": "train"}
#: at most this many public images are read for the mean image and the same-class draws
PUBLIC_LIMIT = 4096


def load_public(data_cfg) -> tuple[Tensor | None, Tensor | None, str | None]:
    """``(images, labels, None)`` of the public side of the run's dataset, or ``(None, None, reason)``."""
    from gradleak.data import load_dataset
    from gradleak.errors import UserError

    split = PUBLIC_OF.get(data_cfg.split, data_cfg.split)
    if split == data_cfg.split:
        return None, None, f"data.split {data_cfg.split!r} has no separate public side (the references would see " \
                           "the private images)"
    from gradleak.loadonce import once

    d = data_cfg
    try:  # read once per process (a sweep's runs, a calibration per attack): callers treat it as read-only
        pub = once("public", [d.root] if d.root else [], (d.name, split, d.resolution, d.channels, d.root),
                   lambda: load_dataset(d.name, split=split, resolution=d.resolution, channels=d.channels,
                                        root=d.root, limit=PUBLIC_LIMIT))
    except (UserError, OSError, ValueError) as err:
        return None, None, f"public split unavailable: {err}"
    return pub.images, pub.labels, None


def _tagger(cfg, originals: Tensor, sem: dict):
    """The run's tagger again (for the references' Jaccard), when the run has tags."""
    if sem.get("jaccard") is None:
        return None
    from gradleak.metrics.semantic import load_tagger

    m = cfg.metrics
    return load_tagger(m.tagger, threshold=m.tagger_threshold, top_k=m.tagger_top_k,
                       shape=tuple(originals.shape[1:]), dataset=cfg.data.name)


def calibrate_run(cfg, psnr: list[float], ssim: list[float], sem: dict, originals: Tensor,
                  true_labels: Tensor | None, public: tuple | None = None) -> dict:
    """``{"reference", "margins", "verdict"}`` for a run: the attack's matched per-image scores against the
    grey image, the public mean image and a random same-class public image (seeded by ``cfg.seed``).

    ``public``: ``(images, labels, reason)`` as :func:`load_public` returns it (default: the public side of
    ``cfg.data``); where ``reason`` is set it is why the public references are missing."""
    pub_x, pub_y, why = public if public is not None else load_public(cfg.data)
    tagger = _tagger(cfg, originals, sem)
    jac = (sem.get("jaccard") or {}).get("per_image") if tagger is not None else None
    attack = {"psnr": psnr, "ssim": ssim, "jaccard": jac}
    out = calibrate(attack, originals, pub_x, pub_y, true_labels, seed=cfg.seed,
                    tagger=tagger if jac is not None else None)
    if why:
        out["reference"]["unavailable"] = {k: why for k in out["reference"]["unavailable"]}
    return out


def calibration_of(cfg, scores, obs, originals: Tensor, true_labels: Tensor | None, label_mode: str,
                   public: tuple | None = None, data: str | None = None) -> Calibration:
    """:class:`Calibration` of an audit (``scores``: :class:`gradleak.audit.Scores`); ``public`` as in
    :func:`calibrate_run`, ``data`` the header's data line (default: from ``cfg.data``)."""
    cal = calibrate_run(cfg, scores.psnr["per_image"], scores.ssim["per_image"], scores.semantic, originals,
                        true_labels, public)
    return Calibration(reference=cal["reference"], margins=cal["margins"], verdict=cal["verdict"],
                       header=run_header(cfg, obs, label_mode, data))


def _options(opts: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in opts.items()) if opts else "defaults"


def protocol_text(p, num_images: int) -> str:
    """The whole client protocol as captured, in one line: kind, local steps, lr, mini-batch, the optimizer with
    every setting that differs from plain SGD (momentum, Nesterov, dampening, weight decay, Adam's betas), the
    loss and its options, input normalization, batch order, BatchNorm mode and the upload's convention."""
    from gradleak.fl.protocol import Protocol

    base = Protocol()
    parts = [p.rule.describe(p, num_images)]  # the protocol's own line (kind, τ, lr, mini-batch, its settings)
    opt = p.optimizer
    for key, label in (("momentum", "momentum"), ("nesterov", "Nesterov"), ("dampening", "dampening"),
                       ("weight_decay", "weight decay")):
        if getattr(p, key) != getattr(base, key):
            opt += f", {label} {getattr(p, key)}"
    if p.optimizer != "sgd":
        opt += f", betas {tuple(p.betas)}, eps {p.eps}"
    parts.append(opt)
    batching = ", ".join(x for x in (f"{p.epochs} epochs" if p.epochs else "",
                                     f"order {p.order}" if p.order != base.order else "",
                                     "drop last" if p.drop_last else "") if x)
    if batching:
        parts.append(batching)
    loss = p.loss + (f", label smoothing {p.label_smoothing}" if p.label_smoothing else "")
    loss += f", class weights {list(p.class_weights)}" if p.class_weights else ""
    parts.append(f"loss {loss}")
    parts.append("input normalization " + (f"mean {list(p.mean)}, std {list(p.std)}" if p.mean is not None
                                           or p.std is not None else "none"))
    parts.append(f"BatchNorm {p.bn_mode} mode" + (", batch statistics shared" if p.share_bn_stats else ""))
    parts.append(f"upload {p.update.replace('_', ' ')}")
    return "; ".join(parts)


def run_header(cfg, obs, label_mode: str, data: str | None = None) -> dict:
    """What was audited and what the attacker knew, in plain words (the report's first table); ``data``
    replaces the data line built from ``cfg.data`` (a captured observation names no dataset)."""
    d = cfg.data
    proto = protocol_text(obs.protocol, obs.num_images)
    chain = "; ".join(str(x.get("name")) for x in obs.defenses) or "none"
    knows = [x.get("name") for x in obs.defenses if x.get("attacker_knows", True) is not False]
    hidden = [x.get("name") for x in obs.defenses if x.get("attacker_knows", True) is False]
    labels = {"oracle": "given (oracle)", "recover": "recovered from the update", "learn": "learned jointly"}
    threat = (f"honest-but-curious server: knows the architecture, the weights θ_0 it sent and the protocol; "
              f"labels {labels.get(label_mode, label_mode)}; "
              f"batch BN statistics {'shared' if obs.bn_stats is not None else 'not shared'}; "
              f"defense parameters {'known: ' + ', '.join(knows) if knows else 'none to know'}"
              + (f", unknown: {', '.join(hidden)}" if hidden else ""))
    return {"model": f"{cfg.model.name} ({_options(cfg.model.options)})",
            "data": data or f"{d.name}, split {d.split}, {d.resolution}×{d.resolution}, {d.channels} channel(s), "
                            f"batch of {obs.num_images}",
            "protocol": proto, "defense chain": chain, "threat model": threat,
            "attack": f"{cfg.attack.name} ({_options(cfg.attack.options)})"
                      + (" — random-gradient control run" if cfg.attack.options.get("control") else "")}
