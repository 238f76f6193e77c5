"""`nfit render`, `nfit info` and `nfit encodings`: commands that read checkpoints or registries."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from nfit.cli.common import Device, Json, Quiet, emit, handle_errors, stdout
from nfit.errors import UsageError
from nfit.stdio import STDIO


def render(
    model: Annotated[Path, typer.Argument(help="a model.safetensors written by nfit")],
    out: Annotated[Path, typer.Option(help="output file; its extension picks the format; - writes to stdout (with --format)")],
    size: Annotated[str | None, typer.Option(help="grid size: WIDTHxHEIGHT for images, AxBxC for volumes")] = None,
    resolution: Annotated[int | None, typer.Option(help="marching-cubes resolution for SDF/occupancy fields")] = None,
    format: Annotated[str | None, typer.Option("--format", help="the format written to stdout with --out -, e.g. png, npy, ply (default: the kind's first)")] = None,
    device: Device = None, json_out: Json = False, quiet: Quiet = False,
) -> None:
    """Evaluate a fitted field at any resolution, in memory-bounded chunks."""
    with handle_errors():
        from nfit.api import render_checkpoint

        if str(out) == STDIO and json_out:
            raise UsageError("--out - writes the rendering to stdout; --json cannot share it")
        summary = render_checkpoint(model, out, size=size, resolution=resolution, format=format, device=device)
        if summary is not None:
            emit(summary, json_out, quiet, list(summary.items()))


def info(
    model: Annotated[Path, typer.Argument(help="a model.safetensors written by nfit")],
    json_out: Json = False,
) -> None:
    """Validate a checkpoint and describe it, without loading it onto a device."""
    with handle_errors():
        from nfit.checkpoint import check_shapes, expected_shapes, read_header

        # Header and JSON only; the field is built on the meta device (no memory, no device).
        meta, table = read_header(model)
        check_shapes(model, expected_shapes(model, meta["field"]), table)
        found = {k: list(v["shape"]) for k, v in table.items()}
        params = sum(math.prod(s) for s in found.values())
        summary = {"path": str(model), "valid": True, "format_version": int(meta["format_version"]),
                   "kind": meta["signal"].get("kind"), "signal": meta["signal"],
                   "field": meta["field"], "tensors": len(found), "values": params,
                   "metrics": meta["metrics"], "nfit_version": meta.get("nfit_version"),
                   "torch_version": meta.get("torch_version")}
        enc = meta["field"]["encoding"]
        rows = [("checkpoint", str(model)), ("valid", "yes"), ("kind", summary["kind"]),
                ("source", meta["signal"].get("source")),
                ("encoding", ", ".join(f"{k}={v}" for k, v in enc.items())),
                ("network", ", ".join(f"{k}={v}" for k, v in meta["field"]["network"].items())),
                ("stored values", params)]
        rows += [(k, v) for k, v in meta["metrics"].items()]
        rows += [("written by", f"nfit {meta.get('nfit_version')}, torch {meta.get('torch_version')}")]
        emit(summary, json_out, False, rows)


def encodings(json_out: Json = False, quiet: Quiet = False) -> None:
    """List the registered encodings, their parameters, and what --sigma means for each."""
    from rich.markup import escape

    from nfit.catalog import ENCODING_FACTS

    entries = [{"name": name, "summary": e.summary, "sigma": e.sigma_meaning,
                "parameters": list(e.params), "learned": e.trainable, "uses_sigma": e.uses_sigma}
               for name, e in sorted(ENCODING_FACTS.items())]
    if json_out:
        emit({"encodings": entries}, True, quiet, [])
        return
    table = Table(title="encodings")
    for column in ("name", "what it is", "--sigma means", "parameters"):
        table.add_column(column)
    for e in entries:
        # escaped: a summary's [cos 2 pi v, sin 2 pi v] is text, not rich markup
        table.add_row(str(e["name"]), escape(str(e["summary"])), escape(str(e["sigma"])),
                      ", ".join(map(str, e["parameters"])) or "-")  # type: ignore[call-overload]
    stdout.print(table)
