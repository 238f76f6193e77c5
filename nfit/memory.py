"""One memory model for every fit and every sweep member, and the guard built on it.

It reads what the fit will do: the feed (``nfit.feeds``: how many points a step holds)
and the objective (pointwise, or the whole-grid operator step). Bytes one member adds
(fp32 = 4 bytes a value; s = 2 under bf16, else 4; P trainable parameters, F =
encoding.out_dim, W width, D depth, C channels):

    parameters: the stacked copy, its gradient, two Adam moments,
                and the field it is written back into                   20 P
    cached inputs of fixed coordinates (training and held-out points):
                fixed encodings F s, grids L 2^d (8 + 4) per point      (N + E) q
    one step, pointwise:
                the points it draws (features or coordinates, targets)  B (F s + 2 C 4)
                activations and gradients of the rows in flight         R (5 W (D - 1) + 2 F + 4 C) 4
    one step, whole grid (operator objectives):
                the grid's values, their gradient and the loss's copy    3 N 4
                one slice's graph (the only one alive), or every        R (5 W (D - 1) + 2 F + 4 C) 4
                slice's on a grid small enough to keep them all         (N in place of R)
                the operators' intermediates                           ``OperatorObjective.operator_bytes``
    evaluation: one chunk of features and hidden values                 R_e (F + 2 W) 4

B = the feed's points per step (the batch, a sampler's draw, or the full training set);
R = the rows in flight at once, which on the CPU is the training slice
(``nfit.device.slice_rows``: 8,192 rows over all members for the paper's MLP in fp32,
twice that in bf16) and on a GPU the whole pointwise step (a whole-grid step keeps its
slices on every device); R_e the scoring chunk. Cached inputs above
``FEATURE_CACHE_BYTES`` are not cached.

It counts only what the fit adds to the already loaded signal. The guard compares one
member's estimate with MemAvailable from /proc/meminfo (CPU) or the GPU's free memory;
``--max-memory`` sets the limit explicitly (``16G``, ``512M``) or turns the guard ``off``.
Sweeps plan their stacks with the same per-member figure (``plan_groups``);
``nfit.job.member_bytes`` builds a task's field on the meta device and asks ``fit_bytes``;
``nfit.job.guard_memory`` refuses a fit above the limit.
``bench/bench_memory.py`` compares the estimate with measured peak RSS.
"""

from __future__ import annotations

import math
import re
from collections.abc import Hashable, Sequence
from pathlib import Path

import torch

from nfit.config import FitConfig
from nfit.device import compute_dtype, graph_bytes_per_row, keep_grid_graphs, resolve_device, slice_rows
from nfit.errors import UsageError
from nfit.feeds import build_feed
from nfit.field import Field
from nfit.objectives import OperatorObjective
from nfit.problem import Problem
from nfit.stack import stack_encodings
from nfit.train import FEATURE_CACHE_BYTES, evaluation_points

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_memory(text: str) -> int | None:
    """'16G', '512MiB', '2.5g', '1000000' -> bytes; 'off', 'none', '0' -> None (no guard)."""
    value = text.strip().lower()
    if value in ("off", "none", "0"):
        return None
    match = re.fullmatch(r"([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kmgt]?)(?:i?b)?", value)
    if not match:
        raise UsageError(f"bad --max-memory {text!r}: expected a size like 16G or 512M, or 'off'")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def available_memory(device: torch.device) -> int | None:
    """Bytes the fit may still use on ``device``, or None where it cannot be known."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type != "cpu":
        return None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def fit_bytes(problem: Problem, fld: Field, out_dim: int, cfg: FitConfig, precision: str = "fp32", *,
              k: int = 1, device: torch.device | None = None) -> int:
    """The estimate in the module docstring for one member of a stack of ``k``, from shapes
    only: ``fld`` may live on the meta device, so even a huge one costs nothing."""
    dtype = compute_dtype(precision)
    s = dtype.itemsize
    per_point = stack_encodings([fld.encoding]).point_bytes(dtype)  # what the loop caches per point
    device = device if device is not None else resolve_device(cfg.device)
    features = fld.encoding.out_dim
    params = sum(p.numel() for p in fld.parameters() if p.requires_grad)
    feed = build_feed(problem, cfg.batch)
    cache = (feed.fixed_points() + evaluation_points(problem)) * per_point
    if cache * k > FEATURE_CACHE_BYTES:
        cache = 0
    rows = slice_rows(k, device, cfg.width, precision)
    width, depth, channels = cfg.width, cfg.depth, out_dim
    graph_per_row = graph_bytes_per_row(width, depth, features, channels)
    objective = problem.objective
    if isinstance(objective, OperatorObjective):
        kept = keep_grid_graphs(objective.points, k, width, depth, features, channels)
        step = 3 * objective.points * 4 + (objective.points if kept else rows) * graph_per_row \
            + objective.operator_bytes(1)
        if not cache:
            step += rows * features * s
    else:
        n_step = feed.points
        in_flight = min(n_step, rows) if device.type == "cpu" else n_step
        step = n_step * (features * s + 2 * channels * 4) + in_flight * graph_per_row
    evaluation = rows * (features + 2 * width) * 4
    return int(20 * params + cache + step + evaluation)


def memory_budget(device: torch.device) -> int:
    """Bytes free for new work (``available_memory``), or 8 GiB where the device does not say."""
    free = available_memory(device)
    return free if free is not None else 8 << 30


def plan_groups(shapes: Sequence[Hashable], per_member: Sequence[int], budget: int) -> list[list[int]]:
    """Split members into as few stacks as memory allows.

    shapes[k]: member k's stack key (members of different keys never share a stack);
    per_member[k]: its estimated bytes (``member_bytes``); budget: bytes available.
    Returns lists of member indices; each key's members are spread evenly over
    ceil(n / cap) groups. Raises UsageError when a single member does not fit.
    """
    groups: list[list[int]] = []
    for shape in dict.fromkeys(shapes):
        members = [i for i, s in enumerate(shapes) if s == shape]
        need = max(per_member[i] for i in members)
        if need > budget:
            raise UsageError(f"one sweep member needs about {need / 2**30:.2f} GiB but only "
                             f"{budget / 2**30:.2f} GiB is available; lower --features or --width, "
                             "or use --batch")
        cap = max(1, budget // need)
        n_groups = math.ceil(len(members) / cap)
        size = math.ceil(len(members) / n_groups)
        groups += [members[i:i + size] for i in range(0, len(members), size)]
    return groups
