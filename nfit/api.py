"""The library entry points the CLI calls; a Python user can call them directly.

    from nfit.api import fit_file
    report = fit_file("image", "photo.png", FitConfig(encoding="gauss", sigma=10), "runs/photo")
"""

from __future__ import annotations

import platform
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml

from nfit import __version__
from nfit.checkpoint import save_checkpoint
from nfit.config import FitConfig
from nfit.device import resolve_device, resolve_precision
from nfit.field import Field, build_field
from nfit.fit import FitResult, FitState, StepHook, fit
from nfit.io import atomic_write_json, atomic_write_text
from nfit.signals import Task, signal_kind


def build_task_field(task: Task, cfg: FitConfig) -> Field:
    """The field for a task, its weights drawn from ``cfg.seed``."""
    torch.manual_seed(int(cfg.seed))
    encoding = cfg.encoding_spec()
    if "domain" in task.meta:
        # Grid encodings cover the signal's domain ([lo, hi] per axis; default [0, 1]).
        encoding.setdefault("bounds", list(task.meta["domain"]))
    return build_field({"in_dim": task.in_dim, "out_dim": task.out_dim,
                        "encoding": encoding, "network": cfg.network_spec(task.output)})


def versions() -> dict[str, str]:
    return {"nfit": __version__, "torch": torch.__version__, "python": platform.python_version()}


def fit_task(task: Task, cfg: FitConfig,
             on_eval: Callable[[dict[str, float]], None] | None = None,
             start: FitState | None = None, on_step: StepHook | None = None) -> FitResult:
    """Build the task's field and fit it; ``start``/``on_step`` resume and checkpoint
    (see nfit/job.py, which the CLI uses)."""
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    fld = build_task_field(task, cfg)
    return fit(fld, task.problem, cfg, device=device, precision=precision, on_eval=on_eval,
               start=start, on_step=on_step)


def write_results(kind: str, task: Task, cfg: FitConfig, result: FitResult,
                  out_dir: Path) -> dict[str, Any]:
    """Write every output of a fit into ``out_dir``; report.json is written last."""
    out_dir.mkdir(parents=True, exist_ok=True)
    extra = signal_kind(kind).write_outputs(task, result, out_dir)
    report: dict[str, Any] = {
        "kind": kind,
        "signal": task.meta,
        "metrics": result.metrics,
        "steps": result.steps,
        "wall_time_s": result.wall_time,
        "steps_per_s": result.steps_per_s,
        "parameters": result.field.parameter_count(),
        "device": result.device,
        "precision": result.precision,
        "config": cfg.to_dict(),
        "versions": versions(),
    }
    metric = task.problem.metric_name
    for role in ("train", "val", "test"):
        if f"{role}_{metric}" in result.metrics:
            report[role] = {metric: result.metrics[f"{role}_{metric}"],
                            "loss": result.metrics[f"{role}_loss"]}
    if "test_ssim" in extra:
        report.setdefault("test", {})["ssim"] = extra.pop("test_ssim")
    # a kind's own held-out scores (IoU, Chamfer, ...) join the test entry the CLI prints
    report.setdefault("test", {}).update(extra.pop("test_metrics", {}))
    report.update(extra)
    save_checkpoint(out_dir / "model.safetensors", result.field, signal=task.meta,
                    config=cfg.to_dict(), metrics=result.metrics)
    atomic_write_text(out_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    report["files"] = sorted(set(report.get("files", [])) |
                             {"model.safetensors", "config.yaml", "report.json"})
    atomic_write_json(out_dir / "report.json", report)
    return report


def prepare_task(kind: str, path: str | Path, cfg: FitConfig) -> Task:
    """Load ``path`` as a signal of ``kind`` and build its fitting problem."""
    return signal_kind(kind).prepare(Path(path), cfg.validate())


def fit_file(kind: str, path: str | Path, cfg: FitConfig, out_dir: str | Path,
             on_eval: Callable[[dict[str, float]], None] | None = None,
             task: Task | None = None) -> dict[str, Any]:
    """Load ``path`` as a signal of ``kind``, fit it, write the outputs, return the report.

    Nothing is written before the fit has succeeded; on failure a partially created
    ``out_dir`` that did not exist before is removed.
    """
    out_dir = Path(out_dir)
    task = task or prepare_task(kind, path, cfg)
    result = fit_task(task, cfg, on_eval)
    existed = out_dir.exists()
    try:
        return write_results(kind, task, cfg, result, out_dir)
    except BaseException:
        if not existed:
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
