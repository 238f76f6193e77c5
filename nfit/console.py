"""What a terminal shows: progress bars with an ETA on stderr, result tables on stdout.

``RichReporter`` is the ``nfit.reporting.Reporter`` the CLI hands to ``nfit.api.run``; a
Python user gets the same bars with ``run(spec, RichReporter(quiet=False))``. Batches
show one bar over their jobs (``BatchProgress``) and a table of mean ± std per
configuration (``print_summary``).
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
from collections.abc import Iterator
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from nfit.io import json_safe
from nfit.reporting import Reporter

stderr = Console(stderr=True, highlight=False)
stdout = Console(highlight=False)


class RichReporter(Reporter):
    """Progress bars on stderr (nothing with ``quiet``): a fit's steps, a sweep's stacks."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.bars: Progress | None = None

    @contextlib.contextmanager
    def fit(self, total: int, metric: str, budget: float | None = None) -> Iterator[Any]:
        if self.quiet:
            yield None
            return
        # With a time budget the bar measures the time spent; the ETA is the measured step
        # rate's, or the budget's end where that comes first.
        columns = [TextColumn("[bold]fit"), BarColumn(), TextColumn("{task.fields[done]}"),
                   TextColumn("{task.fields[eta]}"), TextColumn("{task.fields[status]}")]
        with Progress(*columns, console=stderr, transient=False) as progress:
            task = progress.add_task("fit", total=budget or total, status="", done="", eta="")

            def on_eval(row: dict[str, float]) -> None:
                step, spent = int(row["step"]), row["time"]
                left = (total - step) * spent / step if step and spent > 0 else math.inf
                if budget:
                    left = min(left, max(budget - spent, 0.0))
                progress.update(task, completed=spent if budget else step,
                                done=f"step {step}" if budget else f"{step}/{total}",
                                eta=f"eta {_duration(left)}")
                status = f"loss {row['train_loss']:.3g}"
                for role in ("train", "test"):
                    value = row.get(f"{role}_{metric}")
                    if value is not None:
                        status += f"  {role} {fmt(value)}{' dB' if metric == 'psnr' else ''}"
                progress.update(task, status=status)

            yield on_eval

    def group(self, label: str, steps: int) -> Any:
        if self.quiet:
            return None
        if self.bars is None:  # started on the first stack, after planning errors had their say
            self.bars = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeRemainingColumn(), console=stderr, transient=False)
            self.bars.start()
        bars, task = self.bars, self.bars.add_task(label, total=steps)
        return lambda step: bars.update(task, completed=step)

    def note(self, text: str) -> None:
        stderr.print(f"nfit: note: {text}", markup=False, emoji=False, soft_wrap=True)

    def study(self, study: Any) -> None:
        if not self.quiet:
            last = study.curve[-1]
            stderr.print(f"{study.name}: kernel {study.kernel_seconds:.1f} s, test PSNR predicted "
                         f"{last['pred_test_psnr']:.2f} dB, measured {last['test_psnr']:.2f} dB")

    def close(self) -> None:
        if self.bars is not None:
            self.bars.stop()


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "-:--:--"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.3e}"
    return str(value)


def emit(report: dict[str, Any], as_json: bool, quiet: bool, rows: list[tuple[str, Any]]) -> None:
    """Results on stdout: JSON with --json, otherwise a table (unless --quiet)."""
    if as_json:
        sys.stdout.write(json.dumps(json_safe(report), indent=2) + "\n")
        return
    if quiet:
        return
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        table.add_row(key, fmt(value))
    stdout.print(table)


def job_line(job: Any, result: Any) -> str:
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


def dry_run(jobs: list[Any], jsonl: bool, force: bool) -> None:
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
