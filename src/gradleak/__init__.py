"""gradleak: audit how much private data leaks from federated-learning client updates.

The pipeline in five names — build a :class:`Case`, :func:`capture` the server's :class:`Observation`,
run an attack on it, :func:`score_images`, draw with :func:`reconstruction_grid`::

    import gradleak as gl
    x, y = gl.sample_batch(gl.load_dataset("photos"), 4, seed=0)
    obs = gl.capture(gl.Case(my_model, x, y, gl.Protocol(kind="fedavg", local_steps=5, lr=0.01), give_labels=True))
    rec = gl.InvertGrad(iterations=500)(obs, labels=obs.labels, model=my_model)
    print(gl.score_images(rec.images, x)["psnr"])
"""
# Lazy exports (PEP 562): ``import gradleak`` and ``gradleak --help`` do not import torch; each name is
# imported from its module on first access.
_EXPORTS = {
    "Objective": "gradleak.attacks.engine", "Reconstruction": "gradleak.attacks.base",
    "Stage": "gradleak.attacks.engine", "search": "gradleak.attacks.engine",
    "label_accuracy": "gradleak.attacks.labels", "recover_labels": "gradleak.attacks.labels",
    "ATTACKS": "gradleak.attacks", "Attack": "gradleak.attacks", "build_attack": "gradleak.attacks",
    "DLG": "gradleak.attacks.presets", "IDLG": "gradleak.attacks.presets", "InvertGrad": "gradleak.attacks.presets",
    "AuditResult": "gradleak.audit", "audit": "gradleak.audit", "audit_observed": "gradleak.audit",
    "write_run": "gradleak.report.writer",
    "Case": "gradleak.case", "capture": "gradleak.case",
    "RunConfig": "gradleak.config", "load_config": "gradleak.config",
    "load_dataset": "gradleak.data", "sample_batch": "gradleak.data",
    "build_defenses": "gradleak.defenses",
    "UserError": "gradleak.errors",
    "Observation": "gradleak.fl.observation",
    "Protocol": "gradleak.fl.protocol",
    "apply_match": "gradleak.metrics", "lpips_status": "gradleak.metrics", "score_images": "gradleak.metrics",
    "build_model": "gradleak.models", "init_model": "gradleak.models", "pretrain": "gradleak.models",
    "loss_plot": "gradleak.report", "reconstruction_grid": "gradleak.report",
}


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'gradleak' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


__version__ = "0.1.0"

__all__ = [
    "ATTACKS", "Attack", "AuditResult", "Case", "DLG", "IDLG", "InvertGrad", "Objective", "Observation", "Protocol",
    "Reconstruction", "RunConfig", "Stage", "UserError", "apply_match", "build_attack", "build_defenses",
    "build_model", "capture", "init_model", "label_accuracy", "load_config", "load_dataset", "loss_plot",
    "lpips_status", "pretrain", "reconstruction_grid", "recover_labels", "sample_batch", "score_images", "search", "audit", "audit_observed",
    "write_run",
]
