"""The Observation: everything an honest-but-curious server holds after one client upload.

Saved as ``<stem>.safetensors`` (tensors) + ``<stem>.json`` (metadata), so updates captured from a
real FL deployment can be attacked too. Loading never executes code (safetensors + JSON only),
validates every tensor's shape against the model and refuses NaN/inf, naming the tensor.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from gradleak.errors import UserError
from gradleak.filepair import read_pair, write_pair
from gradleak.fl.protocol import Protocol

Params = dict[str, Tensor]
FORMAT_VERSION = 1


@dataclass
class Observation:
    """What the server sees.

    ``model_spec``: how to rebuild the architecture (``name``, ``num_classes``, ``in_channels``,
    ``resolution``, ``options``); ``parameters``/``buffers``: θ_0 sent to the client; ``update``: the
    upload after any defense, keyed like ``parameters``; ``protocol``: client settings the server knows;
    ``num_images``: the client's batch size; ``labels``: given only when the threat model grants them;
    ``bn_stats``: per-BN-layer batch mean/var when the client shares them; ``defenses``: what the
    attacker was told about each transform applied to the upload.
    """

    model_spec: dict
    parameters: Params
    buffers: Params
    update: Params
    protocol: Protocol
    num_images: int
    image_shape: tuple[int, int, int]
    labels: Tensor | None = None
    bn_stats: Params | None = None
    defenses: list[dict] = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    def build_model(self) -> nn.Module:
        """The victim architecture with θ_0 loaded (validated against the stored tensors)."""
        from gradleak.models import build_model

        spec = self.model_spec
        model = build_model(spec["name"], spec["num_classes"], spec["in_channels"], spec["resolution"],
                            **spec.get("options", {}))
        validate_against(model, self)
        model.load_state_dict({**self.parameters, **self.buffers}, strict=False)
        return model

    def save(self, path: str | Path) -> tuple[Path, Path]:
        """Write ``path.safetensors`` and ``path.json`` (path given without or with suffix)."""
        stem = Path(path).with_suffix("")
        tensors = {f"param/{k}": v for k, v in self.parameters.items()}
        tensors |= {f"buffer/{k}": v for k, v in self.buffers.items()}
        tensors |= {f"update/{k}": v for k, v in self.update.items()}
        if self.labels is not None:
            tensors["labels"] = self.labels
        for k, v in (self.bn_stats or {}).items():
            tensors[f"bn/{k}"] = v
        tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        meta = {
            "format_version": FORMAT_VERSION,
            "model": self.model_spec,
            "protocol": self.protocol.to_dict(),
            "num_images": self.num_images,
            "image_shape": list(self.image_shape),
            "has_labels": self.labels is not None,
            "has_bn_stats": self.bn_stats is not None,
            "defenses": self.defenses,
            "extra": self.extra,
        }
        return write_pair(stem, tensors, meta)

    @classmethod
    def load(cls, path: str | Path, validate: bool = True) -> "Observation":
        """Load and validate; raises UserError naming the file, key or tensor at fault."""
        stem = Path(path).with_suffix("")
        tensors, meta = read_pair(stem, "observation", None)
        js, st = stem.with_suffix(".json"), stem.with_suffix(".safetensors")
        for key in ("model", "protocol", "num_images", "image_shape"):
            if key not in meta:
                raise UserError(f"observation: {js} lacks the metadata key {key!r}")

        def part(prefix: str) -> Params:
            return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

        for name, t in tensors.items():
            if t.is_floating_point() and not torch.isfinite(t).all():
                raise UserError(f"observation: tensor {name!r} in {st} contains NaN or inf")
        if not isinstance(meta["model"], dict) or not isinstance(meta["model"].get("options", {}), dict):
            raise UserError(f"observation: {js} 'model' is not a mapping of name, num_classes, in_channels, resolution")
        try:
            obs = cls(
                model_spec=meta["model"],
                parameters=part("param/"),
                buffers=part("buffer/"),
                update=part("update/"),
                protocol=Protocol.from_dict(meta["protocol"]),
                num_images=int(meta["num_images"]),
                image_shape=tuple(meta["image_shape"]),
                labels=tensors.get("labels"),
                bn_stats=part("bn/") if meta.get("has_bn_stats") else None,
                defenses=meta.get("defenses", []),
                extra=meta.get("extra", {}),
            )
        except (TypeError, ValueError, KeyError, AttributeError) as err:
            raise UserError(f"observation: {js} has invalid metadata ({type(err).__name__}: "
                            f"{str(err).splitlines()[0] if str(err) else ''}); allowed: what Observation.save writes") from None
        if validate:
            obs.build_model()
        return obs


def validate_against(model: nn.Module, obs: Observation) -> None:
    """Every parameter/buffer/update tensor must exist in the model with the model's shape."""
    ref = dict(model.named_parameters())
    bufs = dict(model.named_buffers())
    for kind, tensors, expected in (("param", obs.parameters, ref), ("update", obs.update, ref),
                                    ("buffer", obs.buffers, bufs)):
        missing = set(expected) - set(tensors)
        if kind != "buffer" and missing:
            raise UserError(f"observation: {kind}/{sorted(missing)[0]} missing for model {obs.model_spec['name']!r}")
        for name, t in tensors.items():
            if name not in expected:
                raise UserError(f"observation: {kind}/{name} is not a tensor of model {obs.model_spec['name']!r}")
            if tuple(t.shape) != tuple(expected[name].shape):
                raise UserError(
                    f"observation: {kind}/{name} has shape {tuple(t.shape)}, model expects {tuple(expected[name].shape)}"
                )
    if obs.labels is not None and obs.labels.shape[0] != obs.num_images:
        raise UserError(f"observation: labels has {obs.labels.shape[0]} entries, num_images is {obs.num_images}")
    if obs.num_images < 1 or math.prod(obs.image_shape) < 1:
        raise UserError(f"observation: num_images/image_shape invalid: {obs.num_images}, {obs.image_shape}")
