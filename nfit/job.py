"""What makes a job safe to run, stop and rerun; ``nfit.api.run`` puts it together.

For every signal kind:

- checks before any output exists: targets and coordinates finite, memory estimate
  within what is available (``nfit.memory``);
- SIGINT/SIGTERM are deferred to the end of the current step, where the fit state is
  saved to ``DIR/resume.safetensors`` and ``Interrupted`` (exit 130/143) is raised;
  a second Ctrl-C stops at once;
- ``checkpoint_every=S`` saves that state every S steps, so a SIGKILL loses at most S
  steps; a divergence keeps the last good state and says so;
- ``resume=True`` continues from the saved state, bit-identically on the CPU.

The output directory holds only ``resume.safetensors`` until the fit completes; then the
outputs are written (each atomically), ``report.json`` last as the completion marker,
and the resume state is removed.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nfit.config import FitConfig
from nfit.device import resolve_device, resolve_precision
from nfit.errors import DataError, Interrupted, UsageError
from nfit.memory import available_memory, fit_bytes, parse_memory
from nfit.problem import FitState, PointSource
from nfit.resume import RESUME_FILE, file_sha256, save_resume
from nfit.signals import Task, build_task_field

REPORT_FILE = "report.json"


@dataclass
class StopFlag:
    """The signal number received while signals are deferred, or None."""

    signum: int | None = None


@contextlib.contextmanager
def stop_handler(handler: Callable[[int, Any], None]) -> Iterator[None]:
    """``handler`` for SIGINT and SIGTERM within the block; the previous ones after it."""
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextlib.contextmanager
def deferred_signals() -> Iterator[StopFlag]:
    """Within the block SIGINT and SIGTERM only set the flag (the fit loop acts on it at a
    step boundary, where the state is consistent); a second SIGINT raises at once. The
    previous handlers come back on exit, and a signal that arrived after the last step
    is re-delivered to them."""
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag  # signal handlers can only be installed from the main thread
        return

    def handler(signum: int, frame: Any) -> None:
        if flag.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag.signum = signum

    with stop_handler(handler):
        yield flag
    if flag.signum is not None:
        signal.raise_signal(flag.signum)


class Checkpointer:
    """The ``on_step`` hook of a job: saves the state every ``every`` steps and when a
    signal is pending, then stops the fit with ``Interrupted``."""

    def __init__(self, out_dir: Path, job: dict[str, Any], every: int, total: int,
                 flag: StopFlag) -> None:
        self.out_dir, self.job, self.every, self.total, self.flag = out_dir, job, every, total, flag
        self.saved_step: int | None = None

    def __call__(self, step: int, capture: Callable[[], FitState]) -> None:
        stop = self.flag.signum
        if stop is None and not (self.every and step % self.every == 0 and step < self.total):
            return
        path = save_resume(self.out_dir, capture(), self.job)
        self.saved_step = step
        if stop is not None:
            self.flag.signum = None  # handled here; not re-delivered
            name = signal.Signals(stop).name
            raise Interrupted(f"interrupted by {name} at step {step} of {self.total}; the fit "
                              f"state is saved in {path}; continue with: nfit resume "
                              f"{self.out_dir}", stop)


def check_finite(task: Task, path: Path) -> None:
    """Refuse a signal whose targets or coordinates hold NaN or Inf (every kind)."""
    problem = task.problem
    tensors = [problem.train_x, problem.train_y]
    for held in problem.eval_sets.values():
        if not isinstance(held, PointSource):  # sources check their own values when loading
            tensors += list(held)
    if problem.sampler is not None:
        tensors += list(problem.sampler(problem.batch or 1024, torch.Generator().manual_seed(0)))
    bad = sum(int((~torch.isfinite(t)).sum()) for t in tensors if t.is_floating_point())
    if bad:
        raise DataError(f"{path}: the signal holds {bad:,} NaN or infinite values; nfit does "
                        "not fit them (clean or mask them in the file)")


def resume_state_of(out_dir: Path) -> Path | None:
    path = Path(out_dir) / RESUME_FILE
    return path if path.exists() else None


def find_resumable(default: Path) -> Path | None:
    """Among the default output directories (runs/photo, runs/photo-2, ...), the last one
    that holds an unfinished fit."""
    found, candidate, n = None, default, 1
    while candidate.exists():
        if (candidate / RESUME_FILE).exists() and not (candidate / REPORT_FILE).exists():
            found = candidate
        n += 1
        candidate = default.with_name(f"{default.name}-{n}")
    return found


def check_out_dir_state(out_dir: Path, state: Path | None, resume: bool, force: bool) -> None:
    """A directory holding an unfinished fit (``state``) needs --resume (continue) or
    --force (restart)."""
    if resume and (out_dir / REPORT_FILE).exists() and state is None:
        raise UsageError(f"--resume: the fit in {out_dir} is already complete ({REPORT_FILE})")
    if state is not None and not resume and not force:
        raise UsageError(f"--out {out_dir} holds an unfinished fit ({RESUME_FILE}); pass "
                         "--resume to continue it or --force to start over")


def check_same_job(state_path: Path, job: dict[str, Any], kind: str, cfg: FitConfig,
                    source: Path) -> None:
    if job.get("kind") != kind:
        raise UsageError(f"--resume: {state_path} is a {job.get('kind')} fit, not {kind}")
    saved = job.get("config", {})
    changed = sorted(k for k, v in cfg.to_dict().items() if saved.get(k) != v)
    if changed:
        raise UsageError(f"--resume: options differ from the interrupted fit "
                         f"({', '.join(changed)}); resume with the same options, or use "
                         "--force to start over")
    if job.get("source_sha256") != file_sha256(source):
        raise DataError(f"--resume: {source} changed since the fit started; start over "
                        "with --force")


def member_bytes(task: Task, cfg: FitConfig, precision: str = "fp32", *, k: int = 1,
                 device: torch.device | None = None) -> int:
    """The memory model (``nfit.memory.fit_bytes``) of one member of a task's fit."""
    with torch.device("meta"):
        fld = build_task_field(task, cfg)
    return fit_bytes(task.problem, fld, task.out_dim, cfg, precision, k=k, device=device)


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.2f} GiB"


def guard_memory(task: Task, cfg: FitConfig, max_memory: str | None = None) -> int:
    """Refuse (DataError naming --max-memory) a fit whose estimate exceeds the limit;
    return the estimate in bytes."""
    device = resolve_device(cfg.device)
    estimate = member_bytes(task, cfg, resolve_precision(cfg.precision, device), device=device)
    if max_memory is not None:
        limit, source = parse_memory(max_memory), f"the --max-memory {max_memory} limit"
    else:
        limit, source = available_memory(device), f"the memory available on {device.type}"
    if limit is not None and estimate > limit:
        raise DataError(f"this fit needs about {_gib(estimate)}, more than {source} "
                        f"({_gib(limit)}); use fewer points (--split, --batch) or a smaller "
                        "--width/--features, or raise the limit with --max-memory SIZE "
                        "(or --max-memory off)")
    return estimate
