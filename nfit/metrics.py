"""Metrics as pure functions. PSNR is -10 log10(MSE) on values in [0, 1]."""

from __future__ import annotations

import math

import numpy as np
import torch


def psnr_from_mse(mse: float) -> float:
    """-10 log10(mse); +inf for a perfect fit, nan for a nan mse."""
    if mse != mse:  # NaN
        return float("nan")
    return float("inf") if mse <= 0 else -10.0 * math.log10(mse)


def psnr(pred: torch.Tensor, target: torch.Tensor) -> float:
    """PSNR of values in [0, 1] (peak 1), computed in float64."""
    return psnr_from_mse(float(torch.mean((pred.double() - target.double()) ** 2)))


def ssim(pred: np.ndarray, target: np.ndarray) -> float:
    """Structural similarity (scikit-image, Wang et al. 2004 with a 7x7 window) of (H, W[, C])
    images in [0, 1]; channels averaged."""
    from skimage.metrics import structural_similarity

    pred = np.asarray(pred, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    if pred.ndim == 3 and pred.shape[2] == 1:
        pred, target = pred[..., 0], target[..., 0]
    side = min(target.shape[0], target.shape[1])
    if side < 3:
        return float("nan")
    win = min(7, side if side % 2 else side - 1)
    channel_axis = 2 if pred.ndim == 3 else None
    return float(structural_similarity(pred, target, data_range=1.0, win_size=win,
                                       channel_axis=channel_axis))


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; 0 for one value) of repeated results
    (seeds, signals): the spread every table of nfit reports as ``mean ± std``."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std
