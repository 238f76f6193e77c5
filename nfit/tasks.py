"""A task from a file and its fit, without files: what ``nfit.api.run``, sweeps and kernel
studies share.

    task = prepare_task("image", "photo.png", cfg)     # load, split, build the problem
    result = fit_task(task, cfg)                        # build the field, train it
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from pathlib import Path

from nfit.config import FitConfig
from nfit.device import resolve_device, resolve_precision
from nfit.problem import FitResult, FitState, StepHook
from nfit.signals import Task, build_task_field, signal_kind
from nfit.train import fit, patience_of

__all__ = ["SOURCE_NAME", "fit_task", "prepare_task"]

#: the name a signal read from standard input goes by in reports ("-")
SOURCE_NAME: contextvars.ContextVar[str | None] = contextvars.ContextVar("source_name", default=None)


def prepare_task(kind: str, path: str | Path, cfg: FitConfig) -> Task:
    """Load ``path`` as a signal of ``kind`` and build its fitting problem."""
    task = signal_kind(kind).prepare(Path(path), cfg.validate())
    patience_of(cfg.patience, task.problem)  # a --patience without a validation set: before anything trains
    if SOURCE_NAME.get() is not None:
        task.meta["source"] = SOURCE_NAME.get()
    return task


def fit_task(task: Task, cfg: FitConfig,
             on_eval: Callable[[dict[str, float]], None] | None = None,
             start: FitState | None = None, on_step: StepHook | None = None) -> FitResult:
    """Build the task's field and fit it (no files: ``nfit.api.run`` writes them)."""
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    return fit(build_task_field(task, cfg), task.problem, cfg, device=device,
               precision=precision, on_eval=on_eval, start=start, on_step=on_step)
