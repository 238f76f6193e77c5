"""Choosing the encoding and its bandwidth sigma on held-out data, with stacked members.

    from nfit.tasks import prepare_task
    from nfit.sweep import parse_sigmas, run_sweep, write_sweep
    task = prepare_task("image", "photo.png", cfg)
    result = run_sweep(task, cfg, ["gauss", "posenc"], parse_sigmas("1,3,10,30,100"), seeds=2)
    write_sweep("image", task, cfg, result, Path("runs/photo-sweep"))

Every (encoding, sigma, seed) member is a single fit's field (``nfit.api.build_task_field``
with that encoding, sigma and seed); members of one field shape train together as one
stack (``nfit.train.train``: Fourier-feature MLPs, SIREN and grids alike), split into
as few groups as memory allows.

Selection is honest: a configuration (encoding, sigma) is chosen by its validation
metric averaged over seeds (the ``val`` set, disjoint from training and test); its test
metric is reported beside it and never used to choose.

``--sigma auto`` starts from the signal's sampling rate. With N training points in d
dimensions spanning an extent L per axis, the rate is r = (N^(1/d) - 1) / L samples per
unit and the Nyquist frequency f_N = r / 2. Gaussian features of scale sigma put most of
their frequencies below 2-3 sigma, and the paper's best Gaussian sigma for 256x256
training pixels (f_N = 128) is about 10, so the guess is sigma_0 = f_N / 10. The coarse
grid is sigma_0 * 4^j, j = -2..2 (f_N / 160 to 1.6 f_N), in frequencies; the paper's posenc,
whose sigma is in octaves, gets the scales that reach them, log2(1 + s), capped at its
largest (``Encoding.sigma_for_frequency``, ``max_sigma``). Each refinement round takes every
encoding's best sigma s*: at the edge of the grid it extends the grid outward by the
current factor; inside, it halves the log step (factor f -> sqrt f) and trains s*/f and
s*·f. It stops when every encoding's best is inside its bracket with a factor <= 1.25
(converged) or when the round budget is spent (reported as not converged).
"""

from __future__ import annotations

import csv
import io
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nfit.config import FitConfig
from nfit.device import resolve_device, resolve_precision
from nfit.encodings import ENCODINGS, build_encoding, encoding_names
from nfit.errors import DivergenceError, UsageError
from nfit.field import Field
from nfit.html import write_html_report
from nfit.io import atomic_write_bytes, atomic_write_json
from nfit.job import member_bytes
from nfit.memory import memory_budget, plan_groups
from nfit.metrics import mean_std
from nfit.outputs import write_results
from nfit.problem import FitResult
from nfit.signals import Task, build_task_field
from nfit.stack import stack_key
from nfit.train import train

AUTO_COARSE = tuple(4.0 ** j for j in range(-2, 3))
AUTO_START_FACTOR = 4.0
AUTO_TOLERANCE = 1.25
AUTO_ROUNDS = 4
#: fraction of the free memory the stacks may plan to use (estimates are rough)
MEMORY_FRACTION = 0.6

OnGroup = Callable[[str, int], Callable[[int], None] | None]


# ----------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class SigmaSpec:
    """What ``--sigma`` asked for: an explicit list of values, or ``auto``."""

    mode: str  # "list" or "auto"
    values: tuple[float, ...] = ()
    text: str = ""


def _positive(text: str, whole: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"bad --sigma {whole!r}: {text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise UsageError(f"bad --sigma {whole!r}: sigma must be positive and finite, got {text!r}")
    return value


def parse_sigmas(text: str) -> SigmaSpec:
    """'auto' | '1,3,10' (a list) | 'START:END:Nlog' (N log-spaced values) | 'START:END:Nlin'."""
    whole = text.strip().lower()
    if whole == "auto":
        return SigmaSpec("auto", (), whole)
    if ":" in whole:
        match = re.fullmatch(r"([^:]+):([^:]+):(\d+)(log|lin)", whole)
        if not match:
            raise UsageError(f"bad --sigma range {text!r}: expected START:END:Nlog or "
                             "START:END:Nlin, "
                             "e.g. 2:64:8log")
        a, b = _positive(match[1], text), _positive(match[2], text)
        n = int(match[3])
        if n < 2:
            raise UsageError(f"bad --sigma range {text!r}: need at least 2 values, got {n}")
        if not a < b:
            raise UsageError(f"bad --sigma range {text!r}: the start must be below the end")
        spaced = np.geomspace(a, b, n) if match[4] == "log" else np.linspace(a, b, n)
        return SigmaSpec("list", tuple(float(f"{v:.6g}") for v in spaced), whole)
    parts = [p.strip() for p in whole.split(",")]
    if not any(parts):
        raise UsageError("empty --sigma list: give values like 1,3,10, a range 2:64:8log, or auto")
    if any(not p for p in parts):
        raise UsageError(f"bad --sigma list {text!r}: empty entry between commas")
    return SigmaSpec("list", tuple(dict.fromkeys(_positive(p, text) for p in parts)), whole)


def parse_encodings(text: str) -> list[str]:
    """'gauss,posenc,laplace' -> names, checked against the registry, duplicates dropped."""
    names = [p.strip().lower() for p in text.split(",")]
    if not any(names):
        raise UsageError("empty --encoding list; choose from: " + ", ".join(encoding_names()))
    for name in names:
        if name not in ENCODINGS:
            raise UsageError(f"unknown encoding {name!r}; "
                             f"choose from: {', '.join(encoding_names())}")
    return list(dict.fromkeys(names))


# ----------------------------------------------------------------------------- members


@dataclass
class Member:
    """One trained configuration. sigma is None for encodings that take none."""

    encoding: str
    sigma: float | None
    seed: int
    round: int = 0
    group: int = -1
    field: Field | None = None
    history: list[dict[str, float]] = dataclass_field(default_factory=list)
    metrics: dict[str, float] = dataclass_field(default_factory=dict)
    diverged: bool = False
    wall_time: float = 0.0
    #: steps its stack ran, and under early stopping the step whose state it keeps
    steps: int = 0
    best_step: int | None = None
    patience: int = 0
    stopped: str = "steps"

    def config(self, base: FitConfig) -> FitConfig:
        return replace(base, encoding=self.encoding, seed=self.seed,
                       sigma=self.sigma if self.sigma is not None else base.sigma)

    @property
    def key(self) -> tuple[str, float | None]:
        return self.encoding, self.sigma


@dataclass
class SweepResult:
    members: list[Member]
    configs: list[dict[str, Any]]
    best: Member
    best_config: dict[str, Any]
    groups: list[dict[str, Any]]
    notes: list[str]
    metric: str
    device: str
    precision: str
    wall_time: float
    auto: dict[str, Any] | None = None
    bases: dict[str, FitConfig] = dataclass_field(default_factory=dict)

    def best_fit_config(self, base: FitConfig) -> FitConfig:
        """The chosen member's own FitConfig (its encoding's settings, its sigma and seed)."""
        return self.best.config(self.bases.get(self.best.encoding, base))

    def best_fit_result(self) -> FitResult:
        b = self.best
        assert b.field is not None
        steps = b.steps or (int(b.history[-1]["step"]) if b.history else 0)
        extra: dict[str, Any] = {"sweep_group": b.group, "stopped": b.stopped}
        if b.patience:
            extra["early_stopping"] = {"patience": b.patience, "score": f"val_{self.metric}",
                                       "best_step": b.best_step}
        return FitResult(b.field, b.history, b.metrics, steps, b.wall_time, self.device,
                         self.precision, extra=extra)


def nyquist_sigma(task: Task) -> tuple[float, str]:
    """The starting sigma for ``auto`` from the training points' sampling rate (see module doc)."""
    x = task.problem.train_x
    n = len(x)
    if n == 0 and task.problem.sampler is not None and task.meta.get("train_points"):
        # a sampled grid (volumes): its extent from a batch, its count from the signal
        x = task.problem.sampler(task.problem.batch or 1024, torch.Generator().manual_seed(0))[0]
        n = int(task.meta["train_points"])
    if x.ndim != 2 or len(x) < 4:
        return 10.0, "no training grid to measure; starting at sigma 10"
    d = x.shape[1]
    extent = float((x.max(dim=0).values - x.min(dim=0).values).clamp(min=1e-12).mean())
    per_axis = n ** (1.0 / d)
    rate = max(per_axis - 1.0, 1.0) / extent
    nyquist = rate / 2.0
    return nyquist / 10.0, (f"{n} training points in {d}D over extent {extent:.3g}: "
                            f"{rate:.4g} samples per unit, Nyquist {nyquist:.4g}; "
                            f"start sigma = Nyquist / 10 = {nyquist / 10:.4g}")


def _check_member_config(task: Task, bases: Mapping[str, FitConfig],
                         members: Sequence[Member]) -> None:
    """Build each distinct fixed encoding once, so a bad sigma fails before anything trains
    (learned encodings take no sigma; their settings are checked when their fields are built,
    before the first group trains)."""
    for enc, sigma in dict.fromkeys(m.key for m in members):
        if ENCODINGS[enc].trainable:
            continue
        base = bases[enc]
        build_encoding({"type": enc, "sigma": sigma if sigma is not None else base.sigma,
                        "features": base.features, "seed": base.seed}, task.in_dim)


def _group_key(fld: Field, cfg: FitConfig) -> tuple[Any, ...]:
    """Members share a stack only with one field shape (``nfit.stack.stack_key``) and one
    schedule."""
    return stack_key(fld) + (cfg.steps, cfg.lr, cfg.batch, cfg.eval_every, cfg.schedule, cfg.warmup,
                             cfg.decay_steps, cfg.time_budget, cfg.target_psnr, cfg.patience)


def train_members(task: Task, base: FitConfig | Mapping[str, FitConfig],
                  members: Sequence[Member], *, device: torch.device, precision: str,
                  memory: int | None = None, on_group: OnGroup | None = None,
                  first_group: int = 0) -> list[dict[str, Any]]:
    """Train ``members`` as stacks (``nfit.train.train``), as few as shapes and memory allow.

    base: the shared settings, or one FitConfig per encoding name. memory: bytes the
    stacks may use (default: a fraction of what is free now). Every model family stacks:
    Fourier-feature MLPs, SIREN and grids alike (``nfit.stack``). Returns one description
    per group (members, feature dimension, estimated bytes, wall time).
    """
    problem = task.problem
    bases = {m.encoding: base if isinstance(base, FitConfig) else base[m.encoding]
             for m in members}
    cfgs = [m.config(bases[m.encoding]) for m in members]
    fields = [build_task_field(task, c) for c in cfgs]
    keys = [_group_key(f, c) for f, c in zip(fields, cfgs, strict=True)]
    per = [member_bytes(task, c, precision) for c in cfgs]
    budget = memory if memory is not None else int(memory_budget(device) * MEMORY_FRACTION)
    described: list[dict[str, Any]] = []
    for g, idx in enumerate(plan_groups(keys, per, budget), start=first_group):
        shared = cfgs[idx[0]]
        fld = fields[idx[0]]
        dim = fld.encoding.out_dim
        plural = "s" * (len(idx) != 1)
        label = f"group {g + 1}: {len(idx)} member{plural}, {fld.encoding.name}, {dim} features"
        tick = on_group(label, shared.steps) if on_group else None
        hook = (lambda step, capture, tick=tick: tick(step)) if tick else None
        result = train([fields[i] for i in idx], problem, shared,
                       seeds=[members[i].seed for i in idx], device=device,
                       precision=precision, on_step=hook, stop_on_divergence=False)
        for i, r in zip(idx, result.members, strict=True):
            m = members[i]
            m.group, m.field, m.history, m.metrics = g, fields[i], r.history, r.metrics
            m.diverged, m.wall_time = r.diverged, result.wall_time
            m.steps, m.best_step, m.patience, m.stopped = result.steps, r.best_step, result.patience, result.stopped
        described.append({"group": g, "mode": "stacked", "members": len(idx),
                          "encoding": fld.encoding.name,
                          "model": type(fld.network).name,  # type: ignore[attr-defined]
                          "feature_dim": dim, "estimated_bytes": sum(per[i] for i in idx),
                          "budget_bytes": budget, "wall_time_s": result.wall_time,
                          "steps": result.steps, "stopped": result.stopped,
                          "member_steps_per_s": len(idx) * result.steps / result.wall_time
                          if result.wall_time > 0 else float("nan")})
    return described


def summarize(members: Sequence[Member], metric: str) -> list[dict[str, Any]]:
    """One row per (encoding, sigma): mean and sample std over the seeds that did not diverge."""
    rows = []
    for key in dict.fromkeys(m.key for m in members):
        group = [m for m in members if m.key == key]
        ok = [m for m in group if not m.diverged]
        row: dict[str, Any] = {"encoding": key[0], "sigma": key[1], "seeds": len(group),
                               "diverged": len(group) - len(ok)}
        for role in ("train", "val", "test"):
            values = [m.metrics.get(f"{role}_{metric}", float("nan")) for m in ok]
            values = [v for v in values if v == v]
            row[f"{role}_{metric}"], row[f"{role}_{metric}_std"] = mean_std(values) if values \
                else (float("nan"), 0.0)
        rows.append(row)
    rows.sort(key=lambda r: (r["encoding"], r["sigma"] if r["sigma"] is not None else 0.0))
    return rows


def _best(rows: Sequence[dict[str, Any]], metric: str,
          encoding: str | None = None) -> dict[str, Any] | None:
    key = f"val_{metric}"
    candidates = [r for r in rows if (encoding is None or r["encoding"] == encoding)
                  and r[key] == r[key]]
    return max(candidates, key=lambda r: r[key]) if candidates else None


def _own_sigmas(encoding: str, frequencies: Sequence[float]) -> list[float]:
    """An automatic grid laid out in frequencies, as the encoding's own sigmas (capped at
    its largest, duplicates dropped)."""
    cls = ENCODINGS[encoding]
    own = [float(f"{min(cls.sigma_for_frequency(f), cls.max_sigma):.6g}") for f in frequencies]
    return sorted(set(own))


def _tried(members: Sequence[Member], encoding: str) -> list[float]:
    return sorted(m.sigma for m in members if m.encoding == encoding and m.sigma is not None)


def plan_members(encodings: Sequence[str], sigmas: Sequence[float], seeds: Sequence[int],
                 round_: int = 0) -> tuple[list[Member], list[str]]:
    """The cross product, with encodings that take no sigma trained once per seed."""
    members: list[Member] = []
    notes: list[str] = []
    for enc in encodings:
        if ENCODINGS[enc].uses_sigma:
            members += [Member(enc, float(s), seed, round_) for s in sigmas for seed in seeds]
        else:
            members += [Member(enc, None, seed, round_) for seed in seeds]
            if len(sigmas) > 1 or round_ == 0:
                notes.append(f"encoding {enc!r} takes no sigma: trained once per seed, "
                             "not once per sigma value")
    return members, notes


def run_sweep(task: Task, base: FitConfig, encodings: Sequence[str], sigma: SigmaSpec,
              seeds: int = 1, *, rounds: int = AUTO_ROUNDS, memory: int | None = None,
              on_group: OnGroup | None = None,
              on_note: Callable[[str], None] | None = None,
              configs: Mapping[str, FitConfig] | None = None) -> SweepResult:
    """Train every (encoding, sigma, seed) member as stacks and choose on ``val``.

    seeds: how many seeds per configuration (base.seed, base.seed + 1, ...).
    rounds: refinement rounds of ``auto`` after its coarse grid.
    configs: optional settings per encoding (default ``base`` for all), e.g. a grid's own
    small MLP and lr next to the Fourier-feature encodings' (the CLI passes what
    ``nfit KIND --encoding E`` would use).
    Raises UsageError before training for bad options, DivergenceError if every member diverged.
    """
    problem = task.problem
    if "val" not in problem.held_out():
        raise UsageError("a sweep selects on a validation split, and this split has none; "
                         "use --split paper or random:F")
    if seeds < 1:
        raise UsageError(f"--seeds must be at least 1, got {seeds}")
    if rounds < 0:
        raise UsageError(f"--rounds must be 0 or more, got {rounds}")
    if not encodings:
        raise UsageError("empty --encoding list")
    device = resolve_device(base.device)
    precision = resolve_precision(base.precision, device)
    # PSNR or accuracy, or the kind's own choice (IoU for meshes)
    metric = problem.objective.select
    seed_list = [base.seed + i for i in range(seeds)]
    notes: list[str] = []
    bases = {e: (configs or {}).get(e, base) for e in encodings}

    def note(text: str) -> None:
        notes.append(text)
        if on_note:
            on_note(text)

    auto: dict[str, Any] | None = None
    if sigma.mode == "auto":
        start, why = nyquist_sigma(task)
        grid = [float(f"{start * f:.6g}") for f in AUTO_COARSE]
        auto = {"start_sigma": start, "reason": why, "coarse_grid": grid, "rounds": [],
                "round_budget": rounds, "tolerance": AUTO_TOLERANCE}
        # the grid is in frequencies; an encoding whose sigma is not one (posenc's octaves)
        # gets the sigmas that reach them
        grids = {e: _own_sigmas(e, grid) for e in encodings}
        if any(g != grid for g in grids.values()):
            auto["coarse_grids"] = {e: g for e, g in grids.items() if g != grid}
        members, plan_notes = [], []
        for enc in encodings:
            own, own_notes = plan_members([enc], grids[enc], seed_list)
            members += own
            plan_notes += own_notes
    else:
        grid = list(sigma.values)
        members, plan_notes = plan_members(encodings, grid, seed_list)
    for text in plan_notes:
        note(text)
    _check_member_config(task, bases, members)

    start_time = time.perf_counter()
    groups = train_members(task, bases, members, device=device, precision=precision,
                           memory=memory, on_group=on_group)
    if auto is not None:
        sigma_encodings = [e for e in encodings if ENCODINGS[e].uses_sigma]
        factor = {e: AUTO_START_FACTOR for e in sigma_encodings}
        done = {e: False for e in sigma_encodings}
        for r in range(1, rounds + 1):
            rows = summarize(members, metric)
            new: list[Member] = []
            for enc in sigma_encodings:
                tried = _tried(members, enc)
                best = _best(rows, metric, enc)
                if best is None:
                    continue
                s = best["sigma"]
                if s == tried[0]:
                    proposals = [s / factor[enc]]
                elif s == tried[-1]:
                    proposals = [s * factor[enc]]
                else:
                    if factor[enc] <= AUTO_TOLERANCE:
                        done[enc] = True
                        continue
                    factor[enc] = math.sqrt(factor[enc])
                    proposals = [s / factor[enc], s * factor[enc]]
                proposals = [float(f"{min(p, ENCODINGS[enc].max_sigma):.6g}") for p in proposals]
                proposals = [p for p in proposals if p not in tried]
                new += [Member(enc, p, seed, r) for p in proposals for seed in seed_list]
            if not new:
                break
            _check_member_config(task, bases, new)
            groups += train_members(task, bases, new, device=device, precision=precision,
                                    memory=memory, on_group=on_group, first_group=len(groups))
            members += new
            new_sigmas = sorted({float(m.sigma or 0.0) for m in new})
            auto["rounds"].append({"round": r, "sigmas": new_sigmas, "factor": dict(factor)})
        # Converged: the best sigma is inside what was tried, bracketed at the tolerance.
        rows = summarize(members, metric)
        for enc in sigma_encodings:
            best = _best(rows, metric, enc)
            tried = _tried(members, enc)
            inside = best is not None and tried[0] < best["sigma"] < tried[-1]
            done[enc] = bool(inside and factor[enc] <= AUTO_TOLERANCE)
        auto["converged"] = dict(done)
        auto["rounds_used"] = len(auto["rounds"])
        auto["final_factor"] = dict(factor)
        for enc, ok in done.items():
            if not ok:
                note(f"auto: {enc} did not converge within {rounds} refinement rounds "
                     f"(bracket factor {factor[enc]:.3g}); raise --rounds")
    wall = time.perf_counter() - start_time

    rows = summarize(members, metric)
    best_row = _best(rows, metric)
    if best_row is None:
        raise DivergenceError("every member of the sweep diverged; try a lower --lr")
    chosen = [m for m in members if m.key == (best_row["encoding"], best_row["sigma"])
              and not m.diverged]
    best_member = max(chosen, key=lambda m: m.metrics.get(f"val_{metric}", -math.inf))
    if any(m.diverged for m in members):
        note(f"{sum(m.diverged for m in members)} member(s) diverged and were not considered")
    for row in rows:
        row["best"] = row is best_row
    return SweepResult(members, rows, best_member, best_row, groups, notes, metric, str(device),
                       precision, wall, auto, bases)


# ----------------------------------------------------------------------------- outputs


def member_rows(result: SweepResult) -> list[dict[str, Any]]:
    metric = result.metric
    rows = []
    for m in result.members:
        row: dict[str, Any] = {"encoding": m.encoding, "sigma": m.sigma, "seed": m.seed,
                               "round": m.round, "group": m.group, "diverged": m.diverged}
        for role in ("train", "val", "test"):
            for what in ("loss", metric):
                row[f"{role}_{what}"] = m.metrics.get(f"{role}_{what}", float("nan"))
        # scores are of the member's best state on validation under early stopping
        row["steps"], row["best_step"] = m.steps, m.best_step
        rows.append(row)
    return rows


def _csv(rows: Sequence[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else f"{v:.6g}" if isinstance(v, float) else v)
                         for k, v in row.items()})
    return buffer.getvalue()


def plot_sweep(path: Path, result: SweepResult, title: str = "") -> None:
    """Train/validation/test metric against sigma (log axis), one colour per encoding."""
    from nfit.plots import _figure, _save

    plt, fig = _figure(7.0, 4.5)
    ax = fig.add_subplot(111)
    metric = result.metric
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, enc in enumerate(dict.fromkeys(r["encoding"] for r in result.configs)):
        colour = colours[i % len(colours)]
        rows = [r for r in result.configs if r["encoding"] == enc]
        if rows[0]["sigma"] is None:  # no sigma: a level line at its validation value
            ax.axhline(rows[0][f"val_{metric}"], color=colour, ls=":", lw=1,
                       label=f"{enc} (no sigma), val")
            continue
        sig = [r["sigma"] for r in rows]
        for role, style in (("train", "-"), ("val", ":"), ("test", "--")):
            ax.plot(sig, [r[f"{role}_{metric}"] for r in rows], style, color=colour, marker=".",
                    label=f"{enc} {role}")
    best = result.best_config
    if best["sigma"] is not None:
        ax.plot([best["sigma"]], [best[f"val_{metric}"]], "*", color="black", ms=12,
                label=f"chosen: {best['encoding']} sigma={best['sigma']:g}")
    ax.set_xscale("log")
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("sigma")
    ax.set_ylabel(metric.upper() + (" (dB)" if metric == "psnr" else ""))
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, ncol=2)
    if title:
        ax.set_title(title)
    _save(plt, fig, path)


def sweep_report(kind: str, task: Task, base: FitConfig, result: SweepResult) -> dict[str, Any]:
    metric = result.metric
    best = result.best
    total_member_steps = sum(g["members"] * g.get("steps", base.steps) for g in result.groups)
    return {
        "kind": kind,
        "signal": task.meta,
        "metric": metric,
        "selection": f"highest mean validation {metric} over seeds; test is reported, never used",
        "chosen": {"encoding": best.encoding, "sigma": best.sigma,
                   f"val_{metric}": result.best_config[f"val_{metric}"],
                   f"test_{metric}": result.best_config[f"test_{metric}"],
                   f"train_{metric}": result.best_config[f"train_{metric}"],
                   "seeds": result.best_config["seeds"]},
        "best_member": {"encoding": best.encoding, "sigma": best.sigma, "seed": best.seed,
                        **{k: v for k, v in best.metrics.items()}},
        "configs": result.configs,
        "members": member_rows(result),
        "groups": result.groups,
        "chosen_config": result.best_fit_config(base).to_dict(),
        "notes": result.notes,
        "auto": result.auto,
        "steps": base.steps,
        "wall_time_s": result.wall_time,
        "member_steps_per_s": total_member_steps / result.wall_time if result.wall_time else None,
        "device": result.device,
        "precision": result.precision,
        "config": base.to_dict(),
    }




def write_sweep(kind: str, task: Task, base: FitConfig, result: SweepResult,
                out_dir: Path, job: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write sweep.csv, sweep.png, the chosen member's outputs as ``nfit <kind>`` writes
    them (model.safetensors, reconstruction, report.json, ...), then sweep.json last."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out_dir / "sweep.csv", _csv(member_rows(result)).encode())
    plot_sweep(out_dir / "sweep.png", result, title=Path(str(task.meta.get("source", ""))).name)
    best_report = write_results(kind, task, result.best_fit_config(base), result.best_fit_result(),
                                out_dir, job=job)
    report = sweep_report(kind, task, base, result)
    if job is not None:
        report["job"] = job
    report["files"] = sorted(set(best_report.get("files", [])) |
                             {"sweep.csv", "sweep.png", "sweep.json"})
    report["out"] = str(out_dir)
    atomic_write_json(out_dir / "sweep.json", report)
    write_html_report(out_dir, report)  # the sweep's page over the chosen member's
    return report
