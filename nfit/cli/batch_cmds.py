"""`nfit batch` (many jobs, on this machine or a Ray cluster) and `nfit table` (their summary)."""

from __future__ import annotations

import inspect
import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from nfit.cli.common import handle_errors, stderr, stdout
from nfit.config import OPTIONS, option_help

PANEL = "Fit options (each may be a comma-separated list: one job per value)"
MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")


def _flag(name: str, annotation: Any, help_text: str, default: Any, panel: str,
          *aliases: str) -> inspect.Parameter:
    info = typer.Option("--" + name.replace("_", "-"), *aliases, help=help_text, rich_help_panel=panel)
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                             annotation=Annotated[annotation, info])


JOB_FLAGS: list[tuple[str, Any, str, Any]] = [
    ("kind", str | None, "signal kind of every signal (default: from each file's extension)", None),
    ("seeds", str | None, "seeds per configuration: a count N (0..N-1) or a list 0,1,2", None),
    ("sweep", bool, "one sweep per signal (nfit sweep): --encoding and --sigma are the sweep's lists", False),
    ("out", Path | None, "the batch's directory (default runs/<manifest or first signal's folder>)", None),
    ("force", bool, "rerun jobs that already finished", False),
    ("checkpoint_every", int, "each fit saves a resumable state every S steps, so a retried job resumes (0: only on SIGINT)", 0),
    ("dry_run", bool, "list the jobs (and which would be skipped); run nothing", False),
]
RUN_FLAGS: list[tuple[str, Any, str, Any]] = [
    ("executor", str, "local (worker processes on this machine) or ray", "local"),
    ("workers", int, "local: jobs run at once, the cores shared between them", 1),
    ("address", str | None, "ray: the cluster to join (auto: the running one; default: start a local Ray)", None),
    ("cpus_per_job", float, "ray: CPUs each job declares (and its torch threads)", 1.0),
    ("gpus_per_job", float, "ray: GPUs each job declares; a fraction lets small fits share one", 0.0),
    ("retries", int, "times a job whose worker died is run again (it resumes from its saved state)", 2),
]
OUT_FLAGS: list[tuple[str, Any, str, Any]] = [
    ("jsonl", bool, "one JSON line per finished job on stdout (and nothing else there)", False),
    ("quiet", bool, "no progress bar or table", False),
]


def _batch_parameters() -> list[inspect.Parameter]:
    params = [inspect.Parameter("sources", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Annotated[
        list[str], typer.Argument(help="signal files or globs ('data/*.png'), or one manifest (.yaml/.json)")])]
    helps = option_help(_fit_config())
    for name, f in OPTIONS.items():
        if f.metadata.get("cli", True):
            params.append(_flag(name, str | None, helps[name], None, PANEL))
    for group, panel in ((JOB_FLAGS, "Batch"), (RUN_FLAGS, "Executor"), (OUT_FLAGS, "Output")):
        for name, annotation, text, default in group:
            params.append(_flag(name, annotation, text, default, panel, *(("-q",) if name == "quiet" else ())))
    return params


def _fit_config() -> type:
    from nfit.config import FitConfig

    return FitConfig


def _build(args: dict[str, Any]) -> tuple[list[Any], Path]:
    from nfit.batch import expand, find_signals, load_manifest
    from nfit.errors import UsageError

    options = {k: args[k] for k in OPTIONS if args.get(k) is not None}
    sources = list(args["sources"])
    out = Path(args["out"]) if args["out"] is not None else None
    if len(sources) == 1 and sources[0].lower().endswith(MANIFEST_SUFFIXES):
        if args["sweep"] or args["seeds"] is not None:
            raise UsageError("--sweep and --seeds belong in the manifest's 'sweep' and 'seeds'")
        return load_manifest(Path(sources[0]), out, options, args["checkpoint_every"], args["kind"])
    signals = find_signals(sources)
    batch_out = out or Path("runs") / (signals[0].parent.resolve().name or "batch")
    sweep = None
    seeds: Any = args["seeds"]
    if args["sweep"]:
        sweep = {"encodings": options.pop("encoding", "gauss"), "sigmas": options.pop("sigma", "auto")}
        if seeds is not None:
            try:
                sweep["seeds"] = int(seeds)
            except ValueError:
                raise UsageError(f"--seeds with --sweep is a count, got {seeds!r}") from None
            seeds = None
    elif seeds is not None and seeds.isdigit():
        seeds = int(seeds)
    jobs = expand(signals, options, batch_out, kind=args["kind"], seeds=seeds,
                  command="sweep" if sweep else "fit", sweep=sweep,
                  checkpoint_every=args["checkpoint_every"])
    return jobs, batch_out


def _executor(args: dict[str, Any]) -> Any:
    from nfit.errors import UsageError
    from nfit.executors import EXECUTORS, LocalExecutor, RayExecutor

    name = args["executor"]
    if name not in EXECUTORS:
        raise UsageError(f"--executor must be one of {', '.join(EXECUTORS)}, got {name!r}")
    if name == "local":
        for flag, default in (("address", None), ("cpus_per_job", 1.0), ("gpus_per_job", 0.0)):
            if args[flag] != default:
                raise UsageError(f"--{flag.replace('_', '-')} applies to --executor ray only")
        return LocalExecutor(workers=args["workers"], retries=args["retries"])
    if args["workers"] != 1:
        raise UsageError("--workers applies to --executor local; Ray runs as many jobs as its resources allow")
    return RayExecutor(address=args["address"], cpus_per_job=args["cpus_per_job"],
                       gpus_per_job=args["gpus_per_job"], retries=args["retries"])


def _line(job: Any, result: Any) -> str:
    return json.dumps({"job": job.name, "signal": job.signal, "config": job.config, "seed": job.seed,
                       "status": result.status, "out": str(job.out), **result.metrics,
                       "wall_time_s": result.wall_time_s, "error": result.error,
                       "hash": job.hash}, allow_nan=False, default=str)


class BatchProgress:
    """One bar over the jobs on stderr: done / running / failed, and the ETA."""

    def __init__(self, total: int, quiet: bool) -> None:
        self.counts = {"done": 0, "running": 0, "failed": 0, "skipped": 0, "interrupted": 0}
        self.progress: Progress | None = None
        self.total, self.quiet = total, quiet

    def event(self, kind: str, job: Any, result: Any) -> None:
        if kind == "skipped":
            self.counts["skipped"] += 1
            return
        if kind == "started":
            self.counts["running"] += 1
        elif kind == "finished":
            self.counts["running"] -= 1
            self.counts[result.status if result.status in self.counts else "failed"] += 1
            if result.status == "failed" and not self.quiet:
                stderr.print(f"nfit: job {job.name} failed: {result.error}", markup=False, soft_wrap=True)
        if self.quiet:
            return
        if self.progress is None:
            self.progress = Progress(TextColumn("[bold]batch"), BarColumn(), MofNCompleteColumn(),
                                     TimeRemainingColumn(), TextColumn("{task.fields[status]}"),
                                     console=stderr, transient=False)
            self.progress.start()
            self.task = self.progress.add_task("batch", total=self.total - self.counts["skipped"], status="")
        c = self.counts
        status = f"running {c['running']}  failed {c['failed']}" + (f"  skipped {c['skipped']}" if c["skipped"] else "")
        self.progress.update(self.task, completed=c["done"] + c["failed"] + c["interrupted"], status=status)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def print_summary(summary: dict[str, Any], title: str) -> None:
    table = Table(title=title)
    table.add_column("configuration")
    for m in summary["metrics"]:
        table.add_column(m.replace("_", " "), justify="right")
    table.add_column("jobs", justify="right")
    for entry in summary["summary"]:
        cells = [f"{entry[m]:.2f} ± {entry[f'{m}_std']:.2f}" if m in entry else "-" for m in summary["metrics"]]
        jobs = f"{entry['done']}/{entry['jobs']}" + (f" ({entry['failed']} failed)" if entry["failed"] else "")
        table.add_row(entry["config"], *cells, jobs)
    stdout.print(table)


def _batch(**args: Any) -> None:
    with handle_errors():
        from nfit.batch import Batch, run_batch, write_tables
        from nfit.errors import NfitError

        jobs, out = _build(args)
        executor = _executor(args)
        if args["dry_run"]:
            _dry_run(jobs, args["jsonl"], args["force"])
            return
        batch = Batch(out, jobs, executor=executor.name)
        progress = BatchProgress(len(jobs), args["quiet"] or False)

        def on_event(kind: str, job: Any, result: Any) -> None:
            progress.event(kind, job, result)
            if args["jsonl"] and kind in ("finished", "skipped"):
                sys.stdout.write(_line(job, result) + "\n")
                sys.stdout.flush()

        start = time.perf_counter()
        try:
            run_batch(batch, executor, force=args["force"], on_event=on_event)
        finally:
            progress.close()
        wall = time.perf_counter() - start
        summary = write_tables(batch)
        failed = [j for j in jobs if batch.results.get(j.name) and batch.results[j.name].status == "failed"]
        if not args["jsonl"] and not args["quiet"]:
            print_summary(summary, f"batch {out}: {len(jobs)} jobs in {wall:.1f} s")
        c = progress.counts
        if not args["quiet"]:
            stderr.print(f"nfit: {c['done']} done, {c['skipped']} skipped, {c['failed']} failed; "
                         f"batch.csv, table.md, table.csv, table.png in {out}", markup=False, soft_wrap=True)
        if failed:
            names = ", ".join(j.name for j in failed[:5]) + (" ..." if len(failed) > 5 else "")
            raise NfitError(f"{len(failed)} of {len(jobs)} jobs failed ({names}); their errors are in "
                            f"{out}/batch.csv; a rerun retries only them")


def _dry_run(jobs: list[Any], jsonl: bool, force: bool) -> None:
    if jsonl:
        for job in jobs:
            sys.stdout.write(json.dumps({**job.to_dict(), "finished": job.finished() is not None}) + "\n")
        return
    table = Table(title=f"{len(jobs)} jobs (dry run)")
    for column in ("job", "kind", "input", "status", "options"):
        table.add_column(column)
    for job in jobs:
        state = "finished: skip" if job.finished() is not None and not force else "to run"
        options = ", ".join(f"{k}={v}" for k, v in job.spec.options.items())
        table.add_row(job.name, job.spec.kind, job.spec.input, state, options)
    stdout.print(table)


def _command() -> Any:
    params = _batch_parameters()

    def batch(**args: Any) -> None:
        _batch(**args)

    batch.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    batch.__annotations__ = {p.name: p.annotation for p in params}
    batch.__doc__ = ("Run many jobs: signals x configurations (every option may be a list) x seeds, "
                     "or a manifest; locally or on Ray. Writes each job's directory, batch.csv, "
                     "table.md/.csv/.png; a rerun skips finished jobs.")
    return batch


batch = _command()


def table(
    directory: Annotated[Path, typer.Argument(help="a batch's directory (finished or running)")],
    json_out: Annotated[bool, typer.Option("--json", help="print the summary as JSON on stdout")] = False,
) -> None:
    """Summarise a batch: mean ± std per configuration, and each job's status; rewrites table.*."""
    with handle_errors():
        from nfit.batch import Batch, write_tables
        from nfit.io import json_safe

        batch_ = Batch.load(directory)
        summary = write_tables(batch_)
        if json_out:
            sys.stdout.write(json.dumps(json_safe(summary), indent=2) + "\n")
            return
        counts: dict[str, int] = {}
        for row in summary["rows"]:
            counts[row["status"]] = counts.get(row["status"], 0) + 1
        states = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        print_summary(summary, f"batch {directory}: {len(summary['rows'])} jobs ({states})")
