"""gradleak.userimport: the one reader of 'package.module:attribute' paths (client.loss, model, prior, tagger)."""
from __future__ import annotations

import pytest

from gradleak.errors import UserError, error_line
from gradleak.userimport import call_factory, import_callable

ALLOWED = "an importable 'package.module:factory'"


def test_import_callable_follows_the_dotted_attribute():
    import os.path

    assert import_callable("k", "os.path:join", ALLOWED) is os.path.join
    assert import_callable("k", "gradleak.errors:UserError.__init__", ALLOWED) is UserError.__init__


@pytest.mark.parametrize("path, detail", [
    ("no_colon", None), (":join", None), ("os.path:", None),
    ("gradleak_no_such_module_xyz:f", "(import failed: ModuleNotFoundError: No module named"),
    ("os.path:no_such_name", "(import failed: AttributeError:"),
    ("os:sep", "(it names a str, not a callable)"),
])
def test_import_callable_refusals_are_one_line(path, detail):
    with pytest.raises(UserError) as err:
        import_callable("model", path, ALLOWED)
    text = str(err.value)
    assert text.startswith(f"model: got {path!r}; allowed: {ALLOWED}") and "\n" not in text
    assert detail is None or detail in text


def test_call_factory_calls_without_arguments_and_reports_a_failing_factory():
    assert call_factory("k", "builtins:dict", ALLOWED) == {}
    with pytest.raises(UserError, match=r"^k: got 'os.path:join'; allowed: a factory callable without arguments "
                                        r"\(calling it failed: TypeError: "):
        call_factory("k", "os.path:join", ALLOWED)


def test_error_line_is_the_type_and_the_first_line():
    assert error_line(ValueError("first\nsecond")) == "ValueError: first"
    assert error_line(KeyError()) == "KeyError"
    assert error_line(RuntimeError("x" * 500), limit=10) == "RuntimeError: " + "x" * 10
