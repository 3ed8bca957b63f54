"""The one error class for a user's mistake (a path, an option, a resume that does not match
the folder): the command line prints its message on one line, without a traceback."""

from __future__ import annotations

__all__ = ["UserError"]


class UserError(Exception):
    """A mistake in how rnnfast was called; the message says what and how to fix it."""
