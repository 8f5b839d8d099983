"""What gias_leaveout.py and debian_leaveout.py share: one cell of their tables (:func:`gias_cell`)."""
from __future__ import annotations


def gias_cell(x, y, victim: tuple[str, dict], num_classes: int, attack: str, options: dict, iterations: int,
              seed: int, public):
    """One cell of the GIAS leave-out tables (gias_leaveout.py, debian_leaveout.py): the victim ``(arch,
    options)`` at ``seed``'s initialisation, one FedSGD step on ``x, y`` (BN in train mode, its batch
    statistics shared when the victim has BN), attacked with oracle labels by ``attack`` with the cosine
    distance, ``options`` and ``iterations`` (split in half between z and w for GI-z/w; GI-x best of 4
    restarts). Returns ``(reconstruction, scores, references, best reference PSNR per image)``: the
    no-information references are grey 0.5 and the mean image of the dataset ``public()`` returns (the prior's
    training side) — the audit pipeline (``_common.audited``) scores the reconstruction against them. Returns
    ``(reconstruction, scores {"psnr", "ssim"}, references, best reference PSNR per image, matched images)``."""
    import gradleak as gl
    from _common import audited

    from gradleak.attacks import build_attack
    from gradleak.models import build_model, init_model

    arch, opts = victim
    model = init_model(build_model(arch, num_classes, 3, x.shape[-1], **opts), seed)
    protocol = gl.Protocol(kind="fedsgd", bn_mode="train", share_bn_stats=opts.get("batchnorm", False))
    case = gl.Case(model, x, y, protocol, [], model.gradleak_spec, give_labels=True)
    obs = gl.capture(case, seed=seed)
    o = {"distance": "cosine", **options}
    if attack == "gi-zw":
        o |= {"iterations_z": iterations // 2, "iterations_w": iterations - iterations // 2}
    else:
        o["iterations"] = iterations
    if attack == "gi-x":
        o["restarts"] = 4
    r = audited(obs, build_attack(attack, **o), x, y, seed=seed, model=model, public=(public().images, None, None))
    refs = r.calibration.reference
    best_ref = [max(refs[n]["psnr"][i] for n in ("grey", "public_mean")) for i in range(len(x))]
    return r.reconstruction, {"psnr": r.scores.psnr, "ssim": r.scores.ssim}, refs, best_ref, r.matched
