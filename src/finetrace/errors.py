"""The one error family a user can cause; the CLI prints it as a single line."""


class FinetraceError(Exception):
    """A problem with the user's input: what was given, what was expected, what to do."""
