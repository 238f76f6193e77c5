"""Pieces every command shares: option types, error handling, progress, printing results."""

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

stderr = Console(stderr=True, highlight=False)
stdout = Console(highlight=False)

# Shared option types: None defaults mean "not given", so YAML values can stand under them.
Encoding = Annotated[str | None, typer.Option(
    help="input encoding: none, basic, posenc, gauss, laplace, uniform, loguniform, hashgrid, densegrid, "
         "mulfagrid (see `nfit encodings`)")]
Sigma = Annotated[float | None, typer.Option(help="bandwidth: scale of the encoding's frequencies (default 10)")]
Features = Annotated[int | None, typer.Option(help="number of Fourier frequencies m (default 256)")]
Model = Annotated[str | None, typer.Option(help="network: mlp, siren or sum (default mlp; siren implies --encoding none; sum: the grid's features summed, a plain interpolated grid, implies --encoding densegrid)")]
Width = Annotated[int | None, typer.Option(help="hidden width (default 256; 64 after a grid encoding)")]
Depth = Annotated[int | None, typer.Option(help="number of linear layers (default 4; 3 after a grid encoding, 5 for siren)")]
Steps = Annotated[int | None, typer.Option(help="optimisation steps (default 2000)")]
Lr = Annotated[float | None, typer.Option(help="Adam learning rate (default 1e-3; 1e-2 for grid encodings, 1e-4 for siren)")]
Seed = Annotated[int | None, typer.Option(help="seed for weights, frequencies and sampling (default 0)")]
Device = Annotated[str | None, typer.Option(help="auto, cpu, cuda or mps (default auto)")]
Precision = Annotated[str | None, typer.Option(help="auto, fp32, bf16 or tf32 (default auto)")]
Batch = Annotated[int | None, typer.Option(help="points per step; 0 = full batch (default 0)")]
EvalEvery = Annotated[int | None, typer.Option("--eval-every", help="steps between held-out evaluations (default 25)")]
# Grid encodings (hashgrid, densegrid, mulfagrid) and SIREN; they travel in FitConfig.extra.
Levels = Annotated[int | None, typer.Option(help="grid levels L (hashgrid 16, densegrid/mulfagrid 8)")]
Log2Table = Annotated[int | None, typer.Option("--log2-table", help="hash table size T = 2^N per level (hashgrid 19)")]
FeaturesPerLevel = Annotated[int | None, typer.Option("--features-per-level", help="grid features F per level (default 2)")]
BaseResolution = Annotated[int | None, typer.Option("--base-resolution", help="coarsest grid resolution N_min (default 16)")]
FinestResolution = Annotated[int | None, typer.Option("--finest-resolution", help="finest grid resolution N_max (hashgrid 512, densegrid/mulfagrid 256)")]
KernelWidth = Annotated[int | None, typer.Option("--kernel-width", help="mulfagrid: hidden width of the kernel's filter network (default 16)")]
KernelLayers = Annotated[int | None, typer.Option("--kernel-layers", help="mulfagrid: multiplicative filter layers (default 2)")]
Frequencies = Annotated[int | None, typer.Option("--frequencies", help="mulfagrid: Fourier octaves fed to the kernel (default 4)")]
KernelForm = Annotated[str | None, typer.Option("--kernel-form", help="mulfagrid: offset (default: the kernel reads the offset to each vertex and scales the d-linear weight) or paper (Eqs. 6-8 as published: filters at the vertices, weights normalised over the cell)")]
Omega0 = Annotated[float | None, typer.Option("--omega0", help="siren: frequency factor omega0 of the sine layers (default 30)")]


def grid_flags(levels: int | None, log2_table: int | None, features_per_level: int | None,
               base_resolution: int | None, finest_resolution: int | None,
               kernel_width: int | None, kernel_layers: int | None, frequencies: int | None,
               omega0: float | None, kernel_form: str | None) -> dict[str, Any]:
    """The grid/SIREN options as flags for ``merge_config`` (None = not given)."""
    return dict(levels=levels, log2_table=log2_table, features_per_level=features_per_level,
                base_resolution=base_resolution, finest_resolution=finest_resolution,
                kernel_width=kernel_width, kernel_layers=kernel_layers, frequencies=frequencies,
                omega0=omega0, kernel_form=kernel_form)


Out = Annotated[Path | None, typer.Option(help="output directory (default runs/<input name>)")]
ConfigFile = Annotated[Path | None, typer.Option("--config", help="YAML file of options; flags override it")]
Json = Annotated[bool, typer.Option("--json", help="print the report as JSON on stdout")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar or table")]
Force = Annotated[bool, typer.Option("--force", help="overwrite an existing --out directory")]
CheckpointEvery = Annotated[int | None, typer.Option("--checkpoint-every", help="save a resumable state every S steps, so a killed job loses at most S steps (default 0: only on SIGINT/SIGTERM)")]
Resume = Annotated[bool, typer.Option("--resume", help="continue the unfinished fit in --out (or the default directory) if there is one")]
MaxMemory = Annotated[str | None, typer.Option("--max-memory", help="refuse fits estimated above this size, e.g. 16G (default: the memory available; 'off' disables the guard)")]


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
