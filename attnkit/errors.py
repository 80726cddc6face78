"""attnkit's one error family: every problem attnkit reports about its input is an ``AttnkitError``.

``AttnkitError`` is a ``ValueError``; the subclasses say what kind of problem it is (and keep the
built-in class code used to catch, e.g. ``InputTypeError`` is also a ``TypeError``). Library
messages speak of arguments; only ``attnkit.commands`` speaks of command-line flags. The command
line prints an ``AttnkitError`` as ``attnkit <command>: error: …`` and exits with code 2; any other
exception is a bug and shows its traceback.
"""

from __future__ import annotations

__all__ = ["AttnkitError", "InputTypeError", "OutOfRangeError", "UnsupportedModelError",
           "BackendUnsupportedError", "MissingPackageError", "CaptureFileError"]


class AttnkitError(ValueError):
    """A problem with what was asked of attnkit; the message names it and how to fix it."""


class InputTypeError(AttnkitError, TypeError):
    """An argument of the wrong type or dtype (e.g. a list where a tensor is needed)."""


class OutOfRangeError(AttnkitError, IndexError):
    """A layer, head, batch item or position that the model or capture does not have."""


class UnsupportedModelError(AttnkitError):
    """A model attnkit cannot run or capture (it says which implementation to use instead)."""


class BackendUnsupportedError(AttnkitError):
    """A backend asked for by name cannot compute the call; the message names one that can."""


class MissingPackageError(AttnkitError, ImportError):
    """An optional package this feature needs is not installed; the message says how to get it."""


class CaptureFileError(AttnkitError):
    """A capture file that cannot be read: damaged, not a capture, or from a newer format."""
