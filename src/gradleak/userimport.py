"""User code named by an import path ``package.module:attribute`` (the ``client.loss``, ``model``, prior and
tagger options): imported when asked for, and every failure one line (:func:`gradleak.errors.bad_value`)."""
from __future__ import annotations

import importlib
from typing import Any, Callable

from gradleak.errors import bad_value, error_line


def import_callable(key: str, path: str, allowed: str) -> Callable[..., Any]:
    """The callable ``path`` names: ``importlib.import_module(package.module)``, then ``getattr`` along the
    dotted ``attribute``. A path without both halves, an import that fails (any exception: it is user code)
    or a target that is not callable is the error ``key: got path; allowed: allowed (...)``."""
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise bad_value(key, path, allowed)
    try:
        target: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
    except Exception as error:  # noqa: BLE001 - anything going wrong while importing user code
        raise bad_value(key, path, f"{allowed} (import failed: {error_line(error)})") from None
    if not callable(target):
        raise bad_value(key, path, f"{allowed} (it names a {type(target).__name__}, not a callable)")
    return target


def call_factory(key: str, path: str, allowed: str) -> Any:
    """What the factory ``path`` names returns when called without arguments (:func:`import_callable`); a
    factory that raises is the error ``key: got path; allowed: a factory ... (calling it failed: ...)``."""
    factory = import_callable(key, path, allowed)
    try:
        return factory()
    except Exception as error:  # noqa: BLE001 - a failing user factory is one line too
        raise bad_value(key, path, f"a factory callable without arguments (calling it failed: "
                                   f"{error_line(error)})") from None
