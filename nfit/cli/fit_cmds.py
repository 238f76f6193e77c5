"""`nfit image` (and the other signal kinds): fit a field to one file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from nfit.api import fit_file, prepare_task
from nfit.cli.common import (Batch, ConfigFile, Depth, Device, Encoding, EvalEvery, Features,
                             Force, Json, Lr, Model, Out, Precision, Quiet, Seed, Sigma, Steps,
                             Width, emit, fit_progress, handle_errors)
from nfit.config import load_yaml_config, merge_config
from nfit.io import resolve_out_dir
from nfit.signals import signal_kind

#: `nfit sdf`'s default bandwidth on [-1, 1]^3: sigma 10 overfits the sampled points
#: (spot, 300 steps: IoU 0.09 at sigma 8, 0.96 at 2, 0.98 at 1; bench/bench_sdf.py)
SDF_SIGMA = 2.0


def run_fit_command(kind: str, path: Path, flags: dict[str, Any], config: Path | None,
                    out: Path | None, force: bool, as_json: bool, quiet: bool,
                    defaults: dict[str, Any] | None = None) -> None:
    """Shared body of the fitting commands: merge options, check outputs, fit, print.

    defaults: the command's own defaults, under the YAML file and the flags."""
    with handle_errors():
        cfg = merge_config({**(defaults or {}), **load_yaml_config(config)}, flags)
        out_dir = resolve_out_dir(out, Path("runs") / Path(path).stem, force)
        task = prepare_task(kind, path, cfg)
        with fit_progress(cfg.steps, quiet or as_json, task.problem.metric_name) as on_eval:
            report = fit_file(kind, path, cfg, out_dir, on_eval=on_eval, task=task)
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


def image(
    path: Annotated[Path, typer.Argument(help="image file (PNG, JPEG, TIFF, ...; 8 or 16 bit)")],
    encoding: Encoding = None, sigma: Sigma = None, features: Features = None, model: Model = None,
    width: Width = None, depth: Depth = None, steps: Steps = None, lr: Lr = None, seed: Seed = None,
    device: Device = None, precision: Precision = None,
    split: Annotated[str | None, typer.Option(help="paper (512 crop, train [::2,::2], test [1::2,1::2]), all, or random[:F] (default paper)")] = None,
    batch: Batch = None, eval_every: EvalEvery = None, out: Out = None, config: ConfigFile = None,
    json_out: Json = False, quiet: Quiet = False, force: Force = False,
) -> None:
    """Fit a field to a photograph: writes recon.png, error.png, curve.*, report.json, model.safetensors."""
    flags = dict(encoding=encoding, sigma=sigma, features=features, model=model, width=width,
                 depth=depth, steps=steps, lr=lr, seed=seed, device=device, precision=precision,
                 split=split, batch=batch, eval_every=eval_every)
    signal_kind("image")
    run_fit_command("image", path, flags, config, out, force, json_out, quiet)


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
) -> None:
    """Fit a signed distance (or occupancy) field to a mesh: writes recon.ply, preview.png, curve.*, report.json, model.safetensors."""
    flags = dict(encoding=encoding, sigma=sigma, features=features, model=model, width=width,
                 depth=depth, steps=steps, lr=lr, seed=seed, device=device, precision=precision,
                 batch=batch, eval_every=eval_every, target=target, resolution=resolution,
                 clamp=clamp, pool=pool)
    signal_kind("sdf")
    run_fit_command("sdf", path, flags, config, out, force, json_out, quiet,
                    defaults={"sigma": SDF_SIGMA})
