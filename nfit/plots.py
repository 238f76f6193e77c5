"""Figures (matplotlib, Agg backend), each written atomically as PNG, plus the curve CSV."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from nfit.io import atomic_write_bytes


def _figure(width: float = 6.0, height: float = 4.0):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, plt.figure(figsize=(width, height), dpi=120)


def _save(plt, fig, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def write_curve_csv(path: Path, history: Sequence[dict[str, float]]) -> None:
    columns: list[str] = []
    for row in history:
        columns += [k for k in row if k not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: (int(v) if k == "step" else f"{v:.6g}") for k, v in row.items()})
    atomic_write_bytes(path, buffer.getvalue().encode())


def plot_curve(path: Path, history: Sequence[dict[str, float]], metric: str = "psnr",
               title: str = "") -> None:
    """Train/validation/test metric against steps."""
    plt, fig = _figure()
    ax = fig.add_subplot(111)
    steps = [row["step"] for row in history]
    for role, style in (("train", "-"), ("val", ":"), ("test", "--")):
        key = f"{role}_{metric}"
        if history and key in history[0]:
            ax.plot(steps, [row[key] for row in history], style, label=role)
    ax.set_xlabel("step")
    ax.set_ylabel(metric.upper() + (" (dB)" if metric == "psnr" else ""))
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    _save(plt, fig, path)


def plot_error_map(path: Path, error: np.ndarray, title: str = "") -> None:
    """error: (H, W) absolute error in [0, 1], shown as a heat map with a colour bar."""
    h, w = error.shape
    plt, fig = _figure(6.0, 6.0 * h / max(w, 1) * 0.9 + 0.6)
    ax = fig.add_subplot(111)
    image = ax.imshow(error, cmap="inferno", vmin=0.0, vmax=max(float(error.max()), 1e-6))
    ax.set_axis_off()
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="|reconstruction - truth|")
    if title:
        ax.set_title(title)
    _save(plt, fig, path)
