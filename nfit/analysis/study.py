"""The kernel study behind ``nfit kernel``: one encoding's tangent kernel on a signal, its
spectrum, a kernel row, the predicted training curve, and the same network trained by
plain gradient descent to check the prediction.

    from nfit.tasks import prepare_task
    from nfit.analysis.study import KernelOptions, study_encoding, subsample
    task = prepare_task("image", "photo.png", cfg)
    data = subsample(task, 2048, 1024, seed=0)
    result = study_encoding(task, cfg, data, KernelOptions())

Generic over signal kinds: it reads only ``task.problem`` (training coordinates and
targets, the "test" evaluation set) and ``task.in_dim/out_dim/output``.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from nfit.analysis.ntk import make_ntk_fn
from nfit.analysis.predict import (
    eigh_desc,
    generalization_measure,
    gradient_descent_mse,
    psnr,
    stable_lr,
)
from nfit.analysis.regions import activation_regions
from nfit.config import FitConfig
from nfit.errors import DivergenceError, UsageError
from nfit.field import Field
from nfit.problem import PointSource, Problem
from nfit.train import train


@dataclass
class KernelOptions:
    """Settings of a kernel study (the CLI's options)."""

    points: int = 2048
    """training points the kernel is computed on (a random subset of the training set)"""
    test_points: int = 1024
    """held-out points for the predicted and measured test PSNR"""
    steps: int = 500
    """plain gradient-descent steps of the measured run"""
    lr: float | None = None
    """gradient-descent step; None: the stable step eta' lam_max = 1 of the initial kernel"""
    eval_every: int = 10
    """steps between recorded points of the curves"""
    ridge: float = 1e-3
    """ridge of the generalization measure, relative to the kernel's mean diagonal"""
    row_resolution: int = 128
    """grid points per axis of the kernel-row picture"""

    def validate(self) -> KernelOptions:
        if self.points < 2:
            raise UsageError(f"--points must be at least 2, got {self.points}")
        if self.test_points < 1:
            raise UsageError(f"--test-points must be at least 1, got {self.test_points}")
        if self.steps < 1:
            raise UsageError(f"--steps must be at least 1, got {self.steps}")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise UsageError(f"--lr must be a positive number or 'auto', got {self.lr}")
        if self.eval_every < 1:
            raise UsageError(f"--eval-every must be at least 1, got {self.eval_every}")
        if not (math.isfinite(self.ridge) and self.ridge > 0):
            raise UsageError(f"--ridge must be a positive number, got {self.ridge}")
        if not 8 <= self.row_resolution <= 1024:
            raise UsageError(f"--row-resolution must be in 8..1024, got {self.row_resolution}")
        return self


@dataclass
class Subset:
    """train_x: (N, d), train_y: (N, C), test_x: (M, d), test_y: (M, C), float32."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


@dataclass
class EncodingStudy:
    """Everything measured for one encoding; ``summary()`` is its report.json entry."""

    name: str
    encoding: dict[str, Any]
    eigenvalues: np.ndarray
    kernel_seconds: float
    delta: float
    lr: float
    curve: list[dict[str, float]]
    drift: float
    regions_before: int | None
    regions_after: int | None
    grid_regions: tuple[int | None, int | None]
    row: np.ndarray
    row_extent: tuple[float, float, float, float]
    row_center: list[float]
    row_halfwidth: float
    parameters: int
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        last = self.curve[-1]
        lam = self.eigenvalues
        return {
            "encoding": self.encoding, "parameters": self.parameters,
            "kernel_seconds": self.kernel_seconds,
            "eigenvalue_max": float(lam[0]), "eigenvalue_min": float(lam[-1]),
            # participation ratio (sum lam)^2 / sum lam^2: how many directions carry the kernel
            "effective_rank": float(lam.clip(0).sum() ** 2
                                    / max((lam.clip(0) ** 2).sum(), 1e-300)),
            "generalization_delta": self.delta, "lr": self.lr, "steps": int(last["step"]),
            "predicted": {"train_psnr": last["pred_train_psnr"],
                          "test_psnr": last["pred_test_psnr"]},
            "measured": {"train_psnr": last["train_psnr"], "test_psnr": last["test_psnr"]},
            "kernel_drift": self.drift,
            "activation_regions": {"before": self.regions_before, "after": self.regions_after,
                                   "grid_points": self.extra.get("grid_points"),
                                   "grid_before": self.grid_regions[0],
                                   "grid_after": self.grid_regions[1]},
            "kernel_row": {"center": self.row_center, "halfwidth": self.row_halfwidth},
            **({"grid_coverage": self.extra["grid_coverage"]} if "grid_coverage" in self.extra else {}),
            "curve": self.curve,
        }


def subsample(task: Any, points: int, test_points: int, seed: int) -> Subset:
    """A seeded random subset of the task's training points and of its "test" set
    (the training set when the task has none).

    Signals that only sample their training points (volumes: ``train_x`` empty, a
    ``sampler``) give ``points`` distinct points drawn from the sampler, and held-out sets
    held as a ``PointSource`` give ``test_points`` of theirs (``sample``)."""
    problem = task.problem
    generator = torch.Generator().manual_seed(int(seed))
    x, y = problem.train_x, problem.train_y
    if len(x) == 0:
        if problem.sampler is None:
            raise UsageError("this signal has no training points to compute a kernel on")
        x, y = _distinct_samples(problem.sampler, problem.batch or points, points, generator)
    idx = torch.randperm(len(x), generator=generator)[:points].sort().values
    held = problem.eval_sets.get("test", (x, y))
    if isinstance(held, PointSource):
        tx, ty = held.sample(min(test_points, len(held)), generator)
        return Subset(x[idx].float(), y[idx].float(), tx.float(), ty.float())
    tx, ty = held
    tidx = torch.randperm(len(tx), generator=generator)[:test_points].sort().values
    return Subset(x[idx].float(), y[idx].float(), tx[tidx].float(), ty[tidx].float())


def _distinct_samples(sampler: Any, draw: int, points: int, generator: torch.Generator,
                      rounds: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to ``points`` distinct (x, y) from a training sampler (a repeated point would add
    a duplicate row to the kernel, making it singular)."""
    xs: list[torch.Tensor] = []
    ys: list[torch.Tensor] = []
    for _ in range(rounds):
        bx, by = sampler(draw, generator)
        xs.append(bx.cpu())
        ys.append(by.cpu())
        if len(_unique_rows(torch.cat(xs))[0]) >= points:
            break
    x_all, y_all = torch.cat(xs), torch.cat(ys)
    _, first = _unique_rows(x_all)
    return x_all[first], y_all[first]


def _unique_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct rows of x and the index of each one's first occurrence, in order."""
    rows, inverse = torch.unique(x, dim=0, return_inverse=True)
    first = torch.full((len(rows),), len(x), dtype=torch.long)
    first.scatter_reduce_(0, inverse, torch.arange(len(x)), reduce="amin")
    return rows, first.sort().values


def _row_grid(train_x: torch.Tensor, resolution: int) -> tuple[torch.Tensor, torch.Tensor,
                                                              tuple[float, float, float, float]]:
    """The centre point x0 (the training point nearest the bounding-box centre) and a grid
    over the first one or two axes of the bounding box, other axes fixed at x0's."""
    lo, hi = train_x.min(0).values, train_x.max(0).values
    x0 = train_x[torch.argmin(((train_x - (lo + hi) / 2) ** 2).sum(1))]
    d = train_x.shape[1]
    axis0 = torch.linspace(float(lo[0]), float(hi[0]), resolution)
    if d == 1:
        return x0, axis0[:, None], (float(lo[0]), float(hi[0]), 0.0, 0.0)
    axis1 = torch.linspace(float(lo[1]), float(hi[1]), resolution)
    g1, g0 = torch.meshgrid(axis1, axis0, indexing="ij")  # rows follow axis 1 (image rows)
    grid = x0.repeat(resolution * resolution, 1)
    grid[:, 0], grid[:, 1] = g0.reshape(-1), g1.reshape(-1)
    return x0, grid, (float(lo[0]), float(hi[0]), float(hi[1]), float(lo[1]))


def _halfwidth(values: np.ndarray, positions: np.ndarray, center: float, baseline: float
               ) -> float:
    """Mean distance from the centre to where a normalised kernel line (1 at the centre) first
    drops below halfway to ``baseline`` (the row's median: the kernel's far-field level, which
    a constant component of the kernel lifts well above 0)."""
    values = (values - baseline) / max(1.0 - baseline, 1e-12)
    i0 = int(np.argmin(np.abs(positions - center)))
    widths = []
    for direction in (1, -1):
        i = i0
        while 0 <= i + direction < len(values) and values[i + direction] >= 0.5:
            i += direction
        if 0 <= i + direction < len(values):
            widths.append(abs(positions[i + direction] - center))
    return float(np.mean(widths)) if widths else float("nan")


def kernel_row(fld: torch.nn.Module, train_x: torch.Tensor, resolution: int
               ) -> tuple[np.ndarray, tuple[float, float, float, float], list[float], float]:
    """K(x0, x) / K(x0, x0) over a grid through the centre point x0.

    Returns (values: (R, R) for d >= 2 or (R,) for d = 1, extent, x0, half-width at half
    height above the median along axis 0: the kernel's bandwidth).
    """
    x0, grid, extent = _row_grid(train_x, resolution)
    ntk = make_ntk_fn(fld)
    row = ntk(x0[None], grid)[0]
    k00 = ntk(x0[None])[0, 0]
    values = (row / k00).cpu().numpy()
    if train_x.shape[1] == 1:
        line, positions = values, grid[:, 0].numpy()
    else:
        values = values.reshape(resolution, resolution)
        r = int(torch.argmin((grid[::resolution, 1] - x0[1]).abs()))
        line, positions = values[r], grid[:resolution, 0].numpy()
    return values, extent, x0.tolist(), _halfwidth(line, positions, float(x0[0]),
                                                   float(np.median(values)))


def _train_gd(fld: Field, data: Subset, lr: float, steps: int, eval_every: int
              ) -> dict[int, tuple[float, float]]:
    """Plain full-batch gradient descent on nfit's MSE through the training loop (``--optimizer
    sgd``, fp32); step -> (train MSE, test MSE) after that many updates."""
    device = next(iter(fld.parameters())).device

    def mse(x: torch.Tensor, y: torch.Tensor) -> float:
        with torch.no_grad():
            return float(F.mse_loss(fld(x).double(), y.double()))

    record = {0: (mse(data.train_x, data.train_y), mse(data.test_x, data.test_y))}
    if not math.isfinite(record[0][0]):
        raise UsageError(f"gradient descent diverged at step 0 with --lr {lr:g}; use a smaller --lr (or 'auto')")
    problem = Problem(data.train_x, data.train_y, {"fitted": (data.train_x, data.train_y),
                                                   "test": (data.test_x, data.test_y)})
    # every step of the curve is compared with the prediction: no early stopping
    cfg = FitConfig(steps=steps, lr=lr, optimizer="sgd", eval_every=eval_every, batch="full", precision="fp32",
                    patience=0)
    try:
        result = train([fld], problem, cfg, device=device, precision="fp32")
    except DivergenceError:
        raise UsageError(f"gradient descent diverged with --lr {lr:g}; use a smaller --lr (or 'auto')") from None
    for row in result.members[0].history:
        record[int(row["step"])] = (row["fitted_loss"], row["test_loss"])
    return record


def study_encoding(task: Any, cfg: FitConfig, data: Subset, opts: KernelOptions,
                   fld: Field | None = None) -> EncodingStudy:
    """Kernel, spectrum, kernel row, prediction and measured gradient descent for ``cfg``'s
    field (built from ``cfg.seed`` unless ``fld`` is given)."""
    from nfit.signals import build_task_field

    fld = fld if fld is not None else build_task_field(task, cfg)
    fld.eval()
    device = next(fld.parameters()).device
    xtr, ytr = data.train_x.to(device), data.train_y.to(device)
    xte, yte = data.test_x.to(device), data.test_y.to(device)
    ntk = make_ntk_fn(fld)

    start = time.perf_counter()
    k0 = ntk(xtr)
    seconds = time.perf_counter() - start
    k_test = ntk(xte, xtr).cpu().numpy()
    k0_np = k0.cpu().numpy()
    lam, _ = eigh_desc(k0_np)
    with torch.no_grad():
        f0_train = fld(xtr).double().cpu().numpy()
        f0_test = fld(xte).double().cpu().numpy()
    y_np, yte_np = ytr.double().cpu().numpy(), yte.double().cpu().numpy()
    n, c = y_np.shape
    lr = opts.lr if opts.lr is not None else stable_lr(float(lam[0]), n, c)
    delta = generalization_measure(k0_np, y_np - f0_train, opts.ridge)
    row, extent, center, halfwidth = kernel_row(fld, data.train_x.to(device), opts.row_resolution)
    # Regions are also counted on the dense grid of the kernel-row picture: N training points
    # can show at most N patterns, the grid shows how finely the slice itself is cut.
    grid = _row_grid(data.train_x, opts.row_resolution)[1].to(device)
    regions_before, grid_before = activation_regions(fld, xtr), activation_regions(fld, grid)

    trained = copy.deepcopy(fld)
    trained.train()
    record = _train_gd(trained, Subset(xtr, ytr, xte, yte), lr, opts.steps, opts.eval_every)
    trained.eval()
    k_end = make_ntk_fn(trained)(xtr)
    drift = float(torch.linalg.norm(k_end - k0) / torch.linalg.norm(k0))
    regions_after, grid_after = activation_regions(trained, xtr), activation_regions(trained, grid)

    predict = gradient_descent_mse(k0_np, y_np, lr, f0_train=f0_train, k_test_train=k_test,
                                   f0_test=f0_test)
    curve = []
    for step, (train_mse, test_mse) in sorted(record.items()):
        p_train, p_test = predict(step)
        assert p_test is not None
        curve.append({"step": float(step), "pred_train_psnr": psnr(p_train, y_np),
                      "pred_test_psnr": psnr(p_test, yte_np),
                      "train_psnr": -10 * math.log10(max(train_mse, 1e-300)),
                      "test_psnr": -10 * math.log10(max(test_mse, 1e-300))})
    return EncodingStudy(cfg.encoding, fld.encoding.spec() if hasattr(fld, "encoding") else {},
                         lam, seconds, delta, lr, curve, drift, regions_before, regions_after,
                         (grid_before, grid_after), row, extent, center, halfwidth,
                         sum(p.numel() for p in fld.parameters()),
                         {"grid_points": len(grid), **grid_coverage(task, fld, data)})


def grid_coverage(task: Any, fld: Field, data: Subset) -> dict[str, Any]:
    """For a grid encoding: per level, the share of the held-out points' interpolation
    weight on vertices that the task's training points touch (``coverage`` in
    ``nfit.grids``), computed on the full training set a fit would use (the subset when
    the task samples its points). Empty for other encodings."""
    encoding = getattr(fld, "encoding", None)
    if not hasattr(encoding, "coverage"):
        return {}
    device = next(fld.parameters()).device
    problem = task.problem
    train = problem.train_x if problem.sampler is None and len(problem.train_x) else data.train_x
    held = problem.eval_sets.get("test")
    held_x = held[0] if isinstance(held, tuple) else data.test_x
    shares = encoding.coverage(train.to(device), held_x.to(device))  # type: ignore[union-attr]
    return {"grid_coverage": [{"level": i, "resolution": r, "held_out_weight_on_trained_vertices": s}
                              for i, (r, s) in enumerate(zip(encoding.resolutions, shares,  # type: ignore[union-attr]
                                                             strict=True))]}
