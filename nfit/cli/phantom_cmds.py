"""`nfit phantom`: test phantoms for the inverse problems, written as 16-bit PNGs."""

from __future__ import annotations

from typing import Annotated

import typer

from nfit.cli.common import Force, Json, Out, Quiet, emit, handle_errors


def phantom(
    name: Annotated[str, typer.Argument(help="phantom family: shepp (the paper's perturbed modified Shepp-Logan)")],
    count: Annotated[int | None, typer.Option(help="how many phantoms (default 8)")] = None,
    size: Annotated[int, typer.Option(help="pixels per side")] = 512,
    seed: Annotated[int | None, typer.Option(help="seed of the perturbations (default 0)")] = None,
    paper: Annotated[bool, typer.Option("--paper", help="the paper's own 8 test phantoms of Table 1 "
                                        "(draws 8-15 of JAX's PRNGKey(10)); also writes them exactly "
                                        "as phantoms.npy (float32)")] = False,
    out: Out = None, json_out: Json = False, quiet: Quiet = False, force: Force = False,
) -> None:
    """Write COUNT phantoms as DIR/shepp-000.png ... (16-bit grayscale) and DIR/phantoms.json."""
    with handle_errors():
        from nfit.phantoms import write_phantoms

        report = write_phantoms(name, count=count, size=size, seed=seed, paper=paper, out=out, force=force)
        emit(report, json_out, quiet, [("output", report["out"]), ("phantoms", report["count"]),
                                       ("size", report["size"])])
