"""The one door: ``run(spec)`` does what the matching nfit command does, for any caller.

    from nfit.api import run
    from nfit.spec import FitSpec
    report = run(FitSpec(kind="image", input="photo.png", options={"sigma": 10}))

The CLI builds a spec from its flags and calls ``run``; a Python user, a Makefile or a
remote worker gets the same behaviour from the same spec: the output-directory policy,
resume, the memory guard, SIGINT/SIGTERM state (``nfit.job``), every output and the
report, which ``run`` returns (with "out" set to the directory written).

Progress goes to a ``Reporter`` (silent by default; the CLI's draws rich progress bars).
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

import torch

from nfit.catalog import kind_facts
from nfit.config import merge_config
from nfit.errors import DataError, DivergenceError, UsageError
from nfit.io import resolve_out_dir
from nfit.job import (
    REPORT_FILE,
    Checkpointer,
    check_finite,
    check_out_dir_state,
    check_same_job,
    deferred_signals,
    find_resumable,
    guard_memory,
    resume_state_of,
)
from nfit.outputs import versions, write_results
from nfit.problem import FitState
from nfit.reporting import Reporter
from nfit.resume import RESUME_FILE, file_sha256, load_resume, read_resume_header
from nfit.signals import build_task_field, signal_kind
from nfit.sizing import size_to_params
from nfit.spec import FitSpec, JobSpec, KernelSpec, SweepSpec
from nfit.stdio import STDIO, stdin_signal
from nfit.tasks import SOURCE_NAME, fit_task, prepare_task

__all__ = ["Reporter", "build_task_field", "fit_task", "prepare_task", "render_checkpoint", "resume_spec", "run",
           "versions", "write_results"]


def run(spec: JobSpec, reporter: Reporter | None = None) -> dict[str, Any]:
    """Run a fit, sweep or kernel spec; returns its report (with "out")."""
    reporter = reporter or Reporter()
    if spec.input == STDIO:
        return _run_stdin(spec, reporter)
    if isinstance(spec, FitSpec):
        return _run_fit(spec, reporter)
    if isinstance(spec, SweepSpec):
        return _run_sweep(spec, reporter)
    if isinstance(spec, KernelSpec):
        return _run_kernel(spec, reporter)
    raise UsageError(f"not a job spec: {type(spec).__name__}")


def _run_stdin(spec: JobSpec, reporter: Reporter) -> dict[str, Any]:
    """The job on the signal piped into standard input (written to runs/stdin by default)."""
    if getattr(spec, "resume", False):
        raise UsageError("--resume needs the signal in a file; standard input is read only once")
    with stdin_signal(spec.kind, signal_kind(spec.kind).extensions) as path:
        out = spec.out or str(Path("runs") / f"stdin{spec.out_suffix}")
        token = SOURCE_NAME.set(STDIO)
        try:
            return run(dataclasses.replace(spec, input=str(path), out=out), reporter)
        finally:
            SOURCE_NAME.reset(token)


def resume_spec(directory: str | Path, checkpoint_every: int | None = None,
                max_memory: str | None = None) -> FitSpec:
    """The spec that continues the unfinished fit in ``directory`` (``nfit resume``)."""
    state = resume_state_of(Path(directory))
    if state is None:
        raise UsageError(f"{directory}: no unfinished fit here ({RESUME_FILE} not found)")
    job, _, _ = read_resume_header(state)
    source = Path(job.get("source", ""))
    if not source.is_file():
        raise DataError(f"{state}: the fit's input {source} no longer exists")
    every = job.get("checkpoint_every", 0) if checkpoint_every is None else checkpoint_every
    options = {k: v for k, v in job["config"].items() if v is not None}
    return FitSpec(kind=job["kind"], input=str(source), options=options, out=str(directory),
                   resume=True, checkpoint_every=int(every), max_memory=max_memory)


def _run_fit(spec: FitSpec, reporter: Reporter) -> dict[str, Any]:
    """Fit with the guarantees of ``nfit.job``: nothing written before the fit succeeds
    (only the resume state), every output atomic, report.json last."""
    cfg = spec.config()
    path = Path(spec.input)
    if spec.checkpoint_every < 0:
        raise UsageError(f"--checkpoint-every must be 0 (off) or positive, got {spec.checkpoint_every}")
    out = Path(spec.out) if spec.out is not None else None
    if spec.resume and out is None:
        out = find_resumable(spec.default_out)
    state_path = resume_state_of(out) if out is not None and out.is_dir() else None
    if out is not None and out.is_dir():
        check_out_dir_state(out, state_path, spec.resume, spec.force)
    if spec.resume and state_path is not None:
        assert out is not None
        out_dir = out
        saved_job, _, _ = read_resume_header(state_path)
    else:
        out_dir = resolve_out_dir(out, spec.default_out, spec.force)
        state_path = None
    task = prepare_task(spec.kind, path, cfg)
    cfg = size_to_params(task, cfg)
    if state_path is not None:
        check_same_job(state_path, saved_job, spec.kind, cfg, path)
    check_finite(task, path)
    guard_memory(task, cfg, spec.max_memory)
    start: FitState | None = None
    if state_path is not None:
        with torch.device("meta"):
            shapes = {k: tuple(v.shape) for k, v in build_task_field(task, cfg).state_dict().items()}
        start = load_resume(state_path, shapes)
    elif out_dir.exists():
        # Starting over (--force): the old completion marker and resume state go first,
        # so the directory never pairs a new fit's state with an old fit's report.
        (out_dir / REPORT_FILE).unlink(missing_ok=True)
        (out_dir / RESUME_FILE).unlink(missing_ok=True)
    existed = out_dir.exists()
    if existed:
        # Temporary files of a killed atomic write (never a target's name): safe to drop.
        for stale in out_dir.glob(".*.tmp*"):
            stale.unlink(missing_ok=True)
    job = {"kind": spec.kind, "source": str(path.resolve()), "source_sha256": file_sha256(path),
           "config": cfg.to_dict(), "checkpoint_every": spec.checkpoint_every}
    with deferred_signals() as flag, \
            reporter.fit(cfg.steps, task.problem.metric_name, cfg.time_budget_s()) as on_eval:
        hook = Checkpointer(out_dir, job, spec.checkpoint_every, cfg.steps, flag)
        try:
            result = fit_task(task, cfg, on_eval, start=start, on_step=hook)
        except DivergenceError as exc:
            kept = resume_state_of(out_dir)
            if kept is not None:
                step = hook.saved_step if hook.saved_step is not None else (start.step if start else 0)
                raise DivergenceError(f"{exc}; the last good state (step {step}) is kept in "
                                      f"{kept}") from None
            raise
    try:
        report = write_results(spec.kind, task, cfg, result, out_dir, job=spec.record())
    except BaseException:
        if not existed and hook.saved_step is None:
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    (out_dir / RESUME_FILE).unlink(missing_ok=True)
    report["out"] = str(out_dir)
    return report


def _run_sweep(spec: SweepSpec, reporter: Reporter) -> dict[str, Any]:
    from nfit.sweep import parse_encodings, parse_sigmas, run_sweep, write_sweep

    signal_kind(spec.kind)
    for key, instead in (("encoding", "encodings"), ("sigma", "sigmas")):
        if key in spec.options:
            raise UsageError(f"a sweep takes its {key} list from {instead!r}, not options[{key!r}]")
    encodings = parse_encodings(spec.encodings)
    sigma_spec = parse_sigmas(spec.sigmas)
    if spec.memory is not None and not spec.memory > 0:
        raise UsageError(f"--memory must be a positive number of GiB, got {spec.memory}")
    # Each encoding's members get the settings `nfit KIND --encoding E` would give them
    # under the same options (a grid's small MLP and lr), so one shared base is not forced
    # on encodings whose defaults differ.
    per_encoding = {e: merge_config({}, {**spec.options, "encoding": e}, kind=spec.kind,
                                    where="the sweep's options", encodings=encodings)
                    for e in encodings}
    cfg = per_encoding[encodings[0]]
    out_dir = resolve_out_dir(Path(spec.out) if spec.out else None, spec.default_out, spec.force)
    task = prepare_task(spec.kind, spec.input, cfg)
    per_encoding = {e: size_to_params(task, c) for e, c in per_encoding.items()}
    cfg = per_encoding[encodings[0]]
    result = run_sweep(task, cfg, encodings, sigma_spec, spec.seeds, rounds=spec.rounds,
                       memory=int(spec.memory * 2**30) if spec.memory is not None else None,
                       on_group=reporter.group, on_note=reporter.note, configs=per_encoding)
    return write_sweep(spec.kind, task, cfg, result, out_dir, job=spec.record())


def _run_kernel(spec: KernelSpec, reporter: Reporter) -> dict[str, Any]:
    from nfit.analysis.run import kernel_file
    from nfit.analysis.study import KernelOptions

    if kind_facts(spec.kind).through_operator:
        raise UsageError(f"nfit kernel studies fits of the signal's own values; {spec.kind} fields are "
                         "fitted through a measurement operator, which it does not model")
    base = spec.config()
    # the options or a model (--model sum implies densegrid) may choose the encoding
    chosen = "encoding" in spec.options or "model" in spec.options
    names = _encoding_list(spec.encodings or (base.encoding if chosen else None), spec.compare)
    cfgs = [spec.config(encoding=n) for n in names]
    lr = None if spec.lr.strip().lower() == "auto" else _number("--lr", spec.lr)
    opts = KernelOptions(points=spec.points, test_points=spec.test_points, steps=spec.steps, lr=lr,
                         eval_every=spec.eval_every, ridge=spec.ridge).validate()
    out_dir = resolve_out_dir(Path(spec.out) if spec.out else None, spec.default_out, spec.force)
    report = kernel_file(spec.kind, spec.input, cfgs, opts, out_dir, on_encoding=reporter.study, html=spec.html)
    report["out"] = str(out_dir)
    return report


#: ``nfit kernel --compare``: the encodings set beside the chosen one, all at the one --sigma;
#: the geometric positional encoding, whose sigma is a largest frequency like gauss's, not
#: the paper's posenc, whose sigma is a scale in octaves
KERNEL_COMPARE = ("none", "basic", "geoposenc", "gauss")


def _encoding_list(text: str | None, compare: bool) -> list[str]:
    names = [n.strip() for n in (text or "gauss").split(",") if n.strip()]
    if not names:
        raise UsageError("--encoding needs at least one name")
    if len(set(names)) != len(names):
        raise UsageError(f"--encoding lists a name twice: {text}")
    if compare and len(names) == 1:
        names = [n for n in KERNEL_COMPARE if n != names[0]] + names
    return names


def _number(flag: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise UsageError(f"{flag} must be a number or 'auto', got {text!r}") from None


def render_checkpoint(model: str | Path, out: str | Path, *, size: str | None = None,
                      resolution: int | None = None, format: str | None = None,
                      device: str | None = None) -> dict[str, Any] | None:
    """``nfit render``: evaluate a checkpoint's field on a grid of any size, in the fit's
    precision on ``device``, and write it to ``out`` (its extension picks the format), or
    to standard output with ``out="-"`` (``format`` names it). Returns the summary (None
    for standard output). The output is checked before any work and written atomically."""
    import tempfile
    import time

    from nfit.checkpoint import load_checkpoint, read_header
    from nfit.device import resolve_device, resolve_precision
    from nfit.field import InPrecision
    from nfit.formats.images import UNFAITHFUL_EXTENSIONS
    from nfit.io import check_output_file
    from nfit.stdio import copy_to_stdout

    model, to_stdout = Path(model), str(out) == STDIO
    meta, _ = read_header(model)
    kind = signal_kind(meta["signal"].get("kind", ""))
    allowed = kind.render_extensions()
    if format is not None and not to_stdout:
        raise UsageError("--format is for --out - (a file's extension picks its format)")
    suffix = "." + (format or allowed[0].lstrip(".")).lower().lstrip(".")
    check_output_file(Path("stdout" + suffix) if to_stdout else Path(out), allowed, UNFAITHFUL_EXTENSIONS)
    target = resolve_device(device or "auto")
    fld, meta = load_checkpoint(model, target)
    # evaluated in the fit's precision (its --precision on this device)
    precision = resolve_precision(str(meta["config"].get("precision", "auto")), target)
    evaluator = InPrecision(fld, target, precision)
    start = time.perf_counter()
    if to_stdout:
        with tempfile.TemporaryDirectory(prefix="nfit-render-") as folder:
            written = Path(folder) / f"render{suffix}"
            kind.render(evaluator, meta["signal"], written, size=size, resolution=resolution)
            copy_to_stdout(written)
        return None
    summary = kind.render(evaluator, meta["signal"], Path(out), size=size, resolution=resolution)
    seconds = time.perf_counter() - start
    summary.update({"precision": precision, "points": evaluator.points,
                    "points_per_s": evaluator.points / seconds if seconds > 0 else None, "seconds": seconds})
    return summary
