"""The project's own error types. The CLI turns each into one line and an exit code."""

from __future__ import annotations


class NfitError(Exception):
    """A failure of the job (bad data, divergence): exit code 1."""

    exit_code = 1


class UsageError(NfitError):
    """Bad usage (an option out of range, an unknown name): exit code 2."""

    exit_code = 2


class DataError(NfitError):
    """An input file that cannot be read or used: exit code 1."""

    exit_code = 1


class DivergenceError(NfitError):
    """The fit produced NaN or Inf: exit code 1."""

    exit_code = 1
