"""`nfit spectral-bias`: the 1D experiment of the paper's Sec. 5 through the kernel lens."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from nfit.cli.common import Force, Json, Out, Quiet, emit, handle_errors


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

    with handle_errors():
        report = spectral_bias_file(p, out, force=force, alpha=alpha, n=n, width=width, depth=depth,
                                    steps=steps, record_every=record_every, seed=seed)
        rows: list[tuple[str, Any]] = [("output", report["out"])]
        for r in report["results"]:
            rows.append((f"p={r['p']} train / test MSE", f"{r['train_mse']:.3g} / {r['test_mse']:.3g}"))
        emit(report, json_out, quiet, rows)
