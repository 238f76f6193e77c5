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


class Interrupted(NfitError):
    """SIGINT or SIGTERM stopped a fit after its state was saved: exit code 128 + signal
    number (130 for SIGINT, 143 for SIGTERM), as a shell reports a signalled process."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + int(signum)
