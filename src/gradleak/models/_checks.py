"""Validation helpers for model options: every failure is a one-line :class:`UserError`."""

from __future__ import annotations

import numbers

from gradleak.errors import UserError, bad_value


def check_int(key: str, value: object, minimum: int = 1) -> int:
    """Return ``value`` as an int if it is an integer (not a bool) >= ``minimum``; otherwise raise
    UserError. NumPy integers are accepted."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise bad_value(key, value, f"an integer >= {minimum}")
    return int(value)


def check_bool(key: str, value: object) -> bool:
    """Return ``value`` if it is a bool; otherwise raise UserError."""
    if not isinstance(value, bool):
        raise bad_value(key, value, "true or false")
    return value


def check_choice(key: str, value: object, choices: tuple[str, ...]) -> str:
    """Return ``value`` if it is one of ``choices``; otherwise raise UserError."""
    if not isinstance(value, str) or value not in choices:
        raise bad_value(key, value, ", ".join(choices))
    return value


def check_resolution(model: str, resolution: object, *, multiple: int = 1, minimum: int = 1) -> int:
    """Check the input side length a model is built for."""
    allowed = f"an integer >= {minimum}"
    if multiple > 1:
        allowed += f" divisible by {multiple}"
    if (
        isinstance(resolution, bool)
        or not isinstance(resolution, numbers.Integral)
        or resolution < minimum
        or resolution % multiple
    ):
        raise bad_value(f"{model} resolution", resolution, allowed)
    return int(resolution)


def check_common(model: str, num_classes: object, in_channels: object, resolution: object, *,
                 multiple: int = 1, minimum: int = 1) -> tuple[int, int, int]:
    """Check and return ``(num_classes, in_channels, resolution)``, the three arguments every model factory
    takes (:data:`gradleak.models.registry.MODELS`); ``multiple`` / ``minimum`` as in :func:`check_resolution`."""
    return (check_int(f"{model} num_classes", num_classes, 1), check_int(f"{model} in_channels", in_channels, 1),
            check_resolution(model, resolution, multiple=multiple, minimum=minimum))


__all__ = [
    "UserError",
    "check_bool",
    "check_choice",
    "check_common",
    "check_int",
    "check_resolution",
]
