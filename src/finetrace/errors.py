"""The one error family a user can cause; the CLI prints it as a single line."""


class FinetraceError(Exception):
    """A problem with the user's input: what was given, what was expected, what to do."""


def require(ok: bool, name: str, value: object, expected: str) -> None:
    """Refuse a setting: `FinetraceError` naming it, the value given and what is expected."""
    if not ok:
        raise FinetraceError(f"{name} {value!r}: expected {expected}")
