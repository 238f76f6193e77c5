"""Pieces every command shares: error handling, progress, printing results."""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from nfit.errors import Interrupted, NfitError
from nfit.io import json_safe
from nfit.reporting import Reporter

stderr = Console(stderr=True, highlight=False)
stdout = Console(highlight=False)

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


class RichReporter(Reporter):
    """Progress bars on stderr (nothing with ``quiet``): a fit's steps, a sweep's stacks."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.bars: Progress | None = None

    @contextlib.contextmanager
    def fit(self, total: int, metric: str, budget: float | None = None) -> Iterator[Any]:
        if self.quiet:
            yield None
            return
        # With a time budget the bar measures the time spent; the ETA is the measured step
        # rate's, or the budget's end where that comes first.
        columns = [TextColumn("[bold]fit"), BarColumn(), TextColumn("{task.fields[done]}"),
                   TextColumn("{task.fields[eta]}"), TextColumn("{task.fields[status]}")]
        with Progress(*columns, console=stderr, transient=False) as progress:
            task = progress.add_task("fit", total=budget or total, status="", done="", eta="")

            def on_eval(row: dict[str, float]) -> None:
                step, spent = int(row["step"]), row["time"]
                left = (total - step) * spent / step if step and spent > 0 else math.inf
                if budget:
                    left = min(left, max(budget - spent, 0.0))
                progress.update(task, completed=spent if budget else step,
                                done=f"step {step}" if budget else f"{step}/{total}",
                                eta=f"eta {_duration(left)}")
                status = f"loss {row['train_loss']:.3g}"
                for role in ("train", "test"):
                    value = row.get(f"{role}_{metric}")
                    if value is not None:
                        status += f"  {role} {fmt(value)}{' dB' if metric == 'psnr' else ''}"
                progress.update(task, status=status)

            yield on_eval

    def group(self, label: str, steps: int) -> Any:
        if self.quiet:
            return None
        if self.bars is None:  # started on the first stack, after planning errors had their say
            self.bars = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeRemainingColumn(), console=stderr, transient=False)
            self.bars.start()
        bars, task = self.bars, self.bars.add_task(label, total=steps)
        return lambda step: bars.update(task, completed=step)

    def note(self, text: str) -> None:
        stderr.print(f"nfit: note: {text}", markup=False, emoji=False, soft_wrap=True)

    def study(self, study: Any) -> None:
        if not self.quiet:
            last = study.curve[-1]
            stderr.print(f"{study.name}: kernel {study.kernel_seconds:.1f} s, test PSNR predicted "
                         f"{last['pred_test_psnr']:.2f} dB, measured {last['test_psnr']:.2f} dB")

    def close(self) -> None:
        if self.bars is not None:
            self.bars.stop()


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "-:--:--"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.3e}"
    return str(value)


def emit(report: dict[str, Any], as_json: bool, quiet: bool, rows: list[tuple[str, Any]]) -> None:
    """Results on stdout: JSON with --json, otherwise a table (unless --quiet)."""
    if as_json:
        sys.stdout.write(json.dumps(json_safe(report), indent=2) + "\n")
        return
    if quiet:
        return
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        table.add_row(key, fmt(value))
    stdout.print(table)
