"""Errors that the CLI turns into a one-line message and a non-zero exit code."""

from __future__ import annotations


class NeuronscopeError(Exception):
    """A user-facing error: the message is one line and names the fix."""

    exit_code = 2


class FormatVersionError(NeuronscopeError):
    """A run store written by another format version."""


class ConfigMismatchError(NeuronscopeError):
    """A run exists at the output path with a different recording configuration."""
