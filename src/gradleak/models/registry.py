"""Model registry: ``MODELS``, :func:`build_model` and :func:`feature_layer`."""

from __future__ import annotations

import inspect
from typing import Any, Callable

from torch import nn

from gradleak.errors import UserError, bad_value, error_line
from gradleak.registry import Registry
from gradleak.userimport import import_callable

from ._checks import check_int
from .convnet import ConvNet
from .fit import check_fits
from .lenet import LeNet
from .precode import precode
from .resnet import ResNet18
from .rgapnets import CNN6, CNN10, MLP
from .vgg import VGG7

ModelFactory = Callable[..., nn.Module]

#: name -> factory(num_classes, in_channels, resolution, **options) returning an ``nn.Module``.
MODELS = Registry("model")
MODELS.register("lenet")(LeNet)
MODELS.register("convnet")(ConvNet)
MODELS.register("resnet18")(ResNet18)
MODELS.register("vgg7")(VGG7)
MODELS.register("cnn6")(CNN6)  # R-GAP standard form (options: width, bias, slope)
MODELS.register("cnn10")(CNN10)
MODELS.register("mlp")(MLP)  # options: width, depth, activation



@MODELS.register("precode")
def _precode(num_classes: int, in_channels: int = 3, resolution: int = 32, base: str = "convnet",
             base_options: dict[str, Any] | None = None, bottleneck: int = 256, seed: int = 0,
             noise: str = "seeded") -> nn.Module:
    """PRECODE around a registered ``base`` model (:func:`gradleak.models.precode.precode`)."""
    return precode(num_classes, in_channels, resolution, base, base_options, bottleneck, seed, noise,
                   build=build_model)


_RESERVED = ("num_classes", "in_channels", "resolution")


def _allowed_names() -> str:
    return ", ".join(MODELS) + ", or an import path 'package.module:factory'"


def _check_options(name: str, factory: ModelFactory, options: dict[str, Any]) -> None:
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # builtins without a signature: let the call decide
        return
    params = signature.parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    allowed = [
        p.name
        for p in params.values()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        and p.name not in _RESERVED
    ]
    for key in options:
        if key in _RESERVED or (key not in allowed and not takes_any):
            raise bad_value(f"{name} option", key, ", ".join(allowed) or "no options")
    missing = [r for r in _RESERVED if r not in params and not takes_any]
    if missing:
        raise bad_value(
            "model", name, f"a factory accepting num_classes, in_channels, resolution "
            f"(this one lacks {', '.join(missing)})"
        )


def build_model(
    name: str, num_classes: int, in_channels: int = 3, resolution: int = 32, **options: Any
) -> nn.Module:
    """Build a victim model by registry name or ``package.module:factory`` import path.

    ``options`` are the factory's keyword options (e.g. ``width``, ``batchnorm``, ``stem``); an
    unknown one raises :class:`UserError` naming it and the allowed ones. The returned module has
    ``gradleak_name`` (the name), ``gradleak_options`` (the options given) and ``gradleak_spec`` (everything
    needed to rebuild it: what an Observation records, :func:`gradleak.case.model_spec_of`) attributes.
    """
    if not isinstance(name, str) or not name.strip():
        raise bad_value("model", name, _allowed_names())
    num_classes = check_int("num_classes", num_classes, 1)
    in_channels = check_int("in_channels", in_channels, 1)
    resolution = check_int("resolution", resolution, 1)
    name = name.strip()
    if ":" in name:
        factory = import_callable("model", name, "an importable 'package.module:factory' path")
    else:
        name = name.lower()
        if name not in MODELS:
            raise bad_value("model", name, _allowed_names())
        factory = MODELS[name]
    _check_options(name, factory, options)
    try:
        model = factory(
            num_classes=num_classes, in_channels=in_channels, resolution=resolution, **options
        )
    except UserError:
        raise
    except Exception as error:  # noqa: BLE001 - a user factory that raises is bad input, one line
        if ":" not in name:
            raise
        raise bad_value("model", name, f"a factory that builds (it raised {error_line(error)})") from None
    if not isinstance(model, nn.Module):
        raise bad_value("model", name, "a factory returning a torch.nn.Module")
    if ":" in name:  # built-in models fit by construction (tested); a user factory is checked here
        check_fits(model, name, num_classes, in_channels, resolution)
    import torch

    from gradleak.loadonce import LOADS

    if torch.get_default_device().type != "meta":  # a size check's build on meta is not counted
        LOADS["model"] += 1  # victim builds per process (tests: one per audit)
    model.gradleak_name = name
    model.gradleak_options = dict(options)
    model.gradleak_spec = {"name": name, "num_classes": num_classes, "in_channels": in_channels,
                           "resolution": resolution, "options": dict(options)}
    return model


def feature_layer(model: nn.Module) -> nn.Linear:
    """The final classifier ``nn.Linear`` (the layer Soteria defends).

    Uses ``model.classifier`` when it is an ``nn.Linear`` (all built-in models); otherwise the last
    ``nn.Linear`` registered in the model. Raises :class:`UserError` if there is none.
    """
    head = getattr(model, "classifier", None)
    if isinstance(head, nn.Linear):
        return head
    last = None
    for module in model.modules():
        if isinstance(module, nn.Linear):
            last = module
    if last is None:
        name = getattr(model, "gradleak_name", type(model).__name__)
        raise bad_value("model", name, "a model whose classifier head is a torch.nn.Linear layer")
    return last


__all__ = ["MODELS", "ModelFactory", "build_model", "feature_layer"]
