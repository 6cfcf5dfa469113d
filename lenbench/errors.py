"""The one error type users see: a one-line message, exit code 2, no traceback."""

from __future__ import annotations


class LenbenchError(Exception):
    """Bad input or an unrecoverable condition, reported to the user as one line."""
