"""User-facing errors: one clear line, exit code 2 from the CLI."""


class UserError(ValueError):
    """Bad input from the user (config key, value, file). The message is one line naming what was
    given and what is allowed; the CLI prints it and exits with code 2 without a traceback."""


def bad_value(key: str, given: object, allowed: str) -> UserError:
    """Build the standard one-line message: ``<key>: got <given>; allowed: <allowed>``."""
    return UserError(f"{key}: got {given!r}; allowed: {allowed}")
