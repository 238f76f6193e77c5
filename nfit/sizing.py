"""``--params N``: size a model to a parameter budget, as representation benchmarks compare them.

One knob per family is searched, counting the parameters of the field built on the meta
device (exact, and free even for a huge candidate):

    Fourier-feature MLPs, SIREN        the hidden width (depth and features kept)
    hashgrid                           the table size 2^log2_table and the number of levels
                                       (the table is a power of two, so the levels refine it;
                                       among the counts within TOLERANCE the one with the
                                       levels nearest the configured number wins)
    densegrid, mulfagrid, --model sum  the finest resolution (levels kept)

The count is every trainable parameter (the MLP after a grid included), as report.json's
``parameters``. A budget no knob value reaches within TOLERANCE is a usage error naming
the closest count.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch

from nfit.config import FitConfig
from nfit.errors import UsageError

#: The sized model's count is within this fraction of the budget.
TOLERANCE = 0.05
MAX_WIDTH = 1 << 14
MAX_RESOLUTION = 1 << 15


def count_parameters(task: Any, cfg: FitConfig) -> int | None:
    """Trainable parameters of the task's field under ``cfg`` (None: not a valid model)."""
    from nfit.signals import build_task_field

    try:
        with torch.device("meta"):
            fld = build_task_field(task, cfg)
    except UsageError:
        return None
    return sum(p.numel() for p in fld.parameters() if p.requires_grad)


def _bisect(count: Callable[[int], int | None], lo: int, hi: int, budget: float) -> int:
    """The integer knob in [lo, hi] whose (non-decreasing) count is closest to the budget."""
    a, b = lo, hi
    while b - a > 1:
        mid = (a + b) // 2
        n = count(mid)
        if n is not None and n <= budget:
            a = mid
        else:
            b = mid
    options = [(abs(n - budget), v) for v in (a, b) if (n := count(v)) is not None]
    return min(options)[1] if options else lo


def size_to_params(task: Any, cfg: FitConfig) -> FitConfig:
    """``cfg`` with its model sized to ``cfg.params`` parameters (unchanged without it)."""
    if cfg.params is None:
        return cfg
    budget = float(cfg.params)

    def with_(**changes: Any) -> FitConfig:
        return dataclasses.replace(cfg, **changes)

    if cfg.encoding == "hashgrid":
        base_levels = cfg.levels or 16
        candidates = []
        for levels in range(max(1, base_levels - 8), base_levels + 9):
            # the count grows with the table: bisect the power of two per number of levels
            def count(t: int, levels: int = levels) -> int | None:
                return count_parameters(task, with_(log2_table=t, levels=levels))

            log2 = _bisect(count, 4, 24, budget)
            n = count_parameters(task, with_(log2_table=log2, levels=levels))
            if n is not None:
                candidates.append((abs(n - budget) > TOLERANCE * budget, abs(levels - base_levels),
                                   abs(n - budget), log2, levels))
        _, _, _, log2, levels = min(candidates)
        sized = with_(log2_table=log2, levels=levels)
        knob = f"--log2-table {log2} --levels {levels}"
    elif cfg.encoding in ("densegrid", "mulfagrid"):
        base = cfg.base_resolution or 16
        finest = _bisect(lambda r: count_parameters(task, with_(finest_resolution=r)), base,
                         MAX_RESOLUTION, budget)
        sized = with_(finest_resolution=finest)
        knob = f"--finest-resolution {finest}"
    else:
        width = _bisect(lambda w: count_parameters(task, with_(width=w)), 1, MAX_WIDTH, budget)
        sized = with_(width=width)
        knob = f"--width {width}"
    found = count_parameters(task, sized)
    if found is None or abs(found - budget) > TOLERANCE * budget:
        raise UsageError(f"--params {budget:g}: the closest {cfg.encoding} model has "
                         f"{found or 0:,} parameters ({knob}), more than "
                         f"{TOLERANCE:.0%} away; choose another budget or size it by hand")
    return sized
