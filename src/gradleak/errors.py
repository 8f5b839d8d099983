"""User-facing errors: one clear line, exit code 2 from the CLI."""


class UserError(ValueError):
    """Bad input from the user (config key, value, file). The message is one line naming what was
    given and what is allowed; the CLI prints it and exits with code 2 without a traceback."""


def bad_value(key: str, given: object, allowed: str) -> UserError:
    """Build the standard one-line message: ``<key>: got <given>; allowed: <allowed>``."""
    return UserError(f"{key}: got {given!r}; allowed: {allowed}")


def error_line(error: BaseException, limit: int = 200) -> str:
    """``Type: first line of the message`` (cut at ``limit`` characters), or the type alone: an exception
    raised by user code or a library, told in one line."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:limit]}" if lines else type(error).__name__
