"""User-facing errors: one line, no traceback, exit code 2 in the CLI."""


class FeatxError(Exception):
    """A problem with the user's input or environment, told in one line."""
