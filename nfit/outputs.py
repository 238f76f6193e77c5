"""One output writer for every fit: the kind's own files, then the training curve, the
checkpoint, ``config.yaml``, ``report.html`` (``nfit.html``; ``--no-html`` turns it off)
and ``report.json`` (last: its presence means the fit finished).

Sweeps and batches write each member's folder through ``write_results`` too, so every fit
folder has the same files with the same meaning: ``curve.csv`` (one row per evaluation:
the step's training loss and metric, then each held-out set's; ``report.json`` says what
each set is measured on under ``metrics_on``), ``curve.png``, ``model.safetensors``.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import torch
import yaml

from nfit import __version__
from nfit.checkpoint import save_checkpoint
from nfit.config import FitConfig
from nfit.html import write_html_report
from nfit.io import atomic_write_json, atomic_write_text
from nfit.job import REPORT_FILE
from nfit.objectives import OperatorObjective
from nfit.plots import plot_curve, write_curve_csv
from nfit.problem import FitResult
from nfit.signals import Task, signal_kind

__all__ = ["versions", "write_curve", "write_results"]


def versions() -> dict[str, str]:
    return {"nfit": __version__, "torch": torch.__version__, "python": platform.python_version()}


def curve_metric(task: Task) -> str:
    """What a fit's curve plots: its PSNR where that is what it is scored by, else its loss
    (a mesh's signed distance or occupancy, scored by IoU)."""
    objective = task.problem.objective
    return "psnr" if objective.metric == "psnr" and objective.inside is None else "loss"


def write_curve(task: Task, history: list[dict[str, float]], out_dir: Path) -> list[str]:
    """curve.csv and curve.png of a fit's history rows; returns their names."""
    write_curve_csv(out_dir / "curve.csv", history)
    plot_curve(out_dir / "curve.png", history, curve_metric(task), title=Path(str(task.meta.get("source", ""))).name)
    return ["curve.csv", "curve.png"]


def metrics_on(task: Task, early: bool = False) -> dict[str, str]:
    """What each scored set of a fit is measured on (the same in curve.csv, the progress
    bar and report.json); a kind's own ``psnr_on`` says more for measurement kinds."""
    problem = task.problem
    step = "the training step's own points (its loss before the update; the full set, or that step's minibatch)"
    out = {"train (curve)": step,
           "train (report)": "every training point after the last step, in fp32"}
    if isinstance(problem.objective, OperatorObjective):
        out["train (curve)"] = "the fitted measurements at the step, before its update, in image units"
        out["train (report)"] = "the fitted measurements after the last step, in image units, in fp32"
    for name in problem.held_out():
        out[name] = "every point of the set, in fp32, in the report; during training, the same set " \
                    "or a fixed random subset of it when it is large"
    if early:
        out["report"] = "the state of the best step on validation (best_step), which the outputs and " \
                        "the checkpoint hold too; curve.csv goes on to the step where the fit stopped"
    return out


def write_results(kind: str, task: Task, cfg: FitConfig, result: FitResult,
                  out_dir: Path, job: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write every output of a fit into ``out_dir``; report.json is written last. ``job``
    (``JobSpec.record()``) is kept in the report, so the report says how to rerun it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    extra = signal_kind(kind).write_outputs(task, result, out_dir)
    extra["files"] = list(extra.get("files", [])) + write_curve(task, result.history, out_dir)
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
        "objective": task.problem.objective.to_dict(),
        "config": cfg.to_dict(),
        # the built field's spec: the options as resolved (a hash grid's derived finest
        # level, a --params size), where the config keeps what was asked
        "architecture": result.field.spec(),
        "versions": versions(),
    }
    if job is not None:
        report["job"] = job
    if "stopped" in result.extra:
        report["stopped"] = result.extra["stopped"]
    if result.extra.get("early_stopping"):
        # the outputs, the checkpoint and the metrics below are the best step's state
        report["early_stopping"] = result.extra["early_stopping"]
        report["best_step"] = result.extra["early_stopping"]["best_step"]
    if result.extra.get("feed"):
        report["feed"] = result.extra["feed"]
    report["metrics_on"] = metrics_on(task, bool(result.extra.get("early_stopping")))
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
    bits = save_checkpoint(out_dir / "model.safetensors", result.field, signal=task.meta,
                           config=cfg.to_dict(), metrics=result.metrics, store=cfg.store)
    report["checkpoint"] = {"store": cfg.store, "tensor_bits": bits,
                            "bytes": (out_dir / "model.safetensors").stat().st_size}
    samples = _signal_samples(task)
    if samples:
        # bits of the stored tensors per sample of the signal (pixels: a codec's bpp)
        report["checkpoint"][f"bits_per_{'pixel' if kind == 'image' else 'sample'}"] = bits / samples
    atomic_write_text(out_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    report["files"] = sorted(set(report.get("files", [])) |
                             {"model.safetensors", "config.yaml", "report.json"})
    write_html_report(out_dir, report)  # report.html: every output above is written
    atomic_write_json(out_dir / REPORT_FILE, report)
    return report


def _signal_samples(task: Task) -> int:
    """Points of the signal's grid (pixels, voxels); 0 for signals that are not a grid."""
    shape = task.meta.get("shape")
    if not isinstance(shape, list) or not shape:
        return 0
    n = 1
    for size in shape:
        n *= int(size)
    return n
