"""`nfit volume`: fit a field to a 3D volume (NIfTI, .npy, TIFF stack)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nfit.cli.common import (
    BaseResolution,
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
    grid_flags,
)
from nfit.cli.fit_cmds import run_fit_command
from nfit.signals.volume import VOLUME_BATCH


def volume(
    path: Annotated[Path, typer.Argument(help="volume file: .nii/.nii.gz (NIfTI), .npy, or a multi-page .tif stack")],
    encoding: Encoding = None, sigma: Sigma = None, features: Features = None, model: Model = None,
    width: Width = None, depth: Depth = None, steps: Steps = None, lr: Lr = None, seed: Seed = None,
    device: Device = None, precision: Precision = None,
    split: Annotated[str | None, typer.Option(help="paper (train [::2,::2,::2], test [1::2,1::2,1::2]), all, or random[:F] (default paper)")] = None,
    batch: Annotated[int | None, typer.Option(help=f"random voxels per step; 0 = {VOLUME_BATCH} (default 0)")] = None,
    eval_every: EvalEvery = None, out: Out = None, config: ConfigFile = None,
    json_out: Json = False, quiet: Quiet = False, force: Force = False,
    checkpoint_every: CheckpointEvery = None, resume: Resume = False, max_memory: MaxMemory = None,
    levels: Levels = None, log2_table: Log2Table = None, features_per_level: FeaturesPerLevel = None,
    base_resolution: BaseResolution = None, finest_resolution: FinestResolution = None,
    kernel_width: KernelWidth = None, kernel_layers: KernelLayers = None,
    frequencies: Frequencies = None, omega0: Omega0 = None, kernel_form: KernelForm = None,
) -> None:
    """Fit a field to a volume: writes recon.nii.gz/.npy/.tif, slices.png, curve.*, report.json, model.safetensors."""
    flags = dict(encoding=encoding, sigma=sigma, features=features, model=model, width=width,
                 depth=depth, steps=steps, lr=lr, seed=seed, device=device, precision=precision,
                 split=split, batch=batch, eval_every=eval_every,
                 **grid_flags(levels, log2_table, features_per_level, base_resolution,
                              finest_resolution, kernel_width, kernel_layers, frequencies, omega0, kernel_form))
    run_fit_command("volume", path, flags, config, out, force, json_out, quiet,
                    checkpoint_every=checkpoint_every, resume=resume, max_memory=max_memory)
