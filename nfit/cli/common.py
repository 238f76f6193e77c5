"""Pieces every command shares: error handling and the common options (what a terminal
shows, progress and result tables, lives in ``nfit.console``)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from nfit.console import RichReporter, emit, fmt, stderr, stdout
from nfit.errors import Interrupted, NfitError

__all__ = ["Device", "Force", "Json", "Out", "Quiet", "RichReporter", "emit", "fmt", "handle_errors",
           "stderr", "stdout"]

Device = Annotated[str | None, typer.Option(help="auto, cpu, cuda or mps (default auto)")]
Json = Annotated[bool, typer.Option("--json", help="print the report as JSON on stdout")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar or table")]
Out = Annotated[Path | None, typer.Option(help="output directory (default runs/<input name>)")]
Force = Annotated[bool, typer.Option("--force", help="overwrite an existing --out directory")]


@contextlib.contextmanager
def handle_errors() -> Iterator[None]:
    """Turn the project's errors into one line on stderr and their exit code.

    Any other exception is a bug: it is reported on one line too (exit 1, "internal
    error"), with the traceback only when NFIT_DEBUG=1.
    """
    try:
        yield
    except Interrupted as exc:
        stderr.print(f"nfit: {exc}", markup=False, soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None
    except NfitError as exc:
        stderr.print(f"nfit: error: {exc}", markup=False, emoji=False, soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        stderr.print("nfit: interrupted", markup=False)
        raise typer.Exit(130) from None
    except MemoryError:
        stderr.print("nfit: error: out of memory; try a smaller --batch or fewer points", markup=False)
        raise typer.Exit(1) from None
    except (typer.Exit, typer.Abort):
        raise
    except Exception as exc:
        if os.environ.get("NFIT_DEBUG"):
            raise
        stderr.print(f"nfit: internal error: {type(exc).__name__}: {exc} (a bug in nfit; "
                     "NFIT_DEBUG=1 shows the traceback)", markup=False, soft_wrap=True)
        raise typer.Exit(1) from None
