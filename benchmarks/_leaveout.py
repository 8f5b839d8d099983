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
    training side, loaded only after the attack)."""
    import gradleak as gl
    from gradleak.attacks import build_attack
    from gradleak.metrics import score_images
    from gradleak.metrics.reference import reference_scores
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
    rec = build_attack(attack, **o)(obs, labels=obs.labels, seed=seed, model=model, progress=False)
    scores = score_images(rec.images, x)
    refs = reference_scores(x, public().images)  # grey and the prior's training-corpus mean image
    best_ref = [max(refs[n]["psnr"][i] for n in ("grey", "public_mean")) for i in range(len(x))]
    return rec, scores, refs, best_ref
