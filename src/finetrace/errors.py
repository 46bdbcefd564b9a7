"""The one error family a user can cause; the CLI prints it as a single line."""

import difflib
from collections.abc import Mapping
from typing import TypeVar

T = TypeVar("T")


class FinetraceError(Exception):
    """A problem with the user's input: what was given, what was expected, what to do."""


def lookup(table: Mapping[str, T], name: str, kind: str) -> T:
    """`table[name]`, or `FinetraceError` listing the known names and the closest one."""
    if name in table:
        return table[name]
    close = difflib.get_close_matches(name, table, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise FinetraceError(f"unknown {kind} {name!r}; known: {', '.join(table)}.{hint}")


def require(ok: bool, name: str, value: object, expected: str) -> None:
    """Refuse a setting: `FinetraceError` naming it, the value given and what is expected."""
    if not ok:
        raise FinetraceError(f"{name} {value!r}: expected {expected}")
