"""Pieces every command shares: option types, error handling, progress, printing results."""

from __future__ import annotations

import contextlib
import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from nfit.errors import NfitError

stderr = Console(stderr=True, highlight=False)
stdout = Console(highlight=False)

# Shared option types: None defaults mean "not given", so YAML values can stand under them.
Encoding = Annotated[str | None, typer.Option(help="input encoding: none, basic, posenc, gauss, laplace, uniform, loguniform (see `nfit encodings`)")]
Sigma = Annotated[float | None, typer.Option(help="bandwidth: scale of the encoding's frequencies (default 10)")]
Features = Annotated[int | None, typer.Option(help="number of Fourier frequencies m (default 256)")]
Model = Annotated[str | None, typer.Option(help="network: mlp (default mlp)")]
Width = Annotated[int | None, typer.Option(help="hidden width (default 256)")]
Depth = Annotated[int | None, typer.Option(help="number of linear layers (default 4)")]
Steps = Annotated[int | None, typer.Option(help="optimisation steps (default 2000)")]
Lr = Annotated[float | None, typer.Option(help="Adam learning rate (default 1e-3)")]
Seed = Annotated[int | None, typer.Option(help="seed for weights, frequencies and sampling (default 0)")]
Device = Annotated[str | None, typer.Option(help="auto, cpu, cuda or mps (default auto)")]
Precision = Annotated[str | None, typer.Option(help="auto, fp32, bf16 or tf32 (default auto)")]
Batch = Annotated[int | None, typer.Option(help="points per step; 0 = full batch (default 0)")]
EvalEvery = Annotated[int | None, typer.Option("--eval-every", help="steps between held-out evaluations (default 25)")]
Out = Annotated[Path | None, typer.Option(help="output directory (default runs/<input name>)")]
ConfigFile = Annotated[Path | None, typer.Option("--config", help="YAML file of options; flags override it")]
Json = Annotated[bool, typer.Option("--json", help="print the report as JSON on stdout")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar or table")]
Force = Annotated[bool, typer.Option("--force", help="overwrite an existing --out directory")]


@contextlib.contextmanager
def handle_errors() -> Iterator[None]:
    """Turn the project's errors into one line on stderr and their exit code."""
    try:
        yield
    except NfitError as exc:
        stderr.print(f"nfit: error: {exc}", markup=False, emoji=False, soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        stderr.print("nfit: interrupted", markup=False)
        raise typer.Exit(130) from None
    except MemoryError:
        stderr.print("nfit: error: out of memory; try a smaller --batch or fewer points", markup=False)
        raise typer.Exit(1) from None


@contextlib.contextmanager
def fit_progress(total: int, quiet: bool, metric: str = "psnr") -> Iterator[Any]:
    """A rich progress bar on stderr; yields the ``on_eval`` callback for ``fit``."""
    if quiet:
        yield None
        return
    columns = [TextColumn("[bold]fit"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
               TextColumn("{task.fields[status]}")]
    with Progress(*columns, console=stderr, transient=False) as progress:
        task = progress.add_task("fit", total=total, status="")

        def on_eval(row: dict[str, float]) -> None:
            status = f"loss {row['train_loss']:.3g}"
            for role in ("train", "test"):
                value = row.get(f"{role}_{metric}")
                if value is not None:
                    status += f"  {role} {fmt(value)}{' dB' if metric == 'psnr' else ''}"
            progress.update(task, completed=int(row["step"]), status=status)

        yield on_eval


def fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.3e}"
    return str(value)


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    return obj


def emit(report: dict[str, Any], as_json: bool, quiet: bool, rows: list[tuple[str, Any]]) -> None:
    """Results on stdout: JSON with --json, otherwise a table (unless --quiet)."""
    if as_json:
        sys.stdout.write(json.dumps(_json_safe(report), indent=2) + "\n")
        return
    if quiet:
        return
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        table.add_row(key, fmt(value))
    stdout.print(table)
