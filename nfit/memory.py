"""One memory model for every fit and every sweep member, and the guard built on it.

Bytes one member adds to a fit (fp32 = 4 bytes a value; s = 2 under bf16, else 4;
P trainable parameters, F = encoding.out_dim, W width, D depth, C channels):

    parameters: the stacked copy, its gradient, two Adam moments,
                and the field it is written back into                   20 P
    cached inputs of fixed coordinates (training and held-out points):
                fixed encodings F s, grids L 2^d (8 + 4) per point      (N + E) q
    one step:   the points it draws (features or coordinates, targets)  B (F s + 2 C 4)
                activations and gradients of the rows in flight         R (5 W (D - 1) + 2 F + 4 C) 4
    evaluation: one chunk of features and hidden values                 R_e (F + 2 W) 4

B = the problem's points per step (``Problem.points_per_step``: the batch, a sampler's
draw, or the full training set); R = the rows in flight at once, which on the CPU is the
training slice (``nfit.train.slice_rows``: 8,192 rows over all members for the paper's
MLP in fp32, twice that in bf16) and on a GPU the whole step; R_e the scoring chunk.
Cached inputs above ``FEATURE_CACHE_BYTES`` are not cached.

It counts only what the fit adds to the already loaded signal. The guard compares one
member's estimate with MemAvailable from /proc/meminfo (CPU) or the GPU's free memory;
``--max-memory`` sets the limit explicitly (``16G``, ``512M``) or turns the guard ``off``.
Sweeps plan their stacks with the same per-member figure (``plan_groups``).
``bench/bench_memory.py`` compares the estimate with measured peak RSS.
"""

from __future__ import annotations

import math
import re
from collections.abc import Hashable, Sequence
from pathlib import Path

import torch

from nfit.config import FitConfig
from nfit.device import compute_dtype, resolve_device, resolve_precision
from nfit.errors import DataError, UsageError
from nfit.problem import PointSource, held_len
from nfit.signals import Task, build_task_field
from nfit.stack import stack_encodings
from nfit.train import EVAL_FULL_MAX, EVAL_SUBSET, FEATURE_CACHE_BYTES, slice_rows

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


def member_bytes(task: Task, cfg: FitConfig, precision: str = "fp32", *, k: int = 1,
                 device: torch.device | None = None) -> int:
    """The estimate in the module docstring for one member of a stack of ``k``, from shapes
    only (the field is built on the meta device, so even a huge one costs nothing)."""
    dtype = compute_dtype(precision)
    s = dtype.itemsize
    with torch.device("meta"):
        fld = build_task_field(task, cfg)
        # what the training loop caches per point, as the loop's own stack reports it
        per_point = stack_encodings([fld.encoding]).point_bytes(dtype)
    device = device if device is not None else resolve_device(cfg.device)
    features = fld.encoding.out_dim
    params = sum(p.numel() for p in fld.parameters() if p.requires_grad)
    problem = task.problem
    n_eval = sum(min(held_len(h), EVAL_SUBSET)
                 if isinstance(h, PointSource) or held_len(h) > EVAL_FULL_MAX else held_len(h)
                 for h in problem.eval_sets.values())
    n_fixed = (len(problem.train_x) if problem.sampler is None else 0) + n_eval
    cache = n_fixed * per_point
    if cache * k > FEATURE_CACHE_BYTES:
        cache = 0
    n_step = problem.points_per_step(cfg.batch_points(len(problem.train_x)))
    in_flight = min(n_step, slice_rows(k, device, cfg.width, precision)) if device.type == "cpu" else n_step
    width, depth, channels = cfg.width, cfg.depth, task.out_dim
    step = n_step * (features * s + 2 * channels * 4) + \
        in_flight * (5 * width * max(depth - 1, 0) + 2 * features + 4 * channels) * 4
    evaluation = slice_rows(k, device, cfg.width, precision) * (features + 2 * width) * 4
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


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.2f} GiB"


def guard_memory(task: Task, cfg: FitConfig, max_memory: str | None = None) -> int:
    """Refuse (DataError naming --max-memory) a fit whose estimate exceeds the limit;
    return the estimate in bytes."""
    device = resolve_device(cfg.device)
    estimate = member_bytes(task, cfg, resolve_precision(cfg.precision, device), device=device)
    if max_memory is not None:
        limit, source = parse_memory(max_memory), f"the --max-memory {max_memory} limit"
    else:
        limit, source = available_memory(device), f"the memory available on {device.type}"
    if limit is not None and estimate > limit:
        raise DataError(f"this fit needs about {_gib(estimate)}, more than {source} "
                        f"({_gib(limit)}); use fewer points (--split, --batch) or a smaller "
                        "--width/--features, or raise the limit with --max-memory SIZE "
                        "(or --max-memory off)")
    return estimate
