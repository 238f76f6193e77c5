"""Figures and tables of the kernel studies, each file written atomically."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from nfit.analysis.spectral_bias import SpectralBiasResult
from nfit.analysis.study import EncodingStudy
from nfit.io import atomic_write_text
from nfit.plots import _figure, _save


def write_spectrum_csv(path: Path, columns: dict[str, np.ndarray]) -> None:
    """rank, then one column of descending eigenvalues per label."""
    names = list(columns)
    length = max(len(v) for v in columns.values())
    buffer = io.StringIO()
    buffer.write(",".join(["rank", *names]) + "\n")
    for i in range(length):
        cells = [str(i + 1)] + [f"{columns[n][i]:.9g}" if i < len(columns[n]) else ""
                                for n in names]
        buffer.write(",".join(cells) + "\n")
    atomic_write_text(path, buffer.getvalue())


def plot_spectrum(path: Path, columns: dict[str, np.ndarray], title: str,
                  normalise: bool = True) -> None:
    """Eigenvalues against rank on log-log axes; one curve per label."""
    plt, fig = _figure()
    ax = fig.add_subplot(111)
    for name, lam in columns.items():
        lam = np.asarray(lam, dtype=np.float64)
        values = lam / lam[0] if normalise else lam
        keep = values > 0
        ax.loglog(np.arange(1, len(lam) + 1)[keep], values[keep], label=name)
    ax.set_xlabel("rank")
    ax.set_ylabel("eigenvalue / largest" if normalise else "eigenvalue")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    ax.set_title(title)
    _save(plt, fig, path)


def plot_kernel_rows(path: Path, studies: Sequence[EncodingStudy]) -> None:
    """K(x0, x) / K(x0, x0) over the domain, one panel per encoding."""
    k = len(studies)
    plt, fig = _figure(3.6 * k + 0.6, 3.6)
    for i, s in enumerate(studies):
        ax = fig.add_subplot(1, k, i + 1)
        if s.row.ndim == 1:
            lo, hi = s.row_extent[:2]
            ax.plot(np.linspace(lo, hi, len(s.row)), s.row)
            ax.set_xlabel("x")
        else:
            image = ax.imshow(s.row, extent=s.row_extent, cmap="RdBu_r", vmin=-1, vmax=1)
            ax.plot([s.row_center[0]], [s.row_center[1]], "k+")
            ax.set_xlabel("x")
            ax.set_ylabel("y")
        ax.set_title(f"{s.name}: half-width {s.row_halfwidth:.3g}", fontsize=9)
    if studies and studies[0].row.ndim == 2:
        fig.colorbar(image, ax=fig.axes, fraction=0.02, pad=0.02, label="K(x0, x) / K(x0, x0)")
    _save(plt, fig, path)


def plot_prediction(path: Path, studies: Sequence[EncodingStudy]) -> None:
    """Predicted (dashed) and measured (solid) train/test PSNR over gradient-descent steps."""
    k = len(studies)
    plt, fig = _figure(4.2 * k, 3.6)
    for i, s in enumerate(studies):
        ax = fig.add_subplot(1, k, i + 1)
        steps = [r["step"] for r in s.curve]
        for role, colour in (("train", "C0"), ("test", "C1")):
            ax.plot(steps, [r[f"{role}_psnr"] for r in s.curve], "-", color=colour,
                    label=f"{role} measured")
            ax.plot(steps, [r[f"pred_{role}_psnr"] for r in s.curve], "--", color=colour,
                    label=f"{role} predicted")
        ax.set_xlabel("gradient-descent step")
        ax.set_ylabel("PSNR (dB)")
        ax.set_title(f"{s.name} (lr {s.lr:.3g}, drift {s.drift:.2g})", fontsize=9)
        ax.grid(alpha=0.3)
        if i == 0:
            ax.legend(fontsize=7)
    _save(plt, fig, path)


def p_label(p: float) -> str:
    return "p=inf" if math.isinf(p) else f"p={p:g}"


def plot_band_heatmaps(path: Path, results: Sequence[SpectralBiasResult]) -> None:
    """log10 of the relative residual per frequency (rows) over steps (columns), per p."""
    k = len(results)
    plt, fig = _figure(3.0 * k + 0.8, 3.4)
    image = None
    for i, r in enumerate(results):
        ax = fig.add_subplot(1, k, i + 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            values = np.log10(r.band_error[:, 1:].T)
        image = ax.imshow(values, aspect="auto", origin="lower", cmap="magma", vmin=-3, vmax=0.5,
                          extent=(float(r.steps[0]), float(r.steps[-1]), 0.5,
                                  r.band_error.shape[1] - 0.5))
        ax.set_title(p_label(r.p), fontsize=9)
        ax.set_xlabel("step")
        if i == 0:
            ax.set_ylabel("frequency k")
    if image is not None:
        fig.colorbar(image, ax=fig.axes, fraction=0.02, pad=0.02,
                     label="log10 |residual_k| / |y_k| (train)")
    _save(plt, fig, path)


def plot_final_errors(path: Path, results: Sequence[SpectralBiasResult], targets: np.ndarray
                      ) -> None:
    """Final train/test MSE per p (left) and the fitted functions (right)."""
    plt, fig = _figure(10.0, 3.6)
    ax = fig.add_subplot(1, 2, 1)
    labels = [p_label(r.p) for r in results]
    x = np.arange(len(results))
    ax.semilogy(x, [max(r.train_mse, 1e-12) for r in results], "o-", label="train")
    ax.semilogy(x, [max(r.test_mse, 1e-12) for r in results], "s-", label="test")
    ax.set_xticks(x, labels)
    ax.set_ylabel("final MSE")
    ax.grid(alpha=0.3)
    ax.legend()
    ax = fig.add_subplot(1, 2, 2)
    v = np.arange(len(targets)) / len(targets)
    ax.plot(v, targets, "k.", label="target (train: even, test: odd)")
    for r in results:
        ax.plot(v, r.prediction, label=p_label(r.p), lw=1)
    ax.set_xlabel("v")
    ax.legend(fontsize=6)
    _save(plt, fig, path)
