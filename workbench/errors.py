"""Errors a user can fix, as opposed to bugs.

Raise these where input is checked (an option, a path, a file's content, a config
value), with a message that names what was wrong and what to do. The CLI prints
them as one line and exits 1; any other exception is a bug and keeps its traceback.
Each also derives from the built-in exception it refines, so ``except ValueError``
and ``except OSError`` in callers keep working.
"""
from __future__ import annotations


class UserError(Exception):
    """Something the user can fix; the message says what and how."""


class InputError(UserError, ValueError):
    """A bad option, argument, config value or file content."""


class MissingFileError(UserError, FileNotFoundError):
    """A path the user gave does not exist (or is the wrong kind of thing)."""


class FileConflictError(UserError, FileExistsError):
    """An output exists already, or another process is writing it."""


class DamagedFileError(UserError, ValueError):
    """A file exists but is truncated, corrupt, or not what it claims to be."""


class DiskFullError(UserError, OSError):
    """The disk filled up (or is read-only) while writing; what was written before stays readable."""
