"""`nfit phantom`: test phantoms for the inverse problems, written as 16-bit PNGs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from nfit.cli.common import Force, Json, Out, Quiet, emit, handle_errors
from nfit.io import resolve_out_dir


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
    import numpy as np

    from nfit.errors import UsageError
    from nfit.formats.images import write_image
    from nfit.io import atomic_path, atomic_write_json
    from nfit.phantoms import (
        PAPER_KEY,
        PAPER_TEST_DRAWS,
        PERTURBATION,
        PHANTOMS,
        paper_shepp_logan,
        perturbed_shepp_logan,
    )

    with handle_errors():
        if name not in PHANTOMS:
            raise UsageError(f"unknown phantom {name!r}; choose {', '.join(PHANTOMS)}")
        if paper and (count is not None or seed is not None):
            raise UsageError("--paper writes the paper's 8 test phantoms; drop --count and --seed")
        if size > 16_384:
            raise UsageError(f"--size {size} is more than 16,384 pixels per side")
        if paper:
            if size < 2:
                raise UsageError(f"need --size >= 2, got {size}")
            images = paper_shepp_logan(size)
        else:
            images = perturbed_shepp_logan(8 if count is None else count, size, 0 if seed is None else seed)
        out_dir = resolve_out_dir(out, Path("runs") / "phantoms", force)
        out_dir.mkdir(parents=True, exist_ok=True)
        files = []
        for i, image in enumerate(images):
            files.append(f"{name}-{i:03d}.png")
            write_image(out_dir / files[-1], image, 16)
        report: dict[str, Any] = {"phantom": name, "count": len(images), "size": size,
                                  "perturbation": f"N(0, 1) x {PERTURBATION:g} on every ellipse parameter",
                                  "files": files, "out": str(out_dir)}
        if paper:
            with atomic_path(out_dir / "phantoms.npy") as tmp:
                np.save(tmp, images)
            files.append("phantoms.npy")
            report["source"] = (f"the paper's test phantoms (Experiments/2d_CT): draws {PAPER_TEST_DRAWS.start}-"
                                f"{PAPER_TEST_DRAWS.stop - 1} of JAX's PRNGKey({PAPER_KEY}), float32; the "
                                "PNGs round them to 16 bits, phantoms.npy holds them exactly")
        else:
            report["seed"] = 0 if seed is None else seed
        atomic_write_json(out_dir / "phantoms.json", report)
        emit(report, json_out, quiet, [("output", str(out_dir)), ("phantoms", len(images)), ("size", size)])
