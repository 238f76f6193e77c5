"""`nfit sweep KIND PATH`: choose encoding and sigma on held-out data, as one batched ensemble."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from nfit.api import prepare_task
from nfit.cli.common import (
    BaseResolution,
    Batch,
    ConfigFile,
    Depth,
    Device,
    EvalEvery,
    Features,
    FeaturesPerLevel,
    FinestResolution,
    Force,
    Frequencies,
    Json,
    KernelForm,
    KernelLayers,
    KernelWidth,
    Levels,
    Log2Table,
    Lr,
    Model,
    Omega0,
    Out,
    Precision,
    Quiet,
    Seed,
    Steps,
    Width,
    fmt,
    grid_flags,
    handle_errors,
    stderr,
    stdout,
)
from nfit.config import load_yaml_config, merge_config
from nfit.errors import UsageError
from nfit.io import json_safe, resolve_out_dir
from nfit.signals import signal_kind
from nfit.sweep import (
    AUTO_ROUNDS,
    SweepResult,
    parse_encodings,
    parse_sigmas,
    run_sweep,
    write_sweep,
)

EncodingList = Annotated[str, typer.Option(
    "--encoding", help="comma-separated encodings, e.g. gauss,posenc,laplace")]
SigmaList = Annotated[str, typer.Option(
    "--sigma", help="list 1,3,10,30; range START:END:Nlog (2:64:8log) or START:END:Nlin; "
    "or auto (Nyquist guess, then refinement)")]
Seeds = Annotated[int, typer.Option(help="seeds per configuration (--seed, --seed+1, ...)")]
Rounds = Annotated[int, typer.Option(
    help="refinement rounds of --sigma auto after its coarse grid")]
MemoryGiB = Annotated[float | None, typer.Option(
    "--memory", help="GiB the ensembles may use (default: 60% of free memory)")]
SweepSplit = Annotated[str | None, typer.Option(
    "--split", help="paper (validation [::2,1::2]) or random[:F] (default paper)")]
# Mesh options, as `nfit sdf` has them (other kinds ignore them).
Target = Annotated[str | None, typer.Option(
    help="sdf: sdf (signed distance) or occupancy (default sdf); both select on IoU")]
Pool = Annotated[int | None, typer.Option(
    help="sdf: labelled points drawn once (default 200000)")]
Resolution = Annotated[int | None, typer.Option(
    help="sdf: marching-cubes grid per axis of the chosen model's recon.ply (default 256)")]


@contextlib.contextmanager
def group_progress(quiet: bool) -> Iterator[Any]:
    """One rich progress bar per ensemble group on stderr; yields run_sweep's ``on_group``."""
    if quiet:
        yield None
        return
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeRemainingColumn()]
    # Started on the first group only, so errors found while planning print one clean line.
    progress = Progress(*columns, console=stderr, transient=False)
    started = False

    def on_group(label: str, steps: int):
        nonlocal started
        if not started:
            progress.start()
            started = True
        task = progress.add_task(label, total=steps)
        return lambda step: progress.update(task, completed=step)

    try:
        yield on_group
    finally:
        if started:
            progress.stop()


def results_table(result: SweepResult) -> Table:
    metric = result.metric
    unit = " (dB)" if metric == "psnr" else ""
    table = Table(title=f"sweep: {metric}{unit}, chosen on validation")
    for column in ("", "encoding", "sigma", "seeds", f"train {metric}", f"val {metric}",
                   f"test {metric}"):
        table.add_column(column, justify="right" if column not in ("", "encoding") else "left")
    def cell(row: dict[str, Any], role: str) -> str:
        value, spread = row[f"{role}_{metric}"], row[f"{role}_{metric}_std"]
        return fmt(value) + (f" ± {spread:.2g}" if row["seeds"] > 1 else "")

    for row in result.configs:
        mark = "*" if row["best"] else ""
        sigma = "-" if row["sigma"] is None else f"{row['sigma']:.4g}"
        table.add_row(mark, row["encoding"], sigma, str(row["seeds"] - row["diverged"]),
                      cell(row, "train"), cell(row, "val"), cell(row, "test"),
                      style="bold" if row["best"] else None)
    return table


def sweep(
    kind: Annotated[str, typer.Argument(help="signal kind: image, volume or sdf")],
    path: Annotated[Path, typer.Argument(help="the signal file")],
    encoding: EncodingList = "gauss", sigma: SigmaList = "auto", seeds: Seeds = 1,
    rounds: Rounds = AUTO_ROUNDS, memory: MemoryGiB = None,
    features: Features = None, width: Width = None, depth: Depth = None, steps: Steps = None,
    lr: Lr = None, seed: Seed = None, device: Device = None, precision: Precision = None,
    split: SweepSplit = None, model: Model = None,
    batch: Batch = None, eval_every: EvalEvery = None, out: Out = None, config: ConfigFile = None,
    json_out: Json = False, quiet: Quiet = False, force: Force = False,
    target: Target = None, pool: Pool = None, resolution: Resolution = None,
    levels: Levels = None, log2_table: Log2Table = None, features_per_level: FeaturesPerLevel = None,
    base_resolution: BaseResolution = None, finest_resolution: FinestResolution = None,
    kernel_width: KernelWidth = None, kernel_layers: KernelLayers = None,
    frequencies: Frequencies = None, omega0: Omega0 = None, kernel_form: KernelForm = None,
) -> None:
    """Train every (encoding, sigma, seed) at once as a batched ensemble, choose on validation.

    Writes sweep.csv, sweep.json, sweep.png and the chosen model's outputs (model.safetensors,
    reconstruction, report.json) into --out.
    """
    with handle_errors():
        signal_kind(kind)
        encodings = parse_encodings(encoding)
        sigma_spec = parse_sigmas(sigma)
        if memory is not None and not memory > 0:
            raise UsageError(f"--memory must be a positive number of GiB, got {memory}")
        flags = dict(features=features, width=width, depth=depth, model=model,
                     steps=steps, lr=lr, seed=seed, device=device, precision=precision,
                     split=split, batch=batch, eval_every=eval_every, target=target,
                     pool=pool, resolution=resolution,
                     **grid_flags(levels, log2_table, features_per_level, base_resolution,
                                  finest_resolution, kernel_width, kernel_layers, frequencies,
                                  omega0, kernel_form))
        file_values = load_yaml_config(config)
        # Each encoding's members get the settings `nfit KIND --encoding E` would give them
        # under the same flags (a grid's small MLP and lr), so one shared base is not forced
        # on encodings whose defaults differ.
        per_encoding = {e: merge_config(file_values, {**flags, "encoding": e}) for e in encodings}
        cfg = per_encoding[encodings[0]]
        out_dir = resolve_out_dir(out, Path("runs") / f"{Path(path).stem}-sweep", force)
        task = prepare_task(kind, path, cfg)

        def note(text: str) -> None:
            stderr.print(f"nfit: note: {text}", markup=False, emoji=False, soft_wrap=True)

        with group_progress(quiet or json_out) as on_group:
            result = run_sweep(task, cfg, encodings, sigma_spec, seeds, rounds=rounds,
                               memory=int(memory * 2**30) if memory is not None else None,
                               on_group=on_group, on_note=note, configs=per_encoding)
        report = write_sweep(kind, task, cfg, result, out_dir)
        if json_out:
            sys.stdout.write(json.dumps(json_safe(report), indent=2) + "\n")
            return
        if quiet:
            return
        stdout.print(results_table(result))
        chosen = report["chosen"]
        metric = result.metric
        sigma_text = "-" if chosen["sigma"] is None else f"{chosen['sigma']:g}"
        stdout.print(f"chosen: {chosen['encoding']} sigma={sigma_text}  "
                     f"val {metric} {fmt(chosen[f'val_{metric}'])}  "
                     f"test {metric} {fmt(chosen[f'test_{metric}'])} "
                     "(reported, not used to choose)", soft_wrap=True)
        groups = ", ".join(f"{g['members']}x{g['feature_dim']}f" +
                           (" sequential" if g.get("mode") == "sequential" else "")
                           for g in result.groups)
        stdout.print(f"groups: {len(result.groups)} ({groups}); wall {result.wall_time:.3g} s on "
                     f"{result.device} ({result.precision}); output {out_dir}", soft_wrap=True)
