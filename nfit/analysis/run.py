"""Library entry points of ``nfit kernel`` and ``nfit spectral-bias``: compute, then write.

    from nfit.analysis.run import kernel_file
    report = kernel_file("image", "photo.png", [FitConfig(encoding="gauss")], KernelOptions(),
                         "runs/photo-kernel")

Nothing is written until every computation has succeeded; a partially created output
directory that did not exist before is removed on failure.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from nfit.analysis.figures import (
    p_label,
    plot_band_heatmaps,
    plot_final_errors,
    plot_kernel_rows,
    plot_prediction,
    plot_spectrum,
    write_spectrum_csv,
)
from nfit.analysis.spectral_bias import run_spectral_bias
from nfit.analysis.study import EncodingStudy, KernelOptions, study_encoding, subsample
from nfit.config import FitConfig
from nfit.device import resolve_device
from nfit.html import write_html_report
from nfit.io import atomic_write_json

KERNEL_FILES = ["spectrum.csv", "spectrum.png", "kernel_row.png", "prediction.png", "report.json"]
SPECTRAL_BIAS_FILES = ["spectrum.csv", "spectrum.png", "bands.png", "errors.png", "report.json"]


def _write_guarded(out_dir: Path, write: Callable[[], None]) -> None:
    existed = out_dir.exists()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        write()
    except BaseException:
        if not existed:
            shutil.rmtree(out_dir, ignore_errors=True)
        raise


def kernel_file(kind: str, path: str | Path, cfgs: list[FitConfig], opts: KernelOptions,
                out_dir: str | Path,
                on_encoding: Callable[[EncodingStudy], None] | None = None, html: bool = True) -> dict[str, Any]:
    """Study the tangent kernel of each config's field on the signal in ``path`` and write
    spectrum.csv/png, kernel_row.png, prediction.png and report.json into ``out_dir``.

    The configs differ only in their encoding; the first one decides the signal's split
    and the subset of points (seeded by its ``seed``), shared by every encoding.
    """
    import torch

    from nfit.outputs import versions
    from nfit.signals import build_task_field
    from nfit.tasks import prepare_task

    opts.validate()
    out_dir = Path(out_dir)
    task = prepare_task(kind, path, cfgs[0])
    data = subsample(task, opts.points, opts.test_points, cfgs[0].seed)
    device = resolve_device(cfgs[0].device)
    studies = []
    for cfg in cfgs:
        fld = build_task_field(task, cfg.validate()).to(device)
        # Kernel analysis is about fp32 arithmetic; the default threads apply.
        with torch.autocast(device.type, enabled=False):
            study = study_encoding(task, cfg, data, opts, fld)
        studies.append(study)
        if on_encoding is not None:
            on_encoding(study)

    report: dict[str, Any] = {
        "kind": kind, "signal": task.meta, "points": len(data.train_x),
        "test_points": len(data.test_x), "outputs": task.out_dim,
        "kernel": "mean over outputs of <df_c/dtheta, df_c/dtheta'> at initialisation",
        "ridge": opts.ridge, "options": vars(opts).copy(), "device": str(device),
        "config": cfgs[0].to_dict(),
        "encodings": {s.name: s.summary() for s in studies},
        "versions": versions(), "files": KERNEL_FILES,
    }

    def write() -> None:
        columns = {s.name: s.eigenvalues for s in studies}
        write_spectrum_csv(out_dir / "spectrum.csv", columns)
        plot_spectrum(out_dir / "spectrum.png", columns,
                      f"tangent kernel spectrum, {len(data.train_x)} points")
        plot_kernel_rows(out_dir / "kernel_row.png", studies)
        plot_prediction(out_dir / "prediction.png", studies)
        if html:
            write_html_report(out_dir, report)
        atomic_write_json(out_dir / "report.json", _finite(report))

    _write_guarded(out_dir, write)
    return report


def spectral_bias_file(ps: list[float] | str, out_dir: str | Path | None = None, *, force: bool = False,
                       **kwargs: Any) -> dict[str, Any]:
    """``nfit spectral-bias``: run ``run_spectral_bias(ps, **kwargs)`` and write its figures and
    report.json (last) into ``out_dir`` (default runs/spectral-bias; an existing one needs
    ``force``). ``ps``: the exponents, or their comma-separated text. The report's "out"
    is the directory written."""
    from nfit.analysis.spectral_bias import parse_p_list
    from nfit.io import resolve_out_dir

    ps = parse_p_list(ps) if isinstance(ps, str) else ps
    out_dir = resolve_out_dir(Path(out_dir) if out_dir is not None else None, Path("runs") / "spectral-bias", force)
    targets, results = run_spectral_bias(ps, **kwargs)
    from nfit.outputs import versions

    report = {"experiment": "1D spectral bias (Tancik et al. 2020, Sec. 5)", "settings": kwargs,
              "n": len(targets), "results": [r.summary() for r in results],
              "versions": versions(), "files": SPECTRAL_BIAS_FILES}

    def write() -> None:
        columns = {p_label(r.p): r.eigenvalues for r in results}
        write_spectrum_csv(out_dir / "spectrum.csv", columns)
        plot_spectrum(out_dir / "spectrum.png", columns,
                      f"NTK spectrum on {len(targets) // 2} training points", normalise=False)
        plot_band_heatmaps(out_dir / "bands.png", results)
        plot_final_errors(out_dir / "errors.png", results, targets)
        atomic_write_json(out_dir / "report.json", _finite(report))

    _write_guarded(out_dir, write)
    return {**report, "out": str(out_dir)}


def _finite(obj: Any) -> Any:
    """JSON has no NaN/inf: write them as null (and numpy scalars as Python numbers)."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj
