"""Where an attack computes: ``device: cpu | cuda | cuda:N | mps | auto`` (config key and ``--device``).

The other execution settings: ``threads`` (``--threads``, :func:`gradleak.cli_support.set_threads`) and
``backend`` (config key and ``--backend``, :mod:`gradleak.backends.setting`), which :func:`run_attack` applies.

The audit builds the case and captures the upload on the CPU (so the observation is the same whatever the
attacker's hardware), then moves the victim and the observation to the device and runs the attack with
that device as torch's default (``with torch.device(...)``): the same code on every device, no copies.
Random starts come from :func:`generator`, a generator on the default device, so a seed gives the same
numbers on the same device and thread count (CPU and CUDA random streams differ).
"""
from __future__ import annotations

import torch

from gradleak.errors import bad_value

ALLOWED = "cpu, cuda, cuda:N, mps, auto"


def lookup(name: object) -> tuple[torch.device | None, str]:
    """``(device, "")`` for an available device name (``auto`` = cuda, else mps, else cpu), else ``(None, what
    is allowed)``: the one place a device name is read (the config's ``device`` validator and :func:`resolve`)."""
    if not isinstance(name, str):
        return None, ALLOWED
    name = name.strip().lower()
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if mps else "cpu"), ""
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        return None, ALLOWED
    if dev.type == "cpu":
        return dev, ""
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            return None, f"{ALLOWED} (this torch build sees no CUDA device: use cpu or auto)"
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            return None, f"cuda:0 … cuda:{torch.cuda.device_count() - 1}"
        return dev, ""
    if dev.type == "mps":
        return (dev, "") if mps else (None, f"{ALLOWED} (MPS is not available here: use cpu or auto)")
    return None, ALLOWED


def resolve(name: str = "cpu", key: str = "device") -> torch.device:
    """The torch device for ``name`` (:func:`lookup`); an unavailable one is refused in one line naming ``key``."""
    dev, allowed = lookup(name)
    if dev is None:
        raise bad_value(key, name, allowed)
    return dev


def generator(seed: int) -> torch.Generator:
    """A seeded generator on torch's current default device (CPU unless an attack runs on a device)."""
    return torch.Generator(device=torch.get_default_device()).manual_seed(seed)


def run_attack(attack, obs, labels, seed: int, model, progress: bool = False, device: torch.device | str = "cpu",
               backend: str | None = None):
    """``attack(obs, labels=..., ...)`` computed on ``device`` (the default device inside) with the step
    backend setting ``backend`` (:mod:`gradleak.backends.setting`; None: the one in force), the victim moved
    there and back; the reconstruction comes back on the CPU."""
    from gradleak.backends.setting import using

    device = torch.device(device)
    with torch.device(device), using(backend):
        rec = attack(obs.to(device), labels=None if labels is None else labels.to(device), seed=seed,
                     model=model.to(device), progress=progress).cpu()
    model.to("cpu")
    return rec
