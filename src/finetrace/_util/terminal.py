"""Text from a model, a dataset or a user, made inert before it reaches a terminal."""

import re

from rich.markup import escape as escape_markup

# C0 and C1 control characters but tab and newline: ANSI sequences (ESC), terminal titles
# (OSC), carriage returns that overwrite a line.
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def visible_controls(text: str) -> str:
    """`text` with each control character written as its escape (`\\x1b`) rather than obeyed."""
    return CONTROL.sub(lambda match: match.group().encode("unicode_escape").decode(), text)


def escape(text: str) -> str:
    """`text` as Rich prints it literally: markup escaped, control characters made visible."""
    return escape_markup(visible_controls(text))
