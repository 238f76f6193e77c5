"""Many jobs at once: ``nfit batch``.

A batch is a list of job specs (``nfit.spec``), each run through ``nfit.api.run`` by an
executor (``nfit.executors``: worker processes on this machine, or Ray tasks), each
writing the directory its ``nfit`` command would write, under the batch's directory:

    runs/table1/
      batch.json              the jobs (name, spec, hash) and their status, kept current
      kodim05/gauss-s10-seed0/report.json, recon.png, model.safetensors, ...
      batch.csv               one row per job: signal, configuration, metrics, wall time, status
      table.md, table.csv     mean +- std per configuration over signals and seeds
      table.png               the same as grouped bars with error bars

The jobs come from signals x configurations (``expand``: globs or paths, every option a
list, seeds) or from a manifest (``load_manifest``: the same in YAML/JSON, or explicit
specs). A job whose directory holds its finished marker (``report.json``, a sweep's
``sweep.json``) with the same spec hash is skipped, so a rerun continues a batch.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import io
import itertools
import json
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nfit.config import OPTIONS, check_keys, coerce_option
from nfit.errors import UsageError
from nfit.html import write_batch_index
from nfit.io import atomic_write_json, atomic_write_text, json_safe
from nfit.metrics import mean_std
from nfit.spec import FitSpec, JobSpec, SweepSpec, spec_from_dict

BATCH_FILE = "batch.json"
#: where a running job says which process runs it (removed when it ends)
RUNNING_DIR = ".running"
#: the job kinds a batch runs (kernel studies are single jobs)
BATCH_COMMANDS = ("fit", "sweep")
#: the manifest's own keys (everything else under "options")
MANIFEST_KEYS = ("kind", "signals", "seeds", "options", "command", "sweep", "jobs", "out")


@dataclass
class BatchJob:
    """One job of a batch: its spec (``out`` under the batch directory) and its place in
    the tables: the signal, the configuration label, the seed."""

    name: str
    spec: JobSpec
    signal: str
    config: str
    seed: int | None = None
    hash: str = ""

    def __post_init__(self) -> None:
        if not self.hash:
            self.hash = self.spec.hash()

    @property
    def out(self) -> Path:
        return Path(str(self.spec.out))

    def finished(self) -> dict[str, Any] | None:
        """The report of this very job if its directory holds it finished, else None."""
        marker = self.out / self.spec.marker
        try:
            report = json.loads(marker.read_text())
        except (OSError, ValueError):
            return None
        return report if report.get("job", {}).get("hash") == self.hash else None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "signal": self.signal, "config": self.config, "seed": self.seed,
                "hash": self.hash, "spec": self.spec.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BatchJob:
        return cls(name=data["name"], spec=spec_from_dict(data["spec"]), signal=data["signal"],
                   config=data["config"], seed=data.get("seed"), hash=data.get("hash", ""))


# ---------------------------------------------------------------------------- building jobs


def infer_kind(path: str) -> str:
    """The signal kind a file's extension names; a usage error when none or several do.
    Kinds fitted through a measurement (ct, mri) read images and volumes too, but a file is
    only their input when --kind says so."""
    from nfit.catalog import KINDS

    name = Path(path).name.lower()
    kinds = [k for k, facts in KINDS.items() if not facts.through_operator
             and any(name.endswith(e) for e in facts.extensions)]
    if len(kinds) == 1:
        return kinds[0]
    if not kinds:
        raise UsageError(f"{path}: no signal kind reads this extension; pass --kind")
    raise UsageError(f"{path}: the extension fits {' and '.join(kinds)}; pass --kind")


def find_signals(patterns: Iterable[str], base: Path | None = None) -> list[Path]:
    """Files the patterns name (globs, ** included), in order, each once; relative patterns
    are read from ``base`` (a manifest's directory)."""
    found: list[Path] = []
    for pattern in patterns:
        full = str(base / pattern) if base is not None and not Path(pattern).is_absolute() else pattern
        matches = sorted(glob.glob(full, recursive=True)) if glob.has_magic(full) else [full]
        matches = [m for m in matches if Path(m).is_file() or not glob.has_magic(full)]
        if not matches:
            raise UsageError(f"no file matches {pattern!r}")
        for m in matches:
            if not Path(m).is_file():
                raise UsageError(f"{m}: no such file")
            if Path(m) not in found:
                found.append(Path(m))
    return found


def signal_names(paths: list[Path]) -> list[str]:
    """Readable, distinct names: the file's stem, with parent folders added where stems clash."""
    def stem(p: Path) -> str:
        name = p.name
        for double in (".nii.gz",):
            if name.lower().endswith(double):
                return name[: -len(double)]
        return p.stem

    depth = 0
    while True:
        names = ["-".join([*p.parent.parts[len(p.parent.parts) - depth:], stem(p)]) if depth else stem(p)
                 for p in paths]
        if len(set(names)) == len(names) or depth > 8:
            return [safe_name(n) for n in names]
        depth += 1


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+=-]+", "_", text).strip("._") or "job"


def _label_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def config_label(options: dict[str, Any], varying: list[str], command: str) -> str:
    """The configuration's name: the encoding, its sigma where the encoding reads one, then
    each option that varies across the batch (``gauss-s10``, ``hashgrid-lr0.01``)."""
    from nfit.catalog import ENCODING_FACTS

    if command == "sweep":
        parts = ["sweep"]
    else:
        encoding = str(options.get("encoding", OPTIONS["encoding"].default))
        parts = [encoding]
        if "sigma" in options and getattr(ENCODING_FACTS.get(encoding), "uses_sigma", False):
            parts.append(f"s{_label_value(options['sigma'])}")
    for key in varying:
        if key in ("encoding", "sigma", "seed") or key not in options:
            continue
        parts.append(f"{key.replace('_', '')}{_label_value(options[key])}")
    return safe_name("-".join(parts))


def _as_list(key: str, value: Any) -> list[Any]:
    """An option's values: a list, a comma-separated string, or one value."""
    if isinstance(value, str) and "," in value:
        value = [v.strip() for v in value.split(",") if v.strip()]
    values = value if isinstance(value, list) else [value]
    if key in OPTIONS:
        values = [coerce_option(key, v) for v in values]
    if not values:
        raise UsageError(f"option {key!r}: an empty list")
    return values


def _seeds(seeds: Any) -> list[int] | None:
    if seeds is None:
        return None
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        if seeds < 1:
            raise UsageError(f"--seeds must be at least 1, got {seeds}")
        return list(range(seeds))
    try:
        values = [int(s) for s in _as_list("seeds", seeds)]
    except (TypeError, ValueError):
        raise UsageError(f"seeds: a count or a list of seeds, got {seeds!r}") from None
    if len(set(values)) != len(values):
        raise UsageError(f"seeds: a seed is listed twice ({seeds})")
    return values


def expand(signals: list[Path], options: dict[str, Any], out: Path, *, kind: str | None = None,
           seeds: Any = None, command: str = "fit", sweep: dict[str, Any] | None = None,
           checkpoint_every: int = 0) -> list[BatchJob]:
    """Signals x every combination of the options' values x seeds, as fit (or sweep) jobs
    writing ``out/<signal>/<configuration>[-seed<n>]``."""
    if command not in BATCH_COMMANDS:
        raise UsageError(f"a batch runs {' or '.join(BATCH_COMMANDS)} jobs, not {command!r}")
    options = {str(k).replace("-", "_"): v for k, v in options.items()}
    check_keys(options, list(OPTIONS), "the batch's options")
    seed_list = _seeds(seeds)
    if seed_list is not None and "seed" in options:
        raise UsageError("give the seeds once: --seeds N or --seed a,b,c, not both")
    if command == "sweep":
        if seed_list is not None:
            raise UsageError("a sweep batch takes its seeds in the sweep's own 'seeds'")
        for key in ("encoding", "sigma"):
            if key in options:
                raise UsageError(f"a sweep batch takes its {key} list from the sweep's "
                                 f"{'encodings' if key == 'encoding' else 'sigmas'!r}")
    grid = {k: _as_list(k, v) for k, v in options.items()}
    if seed_list is not None:
        grid["seed"] = seed_list
    varying = [k for k, v in grid.items() if len(v) > 1]
    combos = [dict(zip(grid, values)) for values in itertools.product(*grid.values())] or [{}]
    names = signal_names(signals)
    jobs: list[BatchJob] = []
    for path, signal in zip(signals, names):
        job_kind = kind or infer_kind(str(path))
        for combo in combos:
            label = config_label(combo, varying, command)
            seed = combo.get("seed")
            name = f"{signal}/{label}" + (f"-seed{seed}" if "seed" in grid else "")
            job_out = str(out / name)
            spec: JobSpec
            if command == "sweep":
                spec = SweepSpec(kind=job_kind, input=str(path), options=combo, out=job_out,
                                 **(sweep or {}))
            else:
                spec = FitSpec(kind=job_kind, input=str(path), options=combo, out=job_out,
                               checkpoint_every=checkpoint_every)
            jobs.append(BatchJob(name=name, spec=spec, signal=signal, config=label,
                                 seed=seed if seed is not None else combo.get("seed")))
    check_unique(jobs)
    return jobs


MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")


def build_jobs(sources: Sequence[str], options: dict[str, Any], *, out: str | Path | None = None,
               kind: str | None = None, seeds: str | int | None = None, sweep: bool = False,
               checkpoint_every: int = 0) -> tuple[list[BatchJob], Path]:
    """The jobs of ``nfit batch SOURCES [options]`` and the batch's directory.

    sources: signal files or globs, or one manifest (.yaml/.json); options: fit options,
    each a value or a comma-separated list (one job per value); seeds: a count N (0..N-1)
    or a list "0,1,2"; sweep: one sweep per signal, ``encoding`` and ``sigma`` being the
    sweep's lists (its seeds a count). Default directory: runs/<first signal's folder>.
    """
    options = dict(options)
    sources = list(sources)
    out_path = Path(out) if out is not None else None
    if len(sources) == 1 and sources[0].lower().endswith(MANIFEST_SUFFIXES):
        if sweep or seeds is not None:
            raise UsageError("--sweep and --seeds belong in the manifest's 'sweep' and 'seeds'")
        return load_manifest(Path(sources[0]), out_path, options, checkpoint_every, kind)
    signals = find_signals(sources)
    batch_out = out_path or Path("runs") / (signals[0].parent.resolve().name or "batch")
    sweep_spec = None
    if sweep:
        sweep_spec = {"encodings": options.pop("encoding", "gauss"), "sigmas": options.pop("sigma", "auto")}
        if seeds is not None:
            try:
                sweep_spec["seeds"] = int(seeds)
            except ValueError:
                raise UsageError(f"--seeds with --sweep is a count, got {seeds!r}") from None
            seeds = None
    elif isinstance(seeds, str) and seeds.isdigit():
        seeds = int(seeds)
    jobs = expand(signals, options, batch_out, kind=kind, seeds=seeds,
                  command="sweep" if sweep_spec else "fit", sweep=sweep_spec, checkpoint_every=checkpoint_every)
    return jobs, batch_out


def check_unique(jobs: list[BatchJob]) -> None:
    seen: dict[str, BatchJob] = {}
    for job in jobs:
        if job.name in seen:
            raise UsageError(f"two jobs would write {job.name}; give them different options or signals")
        seen[job.name] = job


def load_manifest(path: Path, out: Path | None, overrides: dict[str, Any] | None = None,
                  checkpoint_every: int = 0, kind: str | None = None) -> tuple[list[BatchJob], Path]:
    """The jobs of a YAML/JSON manifest, and the batch directory (``--out``, else the
    manifest's ``out``, else runs/<manifest name>)::

        kind: image                 # optional: from each signal's extension
        signals: [data/*.png]       # globs, relative to the manifest's folder
        seeds: 3                    # or a list
        options:                    # every fit option; a list is one job per value
          encoding: [none, basic, posenc, gauss]
          sigma: 10
        sweep: {encodings: gauss,posenc, sigmas: 1:20:8log}   # optional: one sweep per signal
        jobs:                       # and/or explicit specs, as nfit.spec writes them
          - {command: fit, kind: image, input: a.png, options: {steps: 100}}
    """
    import yaml

    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the manifest ({exc.strerror})") from None
    try:
        data = json.loads(text) if Path(path).suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise UsageError(f"{path}: not a valid manifest ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: a manifest is a mapping (signals, options, seeds, jobs)")
    check_keys(data, list(MANIFEST_KEYS), f"the manifest {path}")
    base = Path(path).parent
    batch_out = out or (base / str(data["out"]) if data.get("out") else Path("runs") / Path(path).stem)
    options = dict(data.get("options") or {})
    if not isinstance(options, dict):
        raise UsageError(f"{path}: 'options' is a mapping of option: value or list")
    options.update(overrides or {})
    jobs: list[BatchJob] = []
    if data.get("signals"):
        patterns = data["signals"] if isinstance(data["signals"], list) else [data["signals"]]
        sweep = data.get("sweep")
        if sweep is not None:
            if not isinstance(sweep, dict):
                raise UsageError(f"{path}: 'sweep' is a mapping of the sweep's fields")
            check_keys(sweep, ["encodings", "sigmas", "seeds", "rounds", "memory"], "the manifest's sweep")
        jobs += expand(find_signals([str(p) for p in patterns], base), options, batch_out,
                       kind=kind or data.get("kind"), seeds=data.get("seeds"),
                       command="sweep" if sweep is not None else str(data.get("command", "fit")),
                       sweep=sweep, checkpoint_every=checkpoint_every)
    explicit = data.get("jobs") or []
    if not isinstance(explicit, list):
        raise UsageError(f"{path}: 'jobs' is a list of specs")
    for i, entry in enumerate(explicit):
        if not isinstance(entry, dict):
            raise UsageError(f"{path}: jobs[{i}] is not a spec mapping")
        entry = dict(entry)
        if entry.get("command", "fit") not in BATCH_COMMANDS:
            raise UsageError(f"{path}: jobs[{i}]: a batch runs fit or sweep specs")
        entry.setdefault("command", "fit")
        source = Path(str(entry.get("input", "")))
        if entry.get("input") and not source.is_absolute():
            entry["input"] = str(base / source)
        if "kind" not in entry and entry.get("input"):
            entry["kind"] = infer_kind(str(entry["input"]))
        label = safe_name(str(entry.pop("name", "") or f"job{i}"))
        spec = spec_from_dict(entry)
        signal = signal_names([Path(spec.input)])[0]
        name = f"{signal}/{label}"
        spec.out = str(batch_out / name)
        if isinstance(spec, FitSpec) and checkpoint_every:
            spec.checkpoint_every = checkpoint_every
        jobs.append(BatchJob(name=name, spec=spec, signal=signal, config=label,
                             seed=spec.options.get("seed")))
    if not jobs:
        raise UsageError(f"{path}: the manifest names no signals and no jobs")
    check_unique(jobs)
    return jobs, batch_out


# ---------------------------------------------------------------------------- running


@dataclass
class JobResult:
    """What a job's run returned: status done | skipped | failed | interrupted."""

    name: str
    status: str
    metrics: dict[str, Any] = field(default_factory=dict)
    wall_time_s: float | None = None
    error: str | None = None
    attempts: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "metrics": self.metrics,
                "wall_time_s": self.wall_time_s, "error": self.error, "attempts": self.attempts}


def report_metrics(report: dict[str, Any]) -> dict[str, Any]:
    """The numbers of a job's report a table compares: each set's metrics, steps, size."""
    row: dict[str, Any] = {}
    if "chosen" in report:  # a sweep: the chosen configuration's scores
        chosen = report["chosen"]
        row["chosen_encoding"] = chosen.get("encoding")
        row["chosen_sigma"] = chosen.get("sigma")
        for key, value in chosen.items():
            if key.startswith(("train_", "val_", "test_")) and isinstance(value, int | float):
                row[key] = value
        return row
    for role in ("train", "val", "test"):
        for key, value in (report.get(role) or {}).items():
            if key != "loss" and isinstance(value, int | float):
                row[f"{role}_{key}"] = value
    for key in ("steps", "parameters", "steps_per_s"):
        if key in report:
            row[key] = report[key]
    return row


@dataclass
class Batch:
    """The jobs of one batch directory and what became of each; ``batch.json`` on disk."""

    out: Path
    jobs: list[BatchJob]
    results: dict[str, JobResult] = field(default_factory=dict)
    executor: str = "local"

    def persist(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.out / BATCH_FILE, json_safe({
            "executor": self.executor,
            "jobs": [{**j.to_dict(), **({"result": self.results[j.name].to_dict()}
                                        if j.name in self.results else {})} for j in self.jobs]}))

    @classmethod
    def load(cls, out: Path) -> Batch:
        path = Path(out) / BATCH_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise UsageError(f"{out}: not a batch directory ({BATCH_FILE} not found)") from None
        except (OSError, ValueError) as exc:
            raise UsageError(f"{path}: cannot read it ({exc})") from None
        jobs = [BatchJob.from_dict(j) for j in data["jobs"]]
        results = {j["name"]: JobResult(**{k: v for k, v in j["result"].items()})
                   for j in data["jobs"] if "result" in j}
        return cls(Path(out), jobs, results, data.get("executor", "local"))

    def status_of(self, job: BatchJob) -> str:
        if job.name in self.results:
            return self.results[job.name].status
        if (self.out / RUNNING_DIR / f"{safe_name(job.name)}.json").exists():
            return "running"
        return "pending"


def run_batch(batch: Batch, executor: Any, *, force: bool = False,
              on_event: Callable[[str, BatchJob, JobResult | None], None] | None = None) -> Batch:
    """Run every job of the batch not already finished; ``on_event(kind, job, result)`` hears
    "skipped", "started" and "finished". ``batch.json`` is kept current, and the tables are
    written at the end (also after an interruption, for the jobs that finished)."""
    event = on_event or (lambda *_: None)
    todo: list[BatchJob] = []
    batch.results = {}
    for job in batch.jobs:
        report = None if force else job.finished()
        if report is not None:
            batch.results[job.name] = JobResult(job.name, "skipped", report_metrics(report),
                                                report.get("wall_time_s"))
            event("skipped", job, batch.results[job.name])
        else:
            todo.append(job)
    batch.persist()
    by_name = {j.name: j for j in todo}

    def started(name: str) -> None:
        event("started", by_name[name], None)

    def finished(result: JobResult) -> None:
        batch.results[result.name] = result
        batch.persist()
        event("finished", by_name[result.name], result)

    try:
        executor.run([j.to_dict() for j in todo], batch.out, started, finished)
    finally:
        batch.persist()
        write_tables(batch)
        with contextlib.suppress(OSError):
            (batch.out / RUNNING_DIR).rmdir()  # only when empty: no job of it is running
    return batch


# ---------------------------------------------------------------------------- tables


def rows_of(batch: Batch) -> list[dict[str, Any]]:
    """One row per job: signal, configuration, seed, status, wall time, every metric. The
    metrics of a finished job come from its own report (the truth on disk)."""
    rows = []
    for job in batch.jobs:
        result = batch.results.get(job.name)
        metrics = dict(result.metrics) if result else {}
        report = job.finished()
        if report is not None:
            metrics = report_metrics(report)
        status = batch.status_of(job)
        if report is not None and status in ("pending", "running", "skipped"):
            status = "done"  # finished, in this run or an earlier one
        rows.append({"job": job.name, "signal": job.signal, "config": job.config, "seed": job.seed,
                     "status": status, "wall_time_s": result.wall_time_s if result else
                     (report or {}).get("wall_time_s"), **metrics,
                     "error": result.error if result else None})
    return rows


#: a sweep's choice: reported per job, never averaged
CHOICE = ("chosen_encoding", "chosen_sigma")


def metric_columns(rows: list[dict[str, Any]]) -> list[str]:
    fixed = {"job", "signal", "config", "seed", "status", "wall_time_s", "error", *CHOICE}
    keys: list[str] = []
    for row in rows:
        keys += [k for k, v in row.items() if k not in fixed and k not in keys
                 and isinstance(v, int | float) and not isinstance(v, bool)]
    order = {"test": 0, "val": 1, "train": 2}
    return sorted(keys, key=lambda k: (order.get(k.split("_")[0], 3), k))


def summary_rows(rows: list[dict[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    """Mean and sample std of each metric per configuration, over signals and seeds (the
    layout of the paper's Table 1), in the batch's order of configurations."""
    metrics = [m for m in metric_columns(rows) if m not in ("steps", "parameters", "steps_per_s")]
    configs = list(dict.fromkeys(r["config"] for r in rows))
    out = []
    for config in configs:
        mine = [r for r in rows if r["config"] == config]
        done = [r for r in mine if r["status"] in ("done", "skipped")]
        entry: dict[str, Any] = {"config": config, "jobs": len(mine), "done": len(done),
                                 "failed": sum(r["status"] == "failed" for r in mine)}
        for m in metrics:
            values = [float(r[m]) for r in done if isinstance(r.get(m), int | float)
                      and math.isfinite(float(r[m]))]
            if values:
                entry[m], entry[f"{m}_std"] = mean_std(values)
                entry[f"{m}_n"] = len(values)
        out.append(entry)
    return metrics, out


def _csv_text(header: list[str], rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=header, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in header})
    return buffer.getvalue()


def table_markdown(metrics: list[str], summary: list[dict[str, Any]]) -> str:
    header = ["configuration", *metrics, "jobs"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for entry in summary:
        cells = [entry["config"]]
        for m in metrics:
            cells.append(f"{entry[m]:.2f} ± {entry[f'{m}_std']:.2f}" if m in entry else "-")
        jobs = f"{entry['done']}/{entry['jobs']}" + (f" ({entry['failed']} failed)" if entry["failed"] else "")
        lines.append("| " + " | ".join([*cells, jobs]) + " |")
    return "\n".join(lines) + "\n"


def write_tables(batch: Batch) -> dict[str, Any]:
    """batch.csv, table.md, table.csv and table.png in the batch directory."""
    rows = rows_of(batch)
    metrics = metric_columns(rows)
    chosen = [c for c in CHOICE if any(c in r for r in rows)]
    header = ["job", "signal", "config", "seed", "status", *chosen, *metrics, "wall_time_s", "error"]
    batch.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(batch.out / "batch.csv", _csv_text(header, rows))
    shown, summary = summary_rows(rows)
    atomic_write_text(batch.out / "table.md", table_markdown(shown, summary))
    columns = ["config", "jobs", "done", "failed"] + [c for m in shown for c in (m, f"{m}_std", f"{m}_n")]
    atomic_write_text(batch.out / "table.csv", _csv_text(columns, summary))
    if any(m in e for e in summary for m in shown):
        plot_table(batch.out / "table.png", rows, shown)
    # index.html: the jobs' rows and the table above as one page
    write_batch_index(batch.out, {j.name: j for j in batch.jobs}, rows, metrics, chosen, shown, summary,
                      executor=str(getattr(batch, "executor", "")))
    return {"rows": rows, "metrics": shown, "summary": summary}


def plot_table(path: Path, rows: list[dict[str, Any]], metrics: list[str]) -> None:
    """Grouped bars: one panel per held-out metric (the training one when nothing is held
    out), a group per signal plus "all", a bar per configuration, error bars = std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nfit.io import atomic_path

    panel = [m for m in metrics if m.startswith("test_")] or [m for m in metrics if m.startswith("val_")] \
        or metrics[:1]
    panel = panel[:3]
    done = [r for r in rows if r["status"] in ("done", "skipped")]
    signals = list(dict.fromkeys(r["signal"] for r in done))
    groups = [*signals, "all"] if len(signals) > 1 else signals
    configs = list(dict.fromkeys(r["config"] for r in rows))
    fig, axes = plt.subplots(1, len(panel), figsize=(max(5.0, 1.1 * len(groups) * max(1, len(configs)) / 2.5)
                                                       * len(panel), 3.6), squeeze=False)
    width = 0.8 / max(1, len(configs))
    for ax, metric in zip(axes[0], panel):
        for i, config in enumerate(configs):
            means, stds = [], []
            for group in groups:
                values = [float(r[metric]) for r in done if r["config"] == config
                          and (group == "all" or r["signal"] == group)
                          and isinstance(r.get(metric), int | float) and math.isfinite(float(r[metric]))]
                mean, std = mean_std(values) if values else (math.nan, 0.0)
                means.append(mean)
                stds.append(std)
            xs = [g + (i - (len(configs) - 1) / 2) * width for g in range(len(groups))]
            ax.bar(xs, means, width, yerr=stds, capsize=2, label=config)
        ax.set_xticks(range(len(groups)), groups, rotation=20, ha="right")
        ax.set_ylabel(metric.replace("_", " ") + (" (dB)" if metric.endswith("psnr") else ""))
        finite = [float(r[metric]) for r in done if isinstance(r.get(metric), int | float)
                  and math.isfinite(float(r[metric]))]
        if finite and metric.endswith("psnr"):
            ax.set_ylim(max(0.0, min(finite) - 3), max(finite) + 2)
        ax.grid(axis="y", alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)


__all__ = ["BATCH_FILE", "Batch", "BatchJob", "JobResult", "expand", "load_manifest",
           "run_batch", "write_tables"]
