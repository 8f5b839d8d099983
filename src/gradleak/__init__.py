"""gradleak: audit how much private data leaks from federated-learning client updates.

The pipeline in five names — build a :class:`Case`, :func:`capture` the server's :class:`Observation`,
run an attack on it, :func:`score_images`, draw with :func:`reconstruction_grid`::

    import gradleak as gl
    x, y = gl.sample_batch(gl.load_dataset("photos"), 4, seed=0)
    obs = gl.capture(gl.Case(my_model, x, y, gl.Protocol(kind="fedavg", local_steps=5, lr=0.01), give_labels=True))
    rec = gl.InvertGrad(iterations=500)(obs, labels=obs.labels, model=my_model)
    print(gl.score_images(rec.images, x)["psnr"])
"""
from gradleak.attacks.base import Reconstruction
from gradleak.attacks.engine import Objective, Stage, search
from gradleak.attacks.labels import label_accuracy, recover_labels
from gradleak.attacks import ATTACKS, Attack, build_attack
from gradleak.attacks.presets import DLG, IDLG, InvertGrad
from gradleak.audit import AuditResult, audit, write_run
from gradleak.case import Case, capture
from gradleak.config import RunConfig, load_config
from gradleak.data import load_dataset, sample_batch
from gradleak.defenses import build_defenses
from gradleak.errors import UserError
from gradleak.fl.observation import Observation
from gradleak.fl.protocol import Protocol
from gradleak.metrics import apply_match, lpips_status, score_images
from gradleak.models import build_model, init_model, pretrain
from gradleak.report import loss_plot, reconstruction_grid

__version__ = "0.1.0"

__all__ = [
    "ATTACKS", "Attack", "AuditResult", "Case", "DLG", "IDLG", "InvertGrad", "Objective", "Observation", "Protocol",
    "Reconstruction", "RunConfig", "Stage", "UserError", "apply_match", "build_attack", "build_defenses",
    "build_model", "capture", "init_model", "label_accuracy", "load_config", "load_dataset", "loss_plot",
    "lpips_status", "pretrain", "reconstruction_grid", "recover_labels", "sample_batch", "score_images", "search", "audit", "write_run",
]
