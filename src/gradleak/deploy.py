"""Audit a real deployment: turn what a server captured into an Observation, check that the stated client
protocol reproduces it, and attack it (``gradleak capture`` / ``verify`` / ``attack``).

* :func:`capture_observation` — weights before and after a real local round (state dicts), or the upload
  itself, plus ``PROTOCOL.yaml`` (the client's settings as the server knows them) → ``OBS_DIR/observation.*``.
* :func:`verify_observation` — re-run the protocol from the true batch (the user's own images) and report
  the relative distance to the captured upload per layer, with a verdict naming the worst layer.
* :func:`attack_observation` — any registered attack on a saved Observation; scored when the truth is given,
  beside the grey image and, with public data (:func:`load_public_data`), the public references.

Weights are read from safetensors or ``torch.load(weights_only=True)`` files, so loading never executes
code from a file. Model factories are registered names or ``package.module:factory`` paths with the
signature ``factory(num_classes, in_channels, resolution, **options) -> nn.Module``; the current directory
is importable. Every bad input is one line (``UserError``) and nothing is written before all inputs load.
"""
from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from gradleak.config import ClientConfig
from gradleak.errors import UserError
from gradleak.fl.observation import Observation
from gradleak.fl.protocol import Protocol

#: relative distance below which ``verify`` says the protocol reproduces the update (float32 rounding
#: through a few dozen local steps stays around 1e-6; a wrong setting gives 1e-3 … 1)
VERIFY_TOLERANCE = 1e-4


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSection(_Strict):
    name: str | None = None  # registered name or 'package.module:factory' (--model overrides)
    num_classes: int = Field(..., ge=1)
    channels: int = Field(..., ge=1)
    resolution: int = Field(..., ge=1)
    options: dict[str, Any] = Field(default_factory=dict)


class ProtocolFile(_Strict):
    """``PROTOCOL.yaml``: what the server knows about the client (see docs/deployment.md)."""

    model: ModelSection
    num_images: int = Field(..., ge=1)  # the client's local dataset size for this round
    client: ClientConfig = Field(default_factory=ClientConfig)
    labels: list[int] | None = None  # side information: the client's labels, when the server has them


def ensure_cwd_importable() -> None:
    """Make ``package.module:factory`` paths in the current directory importable (as ``python -m`` does)."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def read_protocol_file(path: str | Path) -> ProtocolFile:
    from gradleak.validate import validate_model

    p = Path(path)
    if not p.is_file():
        raise UserError(f"--protocol: file not found: {str(p)!r}")
    from gradleak.safefile import read_text

    text = read_text(p, "--protocol")  # size-bounded UTF-8 (one line otherwise)
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise UserError(f"--protocol: {p} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise UserError(f"--protocol: {p} must hold a mapping (model, num_images, client, labels)")
    spec = validate_model(ProtocolFile, raw, f"--protocol {p}: ", lambda key, loc: f"--protocol {p}: key {key!r}: "
                          "unknown key; see docs/deployment.md for the keys")
    spec.client.to_protocol()  # protocol-level checks (one line naming client.<key>)
    from gradleak.limits import check_batch

    check_batch(spec.num_images, (spec.model.channels, spec.model.resolution, spec.model.resolution),
                f"--protocol {p}")  # a declared batch of 10^9 images: refused before anything is allocated
    return spec


def build_victim(name: str | None, spec: ModelSection) -> nn.Module:
    """The architecture from its factory; the factory's output size is checked against ``num_classes``."""
    from gradleak.models import build_model

    name = name or spec.name
    if not name:
        raise UserError("--model: missing; allowed: a registered model name or 'package.module:factory' "
                        "(or model.name in PROTOCOL.yaml)")
    ensure_cwd_importable()
    from gradleak.limits import IMAGE_PIXELS, check_model_size

    IMAGE_PIXELS.check(spec.resolution ** 2, "--protocol model.resolution", " pixels")
    check_model_size(lambda: build_model(name, spec.num_classes, spec.channels, spec.resolution, **spec.options),
                     f"model {name!r}")  # num_classes: 10^9 is refused before the weights are allocated
    try:
        model = build_model(name, spec.num_classes, spec.channels, spec.resolution, **spec.options)
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 - the user's factory raised
        raise UserError(f"model: factory {name!r} raised {_first_line(err)}") from None
    try:
        with torch.no_grad():
            out = model.eval()(torch.zeros(2, spec.channels, spec.resolution, spec.resolution))
    except Exception as err:  # noqa: BLE001
        raise UserError(f"model: {name!r} fails on a ({spec.channels}, {spec.resolution}, {spec.resolution}) "
                        f"input: {_first_line(err)}") from None
    if not isinstance(out, Tensor) or out.shape != (2, spec.num_classes):
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise UserError(f"model: {name!r} outputs {got} for a batch of 2; num_classes is {spec.num_classes}, "
                        f"allowed: logits of shape (batch, {spec.num_classes})")
    return model


def load_state_file(path: str | Path, key: str) -> dict[str, Tensor]:
    """A state dict from ``.safetensors`` or a ``torch.save`` file (read with ``weights_only=True``; a
    ``{"state_dict": ...}`` / ``{"model": ...}`` wrapper and DataParallel's ``module.`` prefix are accepted)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{key}: file not found: {str(p)!r}")
    try:
        if p.suffix == ".safetensors":
            from gradleak.safefile import read_safetensors

            state: Any = read_safetensors(p, key)[0]  # validated header, bounded sizes (gradleak.limits)
        else:
            state = torch.load(str(p), map_location="cpu", weights_only=True)
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 - corrupt or pickled-code files are one line
        raise UserError(f"{key}: cannot read {str(p)!r} as safetensors or a weights-only torch file "
                        f"({_first_line(err)})") from None
    if isinstance(state, dict) and not all(isinstance(v, Tensor) for v in state.values()):
        for wrapper in ("state_dict", "model_state_dict", "model"):
            if isinstance(state.get(wrapper), dict):
                state = state[wrapper]
                break
    if not isinstance(state, dict) or not state or not all(isinstance(k, str) and isinstance(v, Tensor)
                                                          for k, v in state.items()):
        raise UserError(f"{key}: {str(p)!r} holds {type(state).__name__}; allowed: a state dict (name -> tensor)")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def check_state(model: nn.Module, state: dict[str, Tensor], path: str | Path, key: str,
                params_only: bool = False) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Split ``state`` into (parameters, buffers) of ``model``; the first key (in the model's order) that
    is missing or has another shape is named with both shapes; a key the model lacks is named too."""
    params = dict(model.named_parameters())
    bufs = dict(model.named_buffers())
    for name, ref in {**params, **bufs}.items():
        if name not in state:
            if name in params:
                raise UserError(f"{key}: {str(path)!r} lacks the model's tensor {name!r} (shape {tuple(ref.shape)})")
            continue
        if tuple(state[name].shape) != tuple(ref.shape):
            raise UserError(f"{key}: {str(path)!r}: tensor {name!r} has shape {tuple(state[name].shape)}, "
                            f"the model's has shape {tuple(ref.shape)}")
    for name, t in state.items():
        if name not in params and name not in bufs:
            raise UserError(f"{key}: {str(path)!r} holds {name!r}, which the model lacks "
                            f"(the model's first tensors: {', '.join(list(params)[:3])})")
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise UserError(f"{key}: {str(path)!r}: tensor {name!r} contains NaN or inf")
    p = {n: state[n].detach().to(params[n].dtype).clone() for n in params}
    b = {} if params_only else {n: state[n].detach().to(bufs[n].dtype).clone() for n in bufs if n in state}
    return p, b


def parse_labels(text: str | None, num_images: int, num_classes: int, key: str = "--labels") -> Tensor | None:
    """``"3,1,4"`` or a file holding integers separated by commas / whitespace."""
    if text is None:
        return None
    src = Path(text).read_text() if Path(text).is_file() else text
    try:
        vals = [int(v) for v in src.replace(",", " ").split()]
    except ValueError:
        raise UserError(f"{key}: got {text!r}; allowed: integers separated by commas, or a file of them") from None
    if len(vals) != num_images or any(not 0 <= v < num_classes for v in vals):
        raise UserError(f"{key}: got {len(vals)} labels {vals[:8]}; allowed: {num_images} integers in "
                        f"0..{num_classes - 1}")
    return torch.tensor(vals, dtype=torch.long)


def capture_observation(out: str | Path, protocol_file: str | Path, model: str | None = None,
                        weights: str | Path | None = None, after: str | Path | None = None,
                        update: str | Path | None = None, labels: str | None = None,
                        bn_stats: str | Path | None = None) -> Path:
    """Build and save ``out/observation.safetensors`` + ``.json`` (see the module docstring).

    ``after``: the client's weights after its local round → the upload Δ = θ_0 − θ_τ (stored with
    ``update: old_minus_new``); ``update``: the upload itself, in the convention ``client.update`` of the
    protocol file states. θ_0 comes from ``weights`` (else the factory's own weights)."""
    spec = read_protocol_file(protocol_file)
    if (after is None) == (update is None):
        raise UserError("capture: got " + ("both --after and --update" if after else "neither --after nor --update")
                        + "; allowed: exactly one (weights after the local round, or the upload)")
    proto = spec.client.to_protocol().server_view()
    if after is not None and proto.rule.uploads_gradient:
        raise UserError(f"--after: weights after a local round need a protocol with local steps (fedavg, ...); "
                        f"got {spec.client.protocol!r} (a FedSGD client uploads the gradient: use --update)")
    if proto.rule.state or proto.rule.uploads:
        raise UserError(f"client.protocol: got {proto.kind!r}; allowed: a protocol without server-known state or "
                        f"extra uploads ({proto.kind} needs {', '.join(proto.rule.state + proto.rule.uploads)}, "
                        "which capture cannot read yet: build the Observation in Python, docs/protocols.md)")
    victim = build_victim(model, spec.model)
    params, buffers = check_state(victim, dict(victim.state_dict()), "model", "model")
    if weights is not None:
        params, buffers = check_state(victim, load_state_file(weights, "--weights"), weights, "--weights")
        buffers = {**{n: b.detach().clone() for n, b in victim.named_buffers()}, **buffers}
    extra: dict = {"captured": {"protocol_file": str(protocol_file), "weights": str(weights) if weights else None}}
    if after is not None:
        new, _ = check_state(victim, load_state_file(after, "--after"), after, "--after")
        upd = {n: params[n] - new[n] for n in params}
        if proto.update != "old_minus_new":
            extra["captured"]["stated_update"] = proto.update
        proto = Protocol.from_dict({**proto.to_dict(), "update": "old_minus_new"})
        extra["captured"]["after"] = str(after)
    else:
        upd, _ = check_state(victim, load_state_file(update, "--update"), update, "--update", params_only=True)
        extra["captured"]["update"] = str(update)
    y = parse_labels(labels, spec.num_images, spec.model.num_classes) if labels is not None else (
        parse_labels(",".join(map(str, spec.labels)), spec.num_images, spec.model.num_classes, "labels")
        if spec.labels is not None else None)
    bn = None
    if bn_stats is not None:
        bn = load_state_file(bn_stats, "--bn-stats")
        layers = {n for n, m in victim.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
        for k, t in bn.items():
            layer, _, stat = k.rpartition(".")
            if layer not in layers or stat not in ("mean", "var"):
                raise UserError(f"--bn-stats: key {k!r}; allowed: <bn layer>.mean / <bn layer>.var for the "
                                f"layers {', '.join(sorted(layers)) or '(none)'}")
        proto = Protocol.from_dict({**proto.to_dict(), "share_bn_stats": True})
    name = model or spec.model.name
    m = spec.model
    obs = Observation(
        model_spec={"name": name, "num_classes": m.num_classes, "in_channels": m.channels,
                    "resolution": m.resolution, "options": dict(m.options)},
        parameters=params, buffers=buffers, update=upd, protocol=proto, num_images=spec.num_images,
        image_shape=(m.channels, m.resolution, m.resolution), labels=y, bn_stats=bn, extra=extra)
    obs.save(Path(out) / "observation")
    return Path(out)


def load_observation(path: str | Path) -> Observation:
    """``Observation.load`` with the current directory importable (for ``package.module:factory`` models)."""
    ensure_cwd_importable()
    p = Path(path)
    if p.is_dir() and not (p / "observation.json").is_file():
        raise UserError(f"observation: {str(p)!r} holds no observation.json / observation.safetensors "
                        f"(write one with gradleak capture)")
    return Observation.load(p)


def load_images(path: str | Path, shape: tuple[int, int, int], key: str = "--images") -> tuple[Tensor, Tensor | None]:
    """The client's images in its local dataset order: a directory of image files (sorted by name, read
    as 8-bit and divided by 255 as ``ToTensor`` does; no resizing — sizes must match), or a tensor file
    (``.safetensors`` / weights-only ``.pt``) with ``images`` (B, C, H, W) in [0, 1] and optional ``labels``."""
    from gradleak.data.folder import is_image

    p = Path(path)
    C, H, W = shape
    labels = None
    if p.is_file():
        state = load_state_file(p, key)
        if "images" not in state:
            raise UserError(f"{key}: {str(p)!r} has no tensor 'images'; allowed: keys images (B,C,H,W), labels (B,)")
        x, labels = state["images"].float(), state.get("labels")
        labels = labels.long() if labels is not None else None
    elif p.is_dir():
        files = sorted(f for f in p.iterdir() if is_image(f))
        if not files:
            raise UserError(f"{key}: {str(p)!r} holds no image files; allowed: a directory of images or a tensor file")
        import numpy as np
        from PIL import Image

        from gradleak.safefile import open_image

        imgs = []
        for f in files:
            try:
                with open_image(f, key) as img:  # size checked before decoding (gradleak.limits.IMAGE_PIXELS)
                    img = img.convert("L" if C == 1 else "RGB")
                    arr = np.array(img, dtype=np.uint8)
            except UserError:
                raise
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
                raise UserError(f"{key}: cannot read image {str(f)!r} ({_first_line(err)})") from None
            if arr.shape[:2] != (H, W):
                raise UserError(f"{key}: {str(f)!r} is {arr.shape[1]}x{arr.shape[0]}; allowed: {W}x{H} "
                                f"(the client's input size; gradleak does not resize the true images)")
            t = torch.from_numpy(arr).to(torch.float32).div(255.0)
            imgs.append(t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1))
        x = torch.stack(imgs)
    else:
        raise UserError(f"{key}: not found: {str(p)!r}; allowed: a directory of images or a tensor file")
    if x.ndim != 4 or tuple(x.shape[1:]) != (C, H, W):
        raise UserError(f"{key}: images of shape {tuple(x.shape)}; allowed: (B, {C}, {H}, {W})")
    return x, labels


#: what ``gradleak attack --public`` accepts
PUBLIC_ALLOWED = ("a folder of images (class subfolders or labels.csv/labels.txt give labels), a tensor file "
                  "(images, optional labels), or NAME:SPLIT[:ROOT] of a dataset (gradleak list dataset)")
#: why the public references of ``gradleak attack`` are missing without ``--public``
NO_PUBLIC = "no public data given (gradleak attack --public), so not computed"


def load_public_data(spec: str, shape: tuple[int, int, int]) -> tuple[Tensor, Tensor | None, str]:
    """Public images the server holds, for the references of ``gradleak attack --public`` (ROG, Yue et al.
    2023, §6: a same-class image as the no-gradient baseline); at most
    :data:`gradleak.calibration.PUBLIC_LIMIT` of them. ``spec`` is

    * a tensor file, read as ``--truth`` is (``images`` (N, C, H, W) in [0, 1], optional ``labels``);
    * a folder in a layout of the ``folder`` dataset (class subfolders, or a ``labels.csv``/``labels.txt``:
      labelled), else a flat folder of images (unlabelled), centre-cropped and resized to the client's input
      size as ``data.name: folder`` does;
    * ``NAME:SPLIT[:ROOT]``, a registered dataset's split at the client's input size (``digits:public``,
      ``cifar10:train:~/data/cifar``).

    Returns ``(images, labels or None, description)``; labels are class indices of the model's head only if
    the public data numbers its classes as the client does (subfolders: in sorted order)."""
    from gradleak.calibration import PUBLIC_LIMIT
    from gradleak.data import load_dataset
    from gradleak.data.folder import LABEL_FILES, is_image, read_image

    C, H, W = shape
    p = Path(spec).expanduser()
    try:
        if p.is_file():
            x, y = load_images(p, shape, "--public")
            x, y, what = x[:PUBLIC_LIMIT], None if y is None else y[:PUBLIC_LIMIT], f"tensor file {spec}"
        elif p.is_dir() and (any((p / n).is_file() for n in LABEL_FILES)
                             or any(d.is_dir() and not d.name.startswith(".") for d in p.iterdir())):
            ds = load_dataset("folder", split="all", resolution=H, channels=C, root=str(p), limit=PUBLIC_LIMIT)
            x, y, what = ds.images, ds.labels, f"folder {spec}"
        elif p.is_dir():
            files = sorted(f for f in p.iterdir() if is_image(f))[:PUBLIC_LIMIT]
            x = torch.stack([read_image(f, H, C) for f in files]) if files else torch.zeros(0, C, H, W)
            y, what = None, f"folder {spec}"
        else:
            name, sep, rest = spec.partition(":")
            split, _, root = rest.partition(":")
            if not sep or not name or not split:
                raise UserError(f"--public: got {spec!r} (no such file or folder); allowed: {PUBLIC_ALLOWED}")
            ds = load_dataset(name, split=split, resolution=H, channels=C, root=root or None, limit=PUBLIC_LIMIT)
            x, y, what = ds.images, ds.labels, f"dataset {name}, split {split}"
    except UserError as err:
        msg = str(err)
        raise UserError(msg if msg.startswith("--public") else f"--public {spec}: {msg}") from None
    if x.shape[0] == 0:
        raise UserError(f"--public: {spec!r} holds no images; allowed: {PUBLIC_ALLOWED}")
    if tuple(x.shape[1:]) != (C, H, W):
        raise UserError(f"--public: {spec!r} gives images of shape {tuple(x.shape[1:])}; allowed: the client's "
                        f"({C}, {H}, {W})")
    labelled = f"labelled, {len(torch.unique(y))} classes" if y is not None else "unlabelled"
    return x, y, f"{what} ({x.shape[0]} images, {labelled})"


@dataclass
class Verification:
    """Per-layer relative distances ‖U(x) − u_obs‖ / ‖u_obs‖ and the verdict."""

    layers: dict[str, float]
    overall: float
    reproduces: bool
    worst: str
    hints: list[str] = field(default_factory=list)

    def report(self) -> str:
        width = max(len(n) for n in self.layers)
        lines = [f"{'layer'.ljust(width)}  relative distance"]
        lines += [f"{n.ljust(width)}  {d:.3e}" for n, d in self.layers.items()]
        lines.append(f"{'overall'.ljust(width)}  {self.overall:.3e}")
        if self.reproduces:
            lines.append(f"verdict: the protocol reproduces this update (relative distance {self.overall:.1e} "
                         f"<= {VERIFY_TOLERANCE:g}); an audit of it models this client exactly")
        else:
            lines.append(f"verdict: the protocol does NOT reproduce this update (relative distance "
                         f"{self.overall:.2e}): the largest mismatch is in layer {self.worst} "
                         f"({self.layers[self.worst]:.2e}); check optimizer, loss, normalization, order, "
                         f"epochs/drop_last and the update convention")
        lines += [f"hint: {h}" for h in self.hints]
        return "\n".join(lines)


def _rel(a: dict[str, Tensor], b: dict[str, Tensor], names) -> float:
    num = sum(float((a[n] - b[n]).double().pow(2).sum()) for n in names)
    den = sum(float(b[n].double().pow(2).sum()) for n in names)
    return math.sqrt(num / den) if den > 0 else math.sqrt(num)


def verify_observation(obs: Observation, images: Tensor, labels: Tensor) -> Verification:
    """Re-run the observation's protocol on the true batch and compare with the captured upload."""
    from gradleak.fl.client import client_update
    from gradleak.fl.protocols import to_delta

    if images.shape[0] != obs.num_images:
        raise UserError(f"--images: got {images.shape[0]} images; allowed: the client's {obs.num_images}")
    model = obs.build_model()
    rerun = client_update(model, obs.parameters, obs.buffers, images, labels, obs.protocol)
    # compared as Δ = θ_0 − θ_τ whatever the convention (relative to new weights θ_τ every re-run would look close)
    rerun = to_delta(rerun, obs.parameters, obs.protocol.update)
    observed = obs.as_delta().update
    names = [n for n, _ in model.named_parameters() if n in observed]  # the model's layer order
    layers = {n: _rel(rerun, observed, [n]) for n in names}
    overall = _rel(rerun, observed, names)
    worst = max(layers, key=layers.get)
    hints = []
    ok = overall <= VERIFY_TOLERANCE
    if not ok:
        if _rel({n: -t for n, t in rerun.items()}, observed, names) <= VERIFY_TOLERANCE:
            hints.append("the negated re-run matches: the client uploads the other sign (set client.update: "
                         + ("new_minus_old" if obs.protocol.update == "old_minus_new" else "old_minus_new") + ")")
        if obs.protocol.order == "unknown":
            hints.append("client.order is unknown: the re-run uses sequential order, which reproduces a "
                         "shuffled round only up to the images' order; give the seed (order: shuffled) if known")
        if obs.labels is None:
            hints.append("labels were given on the command line: check they are in the images' order")
    return Verification(layers, overall, ok, worst, hints)


def verify_command(obs_dir: str | Path, images: str | Path, labels: str | None = None) -> Verification:
    """``gradleak verify``: load the observation and the true batch, re-run, compare."""
    obs = load_observation(obs_dir)
    x, file_labels = load_images(images, obs.image_shape)
    K = int(obs.model_spec["num_classes"])
    y = parse_labels(labels, obs.num_images, K) if labels is not None else None
    if y is None:
        y = obs.labels if obs.labels is not None else file_labels
    if y is None:
        raise UserError("--labels: missing; allowed: the client's labels in the images' order (e.g. 3,1,4), "
                        "since the observation holds none")
    if y.shape != (x.shape[0],) or int(y.min()) < 0 or int(y.max()) >= K:
        raise UserError(f"--labels: got {y.tolist()[:8]}; allowed: {x.shape[0]} integers in 0..{K - 1}")
    return verify_observation(obs, x, y)


def attack_observation(obs: Observation, attack, options: dict | None = None, seed: int = 0,
                       progress: bool = False, device: str = "cpu"):
    """Run the attack ``attack`` (a registered name with ``options`` for its constructor, or an attack
    object) on ``obs`` — the pipeline's attack step (:func:`gradleak.audit.attack_observed`: the upload as
    Δ = θ_0 − θ_τ; the observation's labels when the attack uses given labels and the server holds them,
    else recovered from the last layer (iDLG / Yin et al.), or learned, as the attack's default says).
    Returns ``(reconstruction, label mode used)``."""
    from gradleak.attacks import build_attack
    from gradleak.audit import attack_observed

    atk = build_attack(attack, **(options or {})) if isinstance(attack, str) else attack
    return attack_observed(_run_config(obs, atk.name, options or {}, "default", seed, None, device), obs, atk,
                           obs.build_model(), progress)


def parse_sets(sets: list[str]) -> dict:
    """``--set KEY=VALUE`` attack options (value parsed as YAML; ``attack.options.`` prefix optional)."""
    out: dict = {}
    for a in sets:
        key, eq, value = a.partition("=")
        key = key.strip().removeprefix("attack.options.")
        if not eq or not key or "." in key:
            raise UserError(f"--set: got {a!r}; allowed: KEY=VALUE with an option of the attack, e.g. iterations=500")
        try:
            out[key] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError:
            raise UserError(f"--set {key}: got {value!r}; allowed: a YAML value") from None
    return out


def _run_config(obs: Observation, attack: str, options: dict, mode: str, seed: int, truth,
                device: str = "cpu") -> "Any":
    """A RunConfig recording what was attacked (config.yaml of the run directory); ``device``: where the attack
    computes (checked: one line naming ``--device``)."""
    import pydantic

    from gradleak.config import RunConfig
    from gradleak.devices import resolve

    resolve(device, "--device")
    C, H, _ = obs.image_shape
    client = obs.protocol.to_dict()
    client["protocol"] = client.pop("kind")
    raw = {"seed": seed, "device": device,
           "model": {"name": obs.model_spec.get("name"), "options": obs.model_spec.get("options", {})},
           "client": client, "attack": {"name": attack, "labels": mode, "options": options},
           "data": {"name": "folder", "root": str(truth) if truth else None, "resolution": H, "channels": C,
                    "batch_size": obs.num_images, "distinct_labels": False},
           "metrics": {"tagger": "none"}}
    try:
        return RunConfig.model_validate(raw)
    except pydantic.ValidationError:  # an input shape a run config cannot describe: keep the rest
        raw.pop("data")
        return RunConfig.model_validate(raw)


@dataclass
class Unscored:
    """``gradleak attack`` without ``--truth``: what was attacked and the reconstruction; nothing is scored."""

    config: Any
    observation: Observation
    reconstruction: Any
    label_mode: str
    timing: Any
    source: str


def attack_saved(observation: str | Path, attack: str, sets: list[str], truth: str | Path | None = None,
                 seed: int = 0, progress: bool = True, device: str = "cpu", public: str | None = None):
    """``gradleak attack``: run ``attack`` on a saved Observation (nothing is written: ``gradleak.report.writer.
    write_run`` or :func:`write_unscored` writes the result). With ``truth`` (the client's images) it is the audit
    pipeline (:func:`gradleak.audit.audit_observed`, as ``gradleak run``): the reconstructions matched and
    scored, with the same references, margins and verdict (:func:`gradleak.calibration.calibration_of`): the
    grey image always, the public mean and a same-class public image (seeded by ``seed``) when ``public`` names
    public data (:func:`load_public_data`) → :class:`gradleak.audit.AuditResult`. Without ``truth`` the attack
    step alone (:func:`gradleak.audit.attack_observed`) → :class:`Unscored`. Every input is loaded and checked
    before the attack runs."""
    import time

    from gradleak.attacks import build_attack
    from gradleak.audit import Timing, attack_observed, audit_observed, label_mode_of

    t0 = time.perf_counter()
    obs = load_observation(observation)
    options = parse_sets(sets)
    atk = build_attack(attack, **options)
    x = y_true = None
    if truth is not None:
        x, y_true = load_images(truth, obs.image_shape, "--truth")
        if x.shape[0] != obs.num_images:
            raise UserError(f"--truth: got {x.shape[0]} images; allowed: the client's {obs.num_images}")
        y_true = obs.labels if obs.labels is not None else y_true
    if public is not None and truth is None:
        raise UserError(f"--public: got {public!r} without --truth; allowed: --public together with --truth "
                        "(the references are scored against the true images)")
    pub = load_public_data(public, obs.image_shape) if public is not None else None
    cfg = _run_config(obs, attack, options, label_mode_of("default", atk, obs), seed, truth, device)
    model = obs.build_model()
    if x is not None:
        C, H, W = obs.image_shape
        data = (f"captured observation {observation}; true images {truth}, {H}×{W}, {C} channel(s), batch of "
                f"{obs.num_images}; public data: {pub[2] if pub else 'none given'}")
        return audit_observed(cfg, obs, atk, x, y_true, model, progress=progress, data=data,
                              public=(*pub[:2], None) if pub else (None, None, NO_PUBLIC), started=t0,
                              notes=[f"attacked a saved observation: {observation}"])
    t1 = time.perf_counter()
    rec, mode = attack_observed(cfg, obs, atk, model, progress)
    return Unscored(cfg, obs, rec, mode, Timing(t1 - t0, 0.0, time.perf_counter() - t1, 0.0), str(observation))


def write_unscored(result: Unscored, out: str | Path) -> dict:
    """The run directory of an :class:`Unscored` attack: config, observation, reconstructions, the loss trace,
    report, ``metrics.json`` (last; returned); an error or Ctrl-C while writing leaves no partial directory."""
    from gradleak.audit import Environment
    from gradleak.imagegrid import image_rows
    from gradleak.report import atomic_write_json, atomic_write_text, loss_plot, write_report, write_trace_csv
    from gradleak.report.guard import run_dir_guard

    r, rec, out = result, result.reconstruction, Path(out)
    with run_dir_guard(out):
        out.mkdir(parents=True, exist_ok=True)
        config_yaml = r.config.to_yaml()
        atomic_write_text(out / "config.yaml", config_yaml)
        r.observation.save(out / "observation")
        image_rows([rec.images], ["reconstruction"], out / "reconstruction.png")
        images = [("Reconstructions (no ground truth given: not scored)", "reconstruction.png")]
        if rec.trace:
            write_trace_csv(rec.trace, out / "trace.csv")
            loss_plot(rec.trace, out / "loss.png")
            images.append(("Attack objective", "loss.png"))
        metrics = {**rec.describe(), "scored": False, "label_mode": r.label_mode,
                   "labels": rec.labels.tolist() if rec.labels is not None else None,
                   "seed": r.config.seed, "defenses": r.observation.defenses,
                   "timing": {"prepare": round(r.timing.prepare, 3), "attack": round(r.timing.attack, 3)},
                   "environment": vars(Environment.current()),
                   "notes": [f"attacked a saved observation: {r.source}; no --truth, so nothing is scored"]}
        write_report(out, metrics, config_yaml, images=images)
        atomic_write_json(out / "metrics.json", metrics)
    return metrics
