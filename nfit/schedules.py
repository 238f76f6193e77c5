"""Optimizers and learning-rate schedules: the rate of a step as a closed form of the step.

Every schedule is a factor on the base rate (``--lr``) of each Adam group, a function of
the fit's progress only, so a resumed fit continues it exactly and the members of a
stack, sweeps included, follow the same curve:

    p(t)      = (t - 1) / S                    t = 1..S the step being taken, S = --steps
                max((t - 1) / S, elapsed / T)  with a time budget T (--time-budget)
    warm(t)   = min(1, t / (w S))              w = --warmup (a fraction of the fit; 0 = none)
                min(1, elapsed / (w T))        with a time budget (and its step form, whichever is larger)
    constant  = 1
    cosine    = (1 + cos(pi p)) / 2            (Loshchilov & Hutter 2017, without restarts)
    exp       = 0.1 ** ((t - 1) / D)           D = --decay-steps (0: S, one decade over the fit);
                0.1 ** p                       with a time budget and D = 0

    lr(t) = --lr * warm(t) * schedule(t)

The exp form is the continuous ``exponential_decay(lr, D, 0.1)`` of the paper's 3D-shape
notebook (tancik/fourier-feature-networks, 3d_shape_occupancy: D = 5000). Under a time
budget the schedule follows the share of the budget spent, so the decay ends when the
time does; such a fit stops where the machine's speed puts it, and is not reproducible
step for step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from nfit.errors import UsageError

#: name -> factor(progress p in [0, 1), step t, decay steps D)
SCHEDULES: dict[str, Callable[[float, int, int], float]] = {
    "constant": lambda p, t, d: 1.0,
    "cosine": lambda p, t, d: 0.5 * (1.0 + math.cos(math.pi * min(p, 1.0))),
    "exp": lambda p, t, d: 0.1 ** ((t - 1) / d) if d > 0 else 0.1 ** min(p, 1.0),
}


def check_schedule(name: str, warmup: float, decay_steps: int) -> None:
    if name not in SCHEDULES:
        raise UsageError(f"unknown --schedule {name!r}; choose from: {', '.join(SCHEDULES)}")
    if not (math.isfinite(warmup) and 0.0 <= warmup < 1.0):
        raise UsageError(f"--warmup must be a fraction of the fit in [0, 1), got {warmup}")
    if decay_steps < 0:
        raise UsageError(f"--decay-steps must be 0 (the fit's length) or positive, got {decay_steps}")


def lr_factor(name: str, step: int, steps: int, *, warmup: float = 0.0, decay_steps: int = 0,
              elapsed: float = 0.0, budget: float | None = None) -> float:
    """The factor on the base rate at step ``step`` (1-based) of ``steps`` (module docstring)."""
    progress = (step - 1) / steps
    warm_share = step / steps
    if budget:
        progress = max(progress, elapsed / budget)
        warm_share = max(warm_share, elapsed / budget)
    warm = min(1.0, warm_share / warmup) if warmup > 0 else 1.0
    return warm * SCHEDULES[name](progress, step, decay_steps)


def _adam(groups: list[dict[str, Any]], lr: float) -> torch.optim.Optimizer:
    return torch.optim.Adam(groups, lr=lr, foreach=True)


def _sgd(groups: list[dict[str, Any]], lr: float) -> torch.optim.Optimizer:
    # a grid's Adam settings (betas, eps) mean nothing to gradient descent; its rate stays
    plain = [{k: v for k, v in g.items() if k in ("params", "lr")} for g in groups]
    return torch.optim.SGD(plain, lr=lr, foreach=True)


#: ``--optimizer``: name -> (parameter groups, lr) -> optimizer. Adam is the papers'
#: (Tancik et al. 2020, Instant-NGP); plain gradient descent is what the kernel studies'
#: predicted curves assume (``nfit.analysis``).
OPTIMIZERS: dict[str, Callable[[list[dict[str, Any]], float], torch.optim.Optimizer]] = {
    "adam": _adam, "sgd": _sgd}


def check_optimizer(name: str) -> None:
    if name not in OPTIMIZERS:
        raise UsageError(f"unknown --optimizer {name!r}; choose from: {', '.join(OPTIMIZERS)}")
