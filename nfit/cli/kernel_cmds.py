"""`nfit kernel` and `nfit spectral-bias`: the tangent-kernel lens on a field."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any

import typer

from nfit.cli.common import (
    BaseResolution,
    ConfigFile,
    Depth,
    Device,
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
    Model,
    Omega0,
    Out,
    Quiet,
    Seed,
    Sigma,
    Width,
    emit,
    grid_flags,
    handle_errors,
    stderr,
)
from nfit.config import load_yaml_config, merge_config
from nfit.errors import UsageError
from nfit.io import resolve_out_dir

COMPARE_DEFAULT = ("none", "basic", "posenc", "gauss")


def _encoding_list(text: str | None, compare: bool) -> list[str]:
    names = [n.strip() for n in (text or "gauss").split(",") if n.strip()]
    if not names:
        raise UsageError("--encoding needs at least one name")
    if len(set(names)) != len(names):
        raise UsageError(f"--encoding lists a name twice: {text}")
    if compare and len(names) == 1:
        names = [n for n in COMPARE_DEFAULT if n != names[0]] + names
    return names


def _lr(text: str) -> float | None:
    if text.strip().lower() == "auto":
        return None
    try:
        return float(text)
    except ValueError:
        raise UsageError(f"--lr must be a number or 'auto', got {text!r}") from None


def kernel(
    kind: Annotated[str, typer.Argument(help="signal kind: image (and every kind in the registry)")],
    path: Annotated[Path, typer.Argument(help="the signal file")],
    encoding: Annotated[str | None, typer.Option(help="encoding, or a comma-separated list to compare (default gauss)")] = None,
    compare: Annotated[bool, typer.Option("--compare", help="compare encodings: a list given to --encoding, or none,basic,posenc and the one given")] = False,
    sigma: Sigma = None, features: Features = None, width: Width = None, depth: Depth = None,
    points: Annotated[int, typer.Option(help="training points the kernel is computed on")] = 2048,
    test_points: Annotated[int, typer.Option("--test-points", help="held-out points for test PSNR")] = 1024,
    steps: Annotated[int, typer.Option(help="plain gradient-descent steps of the measured run")] = 500,
    lr: Annotated[str, typer.Option(help="gradient-descent step, or auto: eta' lam_max = 1 (half the stable step)")] = "auto",
    eval_every: Annotated[int, typer.Option("--eval-every", help="steps between points of the curves")] = 10,
    ridge: Annotated[float, typer.Option(help="ridge of the generalization measure, relative to mean diag K")] = 1e-3,
    split: Annotated[str | None, typer.Option(help="the signal's split (default paper)")] = None,
    seed: Seed = None, device: Device = None, out: Out = None, config: ConfigFile = None,
    json_out: Json = False, quiet: Quiet = False, force: Force = False, model: Model = None,
    levels: Levels = None, log2_table: Log2Table = None, features_per_level: FeaturesPerLevel = None,
    base_resolution: BaseResolution = None, finest_resolution: FinestResolution = None,
    kernel_width: KernelWidth = None, kernel_layers: KernelLayers = None,
    frequencies: Frequencies = None, omega0: Omega0 = None, kernel_form: KernelForm = None,
) -> None:
    """Tangent kernel (NTK; GTK for grid encodings) of a field on a signal: spectrum.csv/png,
    kernel_row.png, prediction.png (predicted vs measured gradient descent), report.json."""
    from nfit.analysis.run import kernel_file
    from nfit.analysis.study import KernelOptions
    from nfit.signals import signal_kind

    with handle_errors():
        signal_kind(kind)
        flags: dict[str, Any] = dict(
            sigma=sigma, features=features, width=width, depth=depth, seed=seed, device=device,
            split=split, model=model,
            **grid_flags(levels, log2_table, features_per_level, base_resolution,
                         finest_resolution, kernel_width, kernel_layers, frequencies, omega0, kernel_form))
        base = merge_config(load_yaml_config(config), flags)
        # a config file or a model (--model sum implies densegrid) may choose the encoding
        names = _encoding_list(encoding or (base.encoding if config or model else None), compare)
        cfgs = [dataclasses.replace(base, encoding=n).validate() for n in names]
        opts = KernelOptions(points=points, test_points=test_points, steps=steps, lr=_lr(lr),
                             eval_every=eval_every, ridge=ridge).validate()
        out_dir = resolve_out_dir(out, Path("runs") / f"{Path(path).stem}-kernel", force)

        def progress(study) -> None:
            if not (quiet or json_out):
                last = study.curve[-1]
                stderr.print(f"{study.name}: kernel {study.kernel_seconds:.1f} s, "
                             f"test PSNR predicted {last['pred_test_psnr']:.2f} dB, "
                             f"measured {last['test_psnr']:.2f} dB")

        report = kernel_file(kind, path, cfgs, opts, out_dir, on_encoding=progress)
        rows: list[tuple[str, Any]] = [("output", str(out_dir)), ("points", report["points"])]
        for name, s in report["encodings"].items():
            rows += [(f"{name} delta", s["generalization_delta"]),
                     (f"{name} test PSNR pred/meas",
                      f"{s['predicted']['test_psnr']:.2f} / {s['measured']['test_psnr']:.2f}"),
                     (f"{name} kernel drift", s["kernel_drift"]),
                     (f"{name} regions before/after",
                      f"{s['activation_regions']['before']} / {s['activation_regions']['after']}")]
        report["out"] = str(out_dir)
        emit(report, json_out, quiet, rows)


def spectral_bias(
    p: Annotated[str, typer.Option("--p", help="power-law exponents of the mapping a_j = j^-p, comma-separated; inf = basic")] = "0,0.5,1,1.5,2,inf",
    alpha: Annotated[float, typer.Option(help="target spectrum 1/f^alpha")] = 1.0,
    n: Annotated[int, typer.Option("--n", help="points on [0, 1); train on even, test on odd")] = 64,
    width: Annotated[int, typer.Option(help="hidden width of the 4-layer MLP")] = 256,
    depth: Annotated[int, typer.Option(help="linear layers")] = 4,
    steps: Annotated[int, typer.Option(help="gradient-descent steps (lr: half the stable step)")] = 2000,
    record_every: Annotated[int, typer.Option("--record-every", help="steps between residual spectra")] = 20,
    seed: Annotated[int, typer.Option(help="seed of the noise and the weights")] = 0,
    out: Out = None, json_out: Json = False, quiet: Quiet = False, force: Force = False,
) -> None:
    """The 1D spectral-bias experiment (Tancik et al. 2020, Fig. 3): spectrum.csv/png,
    bands.png (residual per frequency over steps), errors.png, report.json."""
    from nfit.analysis.run import spectral_bias_file
    from nfit.analysis.spectral_bias import parse_p_list

    with handle_errors():
        ps = parse_p_list(p)
        out_dir = resolve_out_dir(out, Path("runs") / "spectral-bias", force)
        report = spectral_bias_file(ps, out_dir, alpha=alpha, n=n, width=width, depth=depth,
                                    steps=steps, record_every=record_every, seed=seed)
        rows: list[tuple[str, Any]] = [("output", str(out_dir))]
        for r in report["results"]:
            rows.append((f"p={r['p']} train / test MSE", f"{r['train_mse']:.3g} / {r['test_mse']:.3g}"))
        report["out"] = str(out_dir)
        emit(report, json_out, quiet, rows)
