"""Fits through a measurement operator (CT, MRI): the objective sees the field on the whole grid.

A measurement's loss couples every grid point (a projection sums a column of the rotated
image; a k-space sample sums the whole volume), while the training loop hands the
objective its predictions in slices (``nfit.train``: CPU slices, scoring chunks). So the
problem's points are the full grid, in row-major order, and its targets are **tags**,
``set * N + flat index`` (float64, exact), that say which measurement set a slice belongs
to and where it sits. ``MeasurementObjective`` collects the slices of one pass; at the
slice that completes the grid it forms the (K, N) prediction, applies that set's forward
operator and returns the pass's loss, so the step's gradient is exactly the full-batch
gradient of ``mean |A f - y|^2`` (earlier slices return a zero loss and keep their graphs
alive until then: memory is that of the whole batch, as on a GPU). Scoring (``point_loss``)
works the same way, the set's value landing on the last chunk.

Sets: "train" (the measurements fitted), "val" (held-out measurements: views or k-space
samples the fit never sees, which ``nfit sweep`` selects on), "test" (the image against
the ground truth, when it is known: identity operator). Each set's scored MSE is
multiplied by its ``score_scale`` (to image units: 1/N^2 for sums over N pixels, 1/N for
the unnormalised DFT), so its PSNR reads like an image PSNR; the training loss itself is
the operator's own (the paper's for ``--protocol paper``).

This needs full batches in grid order: the kinds refuse ``--batch``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from nfit.config import FitConfig
from nfit.errors import UsageError
from nfit.metrics import psnr_from_mse
from nfit.problem import HeldOut, Objective, Problem
from nfit.signals.grid import grid_coords

ROLES = ("train", "val", "test")


@dataclass
class Measurement:
    """forward: (K, N) predictions -> (K, ...) measurements like ``data`` (real or complex);
    data: the measured values (no K axis); score_scale: multiplies the scored MSE."""

    forward: Callable[[torch.Tensor], torch.Tensor]
    data: torch.Tensor
    score_scale: float = 1.0
    cache: dict[str, torch.Tensor] = field(default_factory=dict)

    def residual_mse(self, pred: torch.Tensor) -> torch.Tensor:
        """(K, N) -> (K,) mean squared magnitude of forward(pred) - data."""
        data = self.cache.get(str(pred.device))
        if data is None:
            data = self.cache.setdefault(str(pred.device), self.data.to(pred.device))
        # the operators run in fp32 whatever the network's precision (sparse products and FFTs
        # have no bf16 kernels on the CPU, and the residual is the loss)
        with torch.autocast(pred.device.type, enabled=False):
            diff = self.forward(pred.float()) - data.unsqueeze(0)
        sq = diff.real ** 2 + diff.imag ** 2 if diff.is_complex() else diff ** 2
        return sq.reshape(sq.shape[0], -1).mean(dim=1)


class MeasurementObjective(Objective):
    """The loss and scores of fits through an operator; see the module docstring."""

    name = "measurement_mse"
    metric = "psnr"

    def __init__(self, n: int, sets: dict[str, Measurement], data_loss: str = "mse") -> None:
        super().__init__()
        self.n, self.sets = int(n), sets
        self.codes = {name: ROLES.index(name) for name in sets}
        self.data_loss = data_loss
        self._parts: list[torch.Tensor] = []
        self._filled, self._code = 0, -1

    def tags(self, role: str) -> torch.Tensor:
        """(N, 1) float64 targets of ``role``: code * N + flat index."""
        return (self.codes[role] * self.n + torch.arange(self.n, dtype=torch.float64))[:, None]

    def _collect(self, pred: torch.Tensor, target: torch.Tensor) -> tuple[str, torch.Tensor] | None:
        """Add one slice; return (role, (K, N) prediction) when the slice completes the grid."""
        tags = target[0] if target.dim() == 3 else target
        first = int(tags[0, 0])
        code, index = divmod(first, self.n)
        if index == 0:
            self._parts, self._filled, self._code = [], 0, code
        if code != self._code or index != self._filled:
            raise RuntimeError("measurement objective: slices must arrive in grid order, one set at a time "
                               "(full batches only)")
        self._parts.append(pred[..., 0].float())
        self._filled += pred.shape[1]
        if self._filled < self.n:
            return None
        whole = torch.cat(self._parts, dim=1)
        self._parts, self._filled = [], 0
        return ROLES[code], whole

    def terms(self, pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """pred (K, n, 1), target tags (n, 1) -> {"data": (K,)}: the pass's loss on its last slice,
        scaled so that the loop's weighting by the slice's share gives the whole loss."""
        done = self._collect(pred, target)
        k, n = pred.shape[0], pred.shape[1]
        if done is None:
            zero = torch.zeros(k, device=pred.device)
            return {"data": zero.requires_grad_() if torch.is_grad_enabled() else zero}
        role, whole = done
        return {"data": self.sets[role].residual_mse(whole) * (self.n / n)}

    def point_loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(K, n, 1) -> (K, n) float64 whose sum over a whole pass is the set's scored MSE times N."""
        done = self._collect(pred, target)
        k, n = pred.shape[0], pred.shape[1]
        out = torch.zeros(k, n, dtype=torch.float64, device=pred.device)
        if done is not None:
            role, whole = done
            with torch.no_grad():
                mse = self.sets[role].residual_mse(whole).double() * self.sets[role].score_scale
            out += (mse * (self.n / n))[:, None]
        return out

    def metric_of(self, loss: float, hits: float, count: int) -> float:
        return psnr_from_mse(loss)

    def to_dict(self) -> dict[str, Any]:
        return {"loss": self.name, "metric": self.metric, "select": self.select,
                "sets": {name: {"score_scale": s.score_scale} for name, s in self.sets.items()}}


def measurement_problem(shape: tuple[int, ...], sets: dict[str, Measurement]) -> Problem:
    """The grid's coordinates with tag targets for each set (``train`` required)."""
    n = 1
    for s in shape:
        n *= int(s)
    if n >= 2 ** 50:
        raise UsageError(f"grid {shape} is too large")
    objective = MeasurementObjective(n, sets)
    coords = grid_coords(shape)
    evals: dict[str, HeldOut] = {role: (coords, objective.tags(role)) for role in ("val", "test") if role in sets}
    return Problem(coords, objective.tags("train"), evals, objective)


def require_full_batch(kind: str, cfg: FitConfig) -> None:
    if cfg.batch_size() != 0:
        raise UsageError(f"{kind} fits are full-batch (the loss runs through the operator on the "
                         f"whole grid); drop --batch {cfg.batch}")
