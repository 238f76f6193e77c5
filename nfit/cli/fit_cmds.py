"""`nfit image` (and the other signal kinds): fit a field to one file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from nfit.api import prepare_task
from nfit.cli.common import (
    BaseResolution,
    Batch,
    CheckpointEvery,
    ConfigFile,
    Depth,
    Device,
    Encoding,
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
    MaxMemory,
    Model,
    Omega0,
    Out,
    Precision,
    Quiet,
    Resume,
    Seed,
    Sigma,
    Steps,
    Width,
    emit,
    fit_progress,
    grid_flags,
    handle_errors,
)
from nfit.config import FitConfig, load_yaml_config, merge_config
from nfit.errors import DataError, UsageError
from nfit.io import resolve_out_dir
from nfit.job import check_out_dir_state, find_resumable, fit_job, resume_state_of
from nfit.resume import RESUME_FILE, read_resume_header
from nfit.signals import signal_kind

#: `nfit sdf`'s default bandwidth on [-1, 1]^3: sigma 10 overfits the sampled points
#: (spot, 300 steps: IoU 0.09 at sigma 8, 0.96 at 2, 0.98 at 1; bench/bench_sdf.py)
SDF_SIGMA = 2.0


def run_fit_command(kind: str, path: Path, flags: dict[str, Any], config: Path | None,
                    out: Path | None, force: bool, as_json: bool, quiet: bool, *,
                    checkpoint_every: int | None = None, resume: bool = False,
                    max_memory: str | None = None, defaults: dict[str, Any] | None = None) -> None:
    """Shared body of the fitting commands: merge options, check outputs, fit, print.

    Every fitting command gets, through ``nfit.job.fit_job``: a resumable state on
    SIGINT/SIGTERM, the memory guard and the finite-input check; the keyword options
    expose periodic checkpoints, --resume and --max-memory. defaults: the command's own
    defaults, under the YAML file and the flags.
    """
    with handle_errors():
        cfg = merge_config({**(defaults or {}), **load_yaml_config(config)}, flags)
        default = Path("runs") / Path(path).stem
        if resume and out is None:
            out = find_resumable(default)
        if out is not None and Path(out).is_dir():
            check_out_dir_state(Path(out), resume, force)
        if resume and out is not None and resume_state_of(Path(out)) is not None:
            out_dir = Path(out)
        else:
            out_dir = resolve_out_dir(out, default, force)
        fit_and_print(kind, path, cfg, out_dir, as_json, quiet,
                      checkpoint_every=checkpoint_every or 0, resume=resume,
                      max_memory=max_memory)


def fit_and_print(kind: str, path: Path, cfg: FitConfig, out_dir: Path, as_json: bool,
                  quiet: bool, **job_options: Any) -> None:
    task = prepare_task(kind, path, cfg)
    with fit_progress(cfg.steps, quiet or as_json, task.problem.metric_name) as on_eval:
        report = fit_job(kind, path, cfg, out_dir, on_eval=on_eval, task=task, **job_options)
    rows = [("output", str(out_dir)), ("signal", report["signal"].get("source"))]
    if "channels" in report:
        rows.append(("channels fitted", report["channels"]))
    for role in ("train", "val", "test"):
        for key, value in report.get(role, {}).items():
            if key != "loss":
                rows.append((f"{role} {key}", value))
    rows += [("steps", report["steps"]), ("wall time (s)", report["wall_time_s"]),
             ("steps/s", report["steps_per_s"]), ("parameters", report["parameters"]),
             ("device", report["device"]), ("precision", report["precision"])]
    report["out"] = str(out_dir)
    emit(report, as_json, quiet, rows)


def resume(
    directory: Annotated[Path, typer.Argument(
        help="output directory of an interrupted fit (holds resume.safetensors)")],
    checkpoint_every: CheckpointEvery = None, max_memory: MaxMemory = None,
    json_out: Json = False, quiet: Quiet = False,
) -> None:
    """Continue an interrupted fit of any kind from DIR/resume.safetensors (same options, seed)."""
    with handle_errors():
        state = resume_state_of(directory)
        if state is None:
            raise UsageError(f"{directory}: no unfinished fit here ({RESUME_FILE} not found)")
        job, _, _ = read_resume_header(state)
        cfg = merge_config({}, job["config"])
        source = Path(job.get("source", ""))
        if not source.is_file():
            raise DataError(f"{state}: the fit's input {source} no longer exists")
        every = job.get("checkpoint_every", 0) if checkpoint_every is None else checkpoint_every
        fit_and_print(job["kind"], source, cfg, Path(directory), json_out, quiet,
                      checkpoint_every=int(every), resume=True, max_memory=max_memory)


def image(
    path: Annotated[Path, typer.Argument(help="image file (PNG, JPEG, TIFF, ...; 8 or 16 bit)")],
    encoding: Encoding = None, sigma: Sigma = None, features: Features = None, model: Model = None,
    width: Width = None, depth: Depth = None, steps: Steps = None, lr: Lr = None, seed: Seed = None,
    device: Device = None, precision: Precision = None,
    split: Annotated[str | None, typer.Option(
        help="paper (512 crop, train [::2,::2], test [1::2,1::2]), all, or random[:F] (default paper)")] = None,
    batch: Batch = None, eval_every: EvalEvery = None, out: Out = None, config: ConfigFile = None,
    json_out: Json = False, quiet: Quiet = False, force: Force = False,
    checkpoint_every: CheckpointEvery = None, resume: Resume = False, max_memory: MaxMemory = None,
    levels: Levels = None, log2_table: Log2Table = None, features_per_level: FeaturesPerLevel = None,
    base_resolution: BaseResolution = None, finest_resolution: FinestResolution = None,
    kernel_width: KernelWidth = None, kernel_layers: KernelLayers = None,
    frequencies: Frequencies = None, omega0: Omega0 = None, kernel_form: KernelForm = None,
) -> None:
    """Fit a field to a photograph: writes recon.png, error.png, curve.*, report.json, model.safetensors."""
    flags = dict(encoding=encoding, sigma=sigma, features=features, model=model, width=width,
                 depth=depth, steps=steps, lr=lr, seed=seed, device=device, precision=precision,
                 split=split, batch=batch, eval_every=eval_every,
                 **grid_flags(levels, log2_table, features_per_level, base_resolution,
                              finest_resolution, kernel_width, kernel_layers, frequencies, omega0, kernel_form))
    signal_kind("image")
    run_fit_command("image", path, flags, config, out, force, json_out, quiet,
                    checkpoint_every=checkpoint_every, resume=resume, max_memory=max_memory)


def sdf(
    path: Annotated[Path, typer.Argument(help="mesh file (OBJ, PLY, STL, OFF, GLB/GLTF); holes and open seams are fine")],
    target: Annotated[str | None, typer.Option(help="sdf (signed distance, MSE) or occupancy (inside/outside, cross-entropy) (default sdf)")] = None,
    resolution: Annotated[int | None, typer.Option(help="marching-cubes grid per axis for recon.ply (default 256)")] = None,
    clamp: Annotated[float | None, typer.Option(help="fit the truncated distance clamp(s, -C, C) in [-1,1]^3 units; 0 = off (default 0)")] = None,
    pool: Annotated[int | None, typer.Option(help="labelled points drawn once; each step samples --batch of them (default 200000)")] = None,
    encoding: Encoding = None, sigma: Annotated[float | None, typer.Option(help="bandwidth of the encoding's frequencies on [-1,1]^3 (default 2)")] = None,
    features: Features = None, model: Model = None,
    width: Width = None, depth: Depth = None, steps: Steps = None, lr: Lr = None, seed: Seed = None,
    device: Device = None, precision: Precision = None,
    batch: Annotated[int | None, typer.Option(help="points per step, drawn from the pool (default 16384)")] = None,
    eval_every: EvalEvery = None, out: Out = None, config: ConfigFile = None,
    json_out: Json = False, quiet: Quiet = False, force: Force = False,
    checkpoint_every: CheckpointEvery = None, resume: Resume = False, max_memory: MaxMemory = None,
    levels: Levels = None, log2_table: Log2Table = None, features_per_level: FeaturesPerLevel = None,
    base_resolution: BaseResolution = None, finest_resolution: FinestResolution = None,
    kernel_width: KernelWidth = None, kernel_layers: KernelLayers = None,
    frequencies: Frequencies = None, omega0: Omega0 = None, kernel_form: KernelForm = None,
) -> None:
    """Fit a signed distance (or occupancy) field to a mesh: writes recon.ply, preview.png, curve.*, report.json, model.safetensors."""
    flags = dict(encoding=encoding, sigma=sigma, features=features, model=model, width=width,
                 depth=depth, steps=steps, lr=lr, seed=seed, device=device, precision=precision,
                 batch=batch, eval_every=eval_every, target=target, resolution=resolution,
                 clamp=clamp, pool=pool,
                 **grid_flags(levels, log2_table, features_per_level, base_resolution,
                              finest_resolution, kernel_width, kernel_layers, frequencies, omega0, kernel_form))
    signal_kind("sdf")
    run_fit_command("sdf", path, flags, config, out, force, json_out, quiet,
                    checkpoint_every=checkpoint_every, resume=resume, max_memory=max_memory,
                    defaults={"sigma": SDF_SIGMA})
