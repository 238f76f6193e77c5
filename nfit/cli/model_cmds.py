"""`nfit render`, `nfit info` and `nfit encodings`: commands that read checkpoints or registries."""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from nfit.cli.common import Device, Json, Quiet, emit, handle_errors, stdout
from nfit.errors import UsageError
from nfit.formats.images import UNFAITHFUL_EXTENSIONS
from nfit.io import check_output_file
from nfit.stdio import STDIO, copy_to_stdout


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
        from nfit.checkpoint import load_checkpoint, read_header
        from nfit.device import resolve_device, resolve_precision
        from nfit.field import InPrecision
        from nfit.signals import signal_kind

        meta, _ = read_header(model)
        kind = signal_kind(meta["signal"].get("kind", ""))
        allowed = kind.render_extensions()
        to_stdout = str(out) == STDIO
        if format is not None and not to_stdout:
            raise UsageError("--format is for --out - (a file's extension picks its format)")
        if to_stdout and json_out:
            raise UsageError("--out - writes the rendering to stdout; --json cannot share it")
        suffix = "." + (format or allowed[0].lstrip(".")).lower().lstrip(".")
        check_output_file(Path("stdout" + suffix) if to_stdout else out, allowed, UNFAITHFUL_EXTENSIONS)
        target_device = resolve_device(device or "auto")
        fld, meta = load_checkpoint(model, target_device)
        # evaluated in the fit's precision (its --precision on this device)
        precision = resolve_precision(str(meta["config"].get("precision", "auto")), target_device)
        evaluator = InPrecision(fld, target_device, precision)
        start = time.perf_counter()
        if to_stdout:
            with tempfile.TemporaryDirectory(prefix="nfit-render-") as folder:
                written = Path(folder) / f"render{suffix}"
                kind.render(evaluator, meta["signal"], written, size=size, resolution=resolution)
                copy_to_stdout(written)
            return
        summary = kind.render(evaluator, meta["signal"], out, size=size, resolution=resolution)
        seconds = time.perf_counter() - start
        summary.update({"precision": precision, "points": evaluator.points,
                        "points_per_s": evaluator.points / seconds if seconds > 0 else None,
                        "seconds": seconds})
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
        table.add_row(str(e["name"]), str(e["summary"]), str(e["sigma"]),
                      ", ".join(map(str, e["parameters"])) or "-")  # type: ignore[call-overload]
    stdout.print(table)
