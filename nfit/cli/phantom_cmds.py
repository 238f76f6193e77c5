"""`nfit phantom`: test phantoms for the inverse problems, written as 16-bit PNGs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from nfit.cli.common import Force, Json, Out, Quiet, emit, handle_errors
from nfit.io import resolve_out_dir


def phantom(
    name: Annotated[str, typer.Argument(help="phantom family: shepp (the paper's perturbed modified Shepp-Logan)")],
    count: Annotated[int, typer.Option(help="how many phantoms")] = 8,
    size: Annotated[int, typer.Option(help="pixels per side")] = 512,
    seed: Annotated[int, typer.Option(help="seed of the perturbations")] = 0,
    out: Out = None, json_out: Json = False, quiet: Quiet = False, force: Force = False,
) -> None:
    """Write COUNT phantoms as DIR/shepp-000.png ... (16-bit grayscale) and DIR/phantoms.json."""
    from nfit.errors import UsageError
    from nfit.formats.images import write_image
    from nfit.io import atomic_write_json
    from nfit.phantoms import PERTURBATION, PHANTOMS, perturbed_shepp_logan

    with handle_errors():
        if name not in PHANTOMS:
            raise UsageError(f"unknown phantom {name!r}; choose {', '.join(PHANTOMS)}")
        images = perturbed_shepp_logan(count, size, seed)
        out_dir = resolve_out_dir(out, Path("runs") / "phantoms", force)
        out_dir.mkdir(parents=True, exist_ok=True)
        files = []
        for i, image in enumerate(images):
            files.append(f"{name}-{i:03d}.png")
            write_image(out_dir / files[-1], image, 16)
        report: dict[str, Any] = {"phantom": name, "count": count, "size": size, "seed": seed,
                                  "perturbation": f"N(0, 1) x {PERTURBATION:g} on every ellipse parameter",
                                  "files": files, "out": str(out_dir)}
        atomic_write_json(out_dir / "phantoms.json", report)
        emit(report, json_out, quiet, [("output", str(out_dir)), ("phantoms", count), ("size", size)])
