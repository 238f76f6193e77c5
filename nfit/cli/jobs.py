"""The job commands (image, volume, sdf, sweep, kernel, resume), generated from the specs.

Each command's options are the typed fields of ``nfit.config.FitConfig`` and of its spec
(``nfit.spec``), with their docstrings as help; a command builds the spec from its flags
and a ``--config`` YAML file and calls ``nfit.api.run``. No option is listed twice.
"""

from __future__ import annotations

import inspect
import json
import sys
from dataclasses import fields
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from nfit.catalog import KINDS, kind_facts
from nfit.cli.common import RichReporter, emit, fmt, handle_errors, stdout
from nfit.config import OPTIONS, FitConfig, load_yaml_config, option_help, value_type
from nfit.errors import UsageError
from nfit.io import json_safe
from nfit.spec import FitSpec, JobSpec, KernelSpec, SweepSpec

PANELS = {"grid": "Grid encodings", "siren": "SIREN", "mesh": "Meshes (sdf)", "ct": "CT", "mri": "MRI",
          "measure": "Measurements (ct, mri)", None: "Fit"}
FLAG_NAMES = {"encodings": "--encoding", "sigmas": "--sigma", "json_out": "--json"}
#: fit options a command does not take: they are its spec's own (or mean nothing to it)
EXCLUDED = {"sweep": {"encoding", "sigma"},
            "kernel": {"encoding", "steps", "lr", "batch", "eval_every", "precision"}}
SPEC_FIELDS = {"kind", "input", "options"}


def _type(annotation: str) -> Any:
    base = value_type(annotation)
    return base | None if "None" in annotation else base


def _option(name: str, annotation: str, help_text: str, default: Any, panel: str) -> inspect.Parameter:
    flag = FLAG_NAMES.get(name, "--" + name.replace("_", "-"))
    kind = _type(annotation)
    info = typer.Option(flag, help=help_text, rich_help_panel=panel)
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                             annotation=Annotated[kind, info])


def _shown(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float | int) and not isinstance(value, bool) else str(value)


def _parameters(spec_cls: type[JobSpec], kind: str | None) -> list[inspect.Parameter]:
    """Positional KIND (for sweep and kernel) and PATH, every fit option, the spec's fields."""
    params = []
    if kind is None:
        params.append(inspect.Parameter("kind", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Annotated[
            str, typer.Argument(help=f"signal kind: {', '.join(KINDS)}")]))
    # Kinds that also read measured data from an option (ct --sinogram, mri --kspace) take PATH optionally.
    optional = kind is None or kind_facts(kind).input_option is not None
    params.append(inspect.Parameter("path", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None if optional
                                    else inspect.Parameter.empty, annotation=Annotated[
        Path | None if optional else Path, typer.Argument(help="the signal file; - reads it from standard input")]))
    helps = option_help(FitConfig)
    defaults = kind_facts(kind).defaults if kind else {}
    for name, f in OPTIONS.items():
        group = f.metadata.get("group")
        if (not f.metadata.get("cli", True) or name in EXCLUDED.get(spec_cls.command, ())
                or (f.metadata.get("kinds") and kind is not None and kind not in f.metadata["kinds"])):
            continue
        text = helps[name] + (f" (default here: {_shown(defaults[name])})" if name in defaults else "")
        annotation = str(f.type) if "None" in str(f.type) else f"{f.type} | None"
        params.append(_option(name, annotation, text, None, PANELS[group]))
    for f in fields(spec_cls):
        if f.name not in SPEC_FIELDS:
            params.append(_option(f.name, str(f.type), option_help(_owner(spec_cls, f.name))[f.name],
                                  f.default, "Job"))
    params.append(_option("config", "str | None", "YAML file of fit options; flags override it", None, "Job"))
    params.append(_option("json_out", "bool", "print the report as JSON on stdout", False, "Output"))
    params.append(_option("quiet", "bool", "no progress bar or table", False, "Output"))
    return params


def _owner(cls: type, name: str) -> type:
    """The class in ``cls``'s hierarchy whose body defines ``name`` (for its docstring)."""
    return next(c for c in cls.__mro__ if name in getattr(c, "__annotations__", {}))


def job_command(spec_cls: type[JobSpec], name: str, doc: str, kind: str | None = None) -> Any:
    """A Typer command that builds a ``spec_cls`` from its arguments and runs it."""
    params = _parameters(spec_cls, kind)
    option_names = [p.name for p in params
                    if p.name in OPTIONS and p.name not in EXCLUDED.get(spec_cls.command, ())]
    spec_names = [f.name for f in fields(spec_cls) if f.name not in SPEC_FIELDS]

    def command(**args: Any) -> None:
        with handle_errors():
            job_kind = kind or args["kind"]
            kind_facts(job_kind)
            flags = {k: args[k] for k in option_names if args[k] is not None}
            options = {**load_yaml_config(args["config"]), **flags}
            path = args["path"]
            if path is None:  # the measured data named by the kind's option is the input
                path = options.get(kind_facts(job_kind).input_option or "")
                if path is None:
                    raise UsageError("missing the signal file PATH")
            spec = spec_cls(kind=job_kind, input=str(path), options=options,
                            **{k: args[k] for k in spec_names})
            if not isinstance(spec, SweepSpec):  # a sweep checks its options per encoding
                spec.config()  # every option checked before the library (and torch) loads
            execute(spec, args["json_out"], args["quiet"])

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__name__, command.__doc__ = name, doc
    return command


def execute(spec: JobSpec, as_json: bool, quiet: bool) -> None:
    """Run the spec with progress on stderr, then its results on stdout."""
    from nfit.api import run

    reporter = RichReporter(quiet or as_json)
    try:
        report = run(spec, reporter)
    finally:
        reporter.close()
    if isinstance(spec, SweepSpec):
        if as_json:
            sys.stdout.write(json.dumps(json_safe(report), indent=2) + "\n")
        elif not quiet:
            print_sweep(report)
        return
    emit(report, as_json, quiet, (kernel_rows if isinstance(spec, KernelSpec) else fit_rows)(report))


def fit_rows(report: dict[str, Any]) -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = [("output", report["out"]), ("signal", report["signal"].get("source"))]
    if "channels" in report:
        rows.append(("channels fitted", report["channels"]))
    for role in ("train", "val", "test"):
        rows += [(f"{role} {k}", v) for k, v in report.get(role, {}).items() if k != "loss"]
    rows.append(("steps", report["steps"]))
    if report.get("early_stopping"):
        # the scores above and every output are the best step's state
        rows += [("stopped", report.get("stopped")), ("best step (written)", report.get("best_step"))]
    return rows + [(label, report[key]) for label, key in (
        ("wall time (s)", "wall_time_s"), ("steps/s", "steps_per_s"),
        ("parameters", "parameters"), ("device", "device"), ("precision", "precision"))]


def kernel_rows(report: dict[str, Any]) -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = [("output", report["out"]), ("points", report["points"])]
    for name, s in report["encodings"].items():
        rows += [(f"{name} delta", s["generalization_delta"]),
                 (f"{name} test PSNR pred/meas",
                  f"{s['predicted']['test_psnr']:.2f} / {s['measured']['test_psnr']:.2f}"),
                 (f"{name} kernel drift", s["kernel_drift"]),
                 (f"{name} regions before/after",
                  f"{s['activation_regions']['before']} / {s['activation_regions']['after']}")]
    return rows


def print_sweep(report: dict[str, Any]) -> None:
    metric = report["metric"]
    table = Table(title=f"sweep: {metric}{' (dB)' if metric == 'psnr' else ''}, chosen on validation")
    for column in ("", "encoding", "sigma", "seeds", f"train {metric}", f"val {metric}", f"test {metric}"):
        table.add_column(column, justify="left" if column in ("", "encoding") else "right")
    for row in report["configs"]:
        cells = [fmt(row[f"{r}_{metric}"]) + (f" ± {row[f'{r}_{metric}_std']:.2g}" if row["seeds"] > 1 else "")
                 for r in ("train", "val", "test")]
        sigma = "-" if row["sigma"] is None else f"{row['sigma']:.4g}"
        table.add_row("*" if row["best"] else "", row["encoding"], sigma, str(row["seeds"] - row["diverged"]),
                      *cells, style="bold" if row["best"] else None)
    stdout.print(table)
    chosen = report["chosen"]
    sigma = "-" if chosen["sigma"] is None else f"{chosen['sigma']:g}"
    stdout.print(f"chosen: {chosen['encoding']} sigma={sigma}  val {metric} {fmt(chosen[f'val_{metric}'])}  "
                 f"test {metric} {fmt(chosen[f'test_{metric}'])} (reported, not used to choose)", soft_wrap=True)
    groups = ", ".join(f"{g['members']}x {g['encoding']}" for g in report["groups"])
    stdout.print(f"stacks: {len(report['groups'])} ({groups}); wall {report['wall_time_s']:.3g} s on "
                 f"{report['device']} ({report['precision']}); output {report['out']}", soft_wrap=True)


image = job_command(FitSpec, "image", "Fit a field to a photograph: writes recon.png, error.png, curve.*, "
                    "report.json, model.safetensors.", kind="image")
volume = job_command(FitSpec, "volume", "Fit a field to a volume (NIfTI, .npy, TIFF stack): writes "
                     "recon.nii.gz/.npy/.tif, slices.png, curve.*, report.json, model.safetensors.", kind="volume")
sdf = job_command(FitSpec, "sdf", "Fit a signed distance (or occupancy) field to a mesh (OBJ, PLY, STL, OFF, "
                  "GLB): writes recon.ply, preview.png, curve.*, report.json, model.safetensors.", kind="sdf")
sweep = job_command(SweepSpec, "sweep", "Train every (encoding, sigma, seed) at once as stacked members, choose "
                    "on validation: sweep.csv, sweep.json, sweep.png and the chosen model's outputs.")
ct = job_command(FitSpec, "ct", "Reconstruct an image from parallel-beam projections (simulated from PATH, or "
                 "--sinogram): writes recon.png, fbp.png, sinogram.png, curve.*, report.json, model.safetensors.",
                 kind="ct")
mri = job_command(FitSpec, "mri", "Reconstruct a volume from k-space samples (simulated from PATH, or --kspace and "
                  "--mask): writes recon.nii.gz, zerofill.nii.gz, kspace.png, slices.png, curve.*, report.json, "
                  "model.safetensors.", kind="mri")
kernel = job_command(KernelSpec, "kernel", "Tangent kernel (NTK; GTK for grid encodings) of a field on a signal: "
                     "spectrum.csv/png, kernel_row.png, prediction.png, report.json.")


def resume(
    directory: Annotated[Path, typer.Argument(help="output directory of an interrupted fit (holds resume.safetensors)")],
    checkpoint_every: Annotated[int | None, typer.Option("--checkpoint-every", help=option_help(FitSpec)["checkpoint_every"])] = None,
    max_memory: Annotated[str | None, typer.Option("--max-memory", help=option_help(FitSpec)["max_memory"])] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the report as JSON on stdout")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar or table")] = False,
) -> None:
    """Continue an interrupted fit of any kind from DIR/resume.safetensors (same options, seed)."""
    with handle_errors():
        from nfit.api import resume_spec

        execute(resume_spec(directory, checkpoint_every, max_memory), json_out, quiet)


def run_spec(spec_file: Annotated[Path, typer.Argument(help="a job spec (JSON or YAML), as nfit.spec writes it")],
             json_out: Annotated[bool, typer.Option("--json", help="print the report as JSON on stdout")] = False,
             quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar or table")] = False) -> None:
    """Run a job spec file: exactly what the command it describes would do."""
    from nfit.spec import load_spec

    with handle_errors():
        execute(load_spec(spec_file), json_out, quiet)
