"""Fits through a measurement operator (CT, MRI): the problem is the whole grid.

A measurement's loss couples every grid point (a projection sums a column of the rotated
image; a k-space sample sums the whole volume), so the problem's points are the full
grid in row-major order and its objective is an ``OperatorObjective``
(``nfit.objectives``): the training loop takes the whole-grid step, which bounds memory
by one slice's graph at any grid size, and scores every measurement set from the
field's values on the grid.

Sets: "train" (the measurements fitted), "val" (held-out measurements: views or k-space
samples the fit never sees, which ``nfit sweep`` selects on), "test" (the image against
the ground truth, when it is known: identity operator). Each set's scored MSE is
multiplied by its ``score_scale`` (to image units: 1/N^2 for sums over N pixels, 1/N for
the unnormalised DFT), so its PSNR reads like an image PSNR; the training loss itself is
the operator's own (the paper's for ``--protocol paper``).
"""

from __future__ import annotations

from nfit.errors import UsageError
from nfit.objectives import Measurement, OperatorObjective
from nfit.problem import Problem
from nfit.signals.grid import grid_coords

__all__ = ["Measurement", "measurement_problem"]


def measurement_problem(shape: tuple[int, ...], sets: dict[str, Measurement], kind: str = "") -> Problem:
    """The grid's coordinates measured through ``sets`` (``train`` required)."""
    n = 1
    for s in shape:
        n *= int(s)
    if n >= 2 ** 50:
        raise UsageError(f"grid {shape} is too large")
    objective = OperatorObjective(shape, sets)
    coords = grid_coords(shape)
    return Problem(coords, coords[:0, :1], {}, objective, kind_name=kind)
