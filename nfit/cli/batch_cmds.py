"""`nfit batch` (many jobs, on this machine or a Ray cluster) and `nfit table` (their summary)."""

from __future__ import annotations

import inspect
import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from nfit.cli.common import handle_errors, stderr
from nfit.config import OPTIONS, option_help
from nfit.console import BatchProgress, dry_run, job_line, print_summary

PANEL = "Fit options (each may be a comma-separated list: one job per value)"


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


def _batch(**args: Any) -> None:
    with handle_errors():
        from nfit.batch import Batch, build_jobs, run_batch, write_tables
        from nfit.errors import NfitError
        from nfit.executors import make_executor

        jobs, out = build_jobs(args["sources"], {k: args[k] for k in OPTIONS if args.get(k) is not None},
                               out=args["out"], kind=args["kind"], seeds=args["seeds"], sweep=args["sweep"],
                               checkpoint_every=args["checkpoint_every"])
        executor = make_executor(args["executor"], workers=args["workers"], address=args["address"],
                                 cpus_per_job=args["cpus_per_job"], gpus_per_job=args["gpus_per_job"],
                                 retries=args["retries"])
        if args["dry_run"]:
            dry_run(jobs, args["jsonl"], args["force"])
            return
        batch = Batch(out, jobs, executor=executor.name)
        progress = BatchProgress(len(jobs), args["quiet"] or False)

        def on_event(kind: str, job: Any, result: Any) -> None:
            progress.event(kind, job, result)
            if args["jsonl"] and kind in ("finished", "skipped"):
                sys.stdout.write(job_line(job, result) + "\n")
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
