"""Errors that the CLI turns into a one-line message and a non-zero exit code.

Every user-facing error is a :class:`NeuronscopeError`, a ``ValueError`` subclass, so
``except ValueError`` catches bad input from neuronscope as it does from numpy or
scikit-learn.
"""

from __future__ import annotations

__all__ = ["ConfigMismatchError", "DamagedRunError", "FormatVersionError", "NeuronscopeError", "RunLockedError"]


class NeuronscopeError(ValueError):
    """A user-facing error: the message is one line and names the fix."""

    exit_code = 2


class FormatVersionError(NeuronscopeError):
    """A run store written by another format version."""


class ConfigMismatchError(NeuronscopeError):
    """A run exists at the output path with a different recording configuration."""


class DamagedRunError(NeuronscopeError):
    """A run store whose data or metadata is missing or corrupt (``neuronscope verify`` lists
    every problem)."""


class RunLockedError(NeuronscopeError):
    """Another process is writing the run (it holds the run's lock)."""
