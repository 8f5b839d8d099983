"""The Observation: everything an honest-but-curious server holds after one client upload.

Saved as ``<stem>.safetensors`` (tensors) + ``<stem>.json`` (metadata), so updates captured from a
real FL deployment can be attacked too. Loading never executes code (safetensors + JSON only),
validates every tensor's shape against the model and refuses NaN/inf, naming the tensor.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from gradleak.errors import UserError
from gradleak.filepair import read_pair, write_pair
from gradleak.fl.protocol import Protocol
from gradleak.fl.protocols import to_delta
from gradleak.fl.aggregation import Aggregation

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
    attacker was told about each transform applied to the upload; ``extra_uploads``: the tensor sets the
    protocol uploads beside the model update, by name (SCAFFOLD's ``control_update``), keyed like
    ``parameters``. The protocol's known state (SCAFFOLD's control variates) is ``protocol.state``.
    ``aggregation``: set when the upload is the secure aggregate of several clients (:mod:`gradleak.fl.secagg`:
    ``num_images`` is then the clients' total N, the image slots are their batches in order, ``protocol`` is
    client 1's).
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
    extra_uploads: dict[str, Params] = field(default_factory=dict)
    model: nn.Module | None = field(default=None, repr=False, compare=False)  # the architecture, when given
    aggregation: Aggregation | None = None  # K clients' aggregate (gradleak.fl.secagg), else one client
    #: the architecture built once from ``model_spec`` (or the simulated client's model, :func:`gradleak.case.capture`):
    #: :meth:`build_model` hands out copies of it, so the victim is built once per observation
    template: nn.Module | None = field(default=None, repr=False, compare=False)

    def build_model(self) -> nn.Module:
        """The victim architecture with θ_0 loaded (validated against the stored tensors): the ``model``
        object given to :meth:`load` (or set on the Observation), else rebuilt from ``model_spec`` — a
        registered name or a ``package.module:factory`` import path."""
        from gradleak.limits import check_model_size
        from gradleak.models import MODELS, build_model

        spec = self.model_spec
        if self.model is not None:
            model = self.model
        elif (model := _copy(self.template)) is not None:
            first = next(iter(self.parameters.values()), None)
            model = model if first is None else model.to(first.device)  # where a rebuild would be: θ_0's device
        else:
            name = spec.get("name")
            if not isinstance(name, str) or (name.lower() not in MODELS and ":" not in name):
                raise UserError(
                    f"observation: model {name!r} was built in Python and cannot be rebuilt from the file; "
                    f"allowed: Observation.load(path, model=your_model), or a model_spec name that is a registered "
                    f"model or an import path 'package.module:factory'")
            missing = [k for k in ("num_classes", "in_channels", "resolution") if k not in spec]
            if missing:
                raise UserError(f"observation: model_spec lacks {missing[0]!r}; allowed: a model_spec with name, "
                                "num_classes, in_channels, resolution (or Observation.load(path, model=...))")
            args = (name, spec["num_classes"], spec["in_channels"], spec["resolution"])
            check_model_size(lambda: build_model(*args, **spec.get("options", {})), f"observation: model {name!r}")
            self.template = build_model(*args, **spec.get("options", {}))
            model = _copy(self.template) or self.template
        validate_against(model, self)
        model.load_state_dict({**self.parameters, **self.buffers}, strict=False)
        return model

    def to(self, device) -> "Observation":
        """A copy with every tensor on ``device`` (the attacker's hardware); metadata shared."""
        def move(d: Params | None) -> Params | None:
            return None if d is None else {k: v.to(device) for k, v in d.items()}

        state = None if self.protocol.state is None else {k: move(v) for k, v in self.protocol.state.items()}
        return Observation(model_spec=self.model_spec, parameters=move(self.parameters), buffers=move(self.buffers),
                           update=move(self.update), protocol=self.protocol.with_state(state),
                           num_images=self.num_images,
                           image_shape=self.image_shape,
                           labels=None if self.labels is None else self.labels.to(device),
                           bn_stats=move(self.bn_stats), defenses=self.defenses, extra=self.extra,
                           extra_uploads={k: move(v) for k, v in self.extra_uploads.items()}, model=self.model,
                           aggregation=self.aggregation, template=self.template)

    def as_delta(self) -> "Observation":
        """The same observation with the upload as Δ = θ_0 − θ_τ (``protocol.update`` ``old_minus_new``),
        converted from the stated convention: θ_τ − θ_0 is negated, new weights θ_τ give θ_0 − θ_τ.
        Attacks and label recovery work on Δ (it points along the gradient); a no-op for the default."""
        conv = self.protocol.update
        if conv == "old_minus_new" or self.aggregation is not None:  # an aggregate is always Δ (gradleak.fl.secagg)
            return self
        update = to_delta(self.update, self.parameters, conv)  # the one conversion (gradleak.fl.protocols)
        return dataclasses.replace(self, update=update,
                                   protocol=dataclasses.replace(self.protocol, update="old_minus_new"),
                                   extra={**self.extra, "update_converted_from": conv})

    def as_one_batch(self) -> "Observation":
        """A secure aggregate (``aggregation`` set, :mod:`gradleak.fl.secagg`) seen as one client's upload of its N
        images, for label recovery: the update divided by Σ_k w_k (a weighted mean of the Δ_k), client 1's
        protocol — exact for FedSGD clients of equal size. A single client's upload is returned unchanged."""
        agg = self.aggregation
        if agg is None:
            return self
        scale = sum(agg.weights)
        update = {n: t / scale for n, t in self.update.items()} if scale not in (0.0, 1.0) else self.update
        return dataclasses.replace(self, update=update, protocol=agg.protocols[0], aggregation=None)

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
        for group, sets in (("state", self.protocol.state or {}), ("upload", self.extra_uploads)):
            tensors |= {f"{group}/{s}/{k}": v for s, d in sets.items() for k, v in d.items()}
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
        if self.aggregation is not None:
            meta["aggregation"] = self.aggregation.to_dict()
        return write_pair(stem, tensors, meta)

    @classmethod
    def load(cls, path: str | Path, validate: bool = True, model: nn.Module | None = None) -> "Observation":
        """Load and validate; raises UserError naming the file, key or tensor at fault. ``path``: the stem,
        either file, or a directory holding ``observation.safetensors``/``.json`` (``gradleak capture``).
        ``model``: the architecture object (any ``nn.Module``, e.g. an ``nn.Sequential`` built in Python),
        used instead of rebuilding it from the recorded ``model_spec``."""
        path = Path(path)
        if path.is_dir():
            path = path / "observation"
        stem = path.with_suffix("") if path.suffix in (".json", ".safetensors") else path
        tensors, meta = read_pair(stem, "observation", None)
        js, st = stem.with_suffix(".json"), stem.with_suffix(".safetensors")
        from gradleak.fl.obsfile import check_file

        check_file(tensors, meta, js, st, rebuild=model is None)  # every field, dtype and declared size

        def part(prefix: str) -> Params:
            return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

        def sets(group: str) -> dict[str, Params]:
            names = {k.split("/")[1] for k in tensors if k.startswith(group + "/") and k.count("/") >= 2}
            return {s: part(f"{group}/{s}/") for s in sorted(names)}

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
                extra_uploads=sets("upload"),
                model=model,
                aggregation=Aggregation.from_dict(meta["aggregation"]) if meta.get("aggregation") else None,
            )
        except (TypeError, ValueError, KeyError, AttributeError) as err:
            raise UserError(f"observation: {js} has invalid metadata ({type(err).__name__}: "
                            f"{str(err).splitlines()[0] if str(err) else ''}); allowed: what Observation.save writes") from None
        state = sets("state")
        if set(state) != set(obs.protocol.rule.state):
            raise UserError(f"observation: state sets {sorted(state)} in {st}; protocol {obs.protocol.kind} needs "
                            f"exactly {list(obs.protocol.rule.state)}")
        obs.protocol = obs.protocol.with_state(state or None)
        if validate:
            built = obs.build_model()
            # the model's tensor order (the file's is alphabetical): layer sums then run in the same order
            # as for the simulated client, so a loaded observation is attacked bit-identically
            for attr, named in (("parameters", built.named_parameters()), ("buffers", built.named_buffers())):
                order = [n for n, _ in named]
                d = getattr(obs, attr)
                setattr(obs, attr, {**{n: d[n] for n in order if n in d}, **d})
            obs.update = {**{n: obs.update[n] for n in obs.parameters if n in obs.update}, **obs.update}
        return obs


def _copy(model: nn.Module | None) -> nn.Module | None:
    """A deep copy of ``model`` (None when there is none or it cannot be copied: the caller rebuilds)."""
    if model is None:
        return None
    import copy

    try:
        return copy.deepcopy(model)
    except Exception:  # noqa: BLE001 - e.g. a module holding an uncopyable handle: rebuilt instead
        return None


def validate_against(model: nn.Module, obs: Observation) -> None:
    """Every parameter/buffer/update tensor must exist in the model with the model's shape."""
    ref = dict(model.named_parameters())
    bufs = dict(model.named_buffers())
    name_of = obs.model_spec.get("name") if isinstance(obs.model_spec, dict) else None
    rule = obs.protocol.rule
    groups = [("param", obs.parameters, ref), ("update", obs.update, ref), ("buffer", obs.buffers, bufs)]
    for group, names, have in (("state", rule.state, obs.protocol.state or {}),
                               ("upload", rule.uploads, obs.extra_uploads)):
        if set(have) != set(names):  # the sets this protocol reads / uploads, no more, no fewer
            raise UserError(f"observation: {group} sets {sorted(have)}; protocol {obs.protocol.kind} needs "
                            f"exactly {list(names)}")
        groups += [(f"{group}/{s}", have[s], ref) for s in names]
    for kind, tensors, expected in groups:
        for name, want in expected.items():  # in the model's order: the first mismatch is reported
            if name not in tensors:
                if kind != "buffer":
                    raise UserError(f"observation: {kind}/{name} missing for model {name_of!r}")
                continue
            if tuple(tensors[name].shape) != tuple(want.shape):
                raise UserError(f"observation: {kind}/{name} has shape {tuple(tensors[name].shape)}, "
                                f"model expects {tuple(want.shape)}")
        for name in tensors:
            if name not in expected:
                raise UserError(f"observation: {kind}/{name} is not a tensor of model {name_of!r}")
    if obs.labels is not None and obs.labels.shape[0] != obs.num_images:
        raise UserError(f"observation: labels has {obs.labels.shape[0]} entries, num_images is {obs.num_images}")
    if obs.aggregation is not None and obs.aggregation.num_images != obs.num_images:
        raise UserError(f"observation: aggregation covers {obs.aggregation.num_images} images "
                        f"({', '.join(map(str, obs.aggregation.sizes))}), num_images is {obs.num_images}")
    if obs.num_images < 1 or math.prod(obs.image_shape) < 1:
        raise UserError(f"observation: num_images/image_shape invalid: {obs.num_images}, {obs.image_shape}")
