"""The memory guard: refuse, before any work, a fit that would not fit in memory.

The estimate (bytes, fp32 = 4 bytes a value; N points to train on, E held-out points,
d input dims, C channels, F = encoding.out_dim, W width, D depth, B points per step,
P trainable parameters):

    weights + gradient + two Adam moments   16 P
    cached features (fixed encodings)       (N + E) F s      (s = 2 for bf16, else 4)
    one step's activations and gradients    2 B (F + 2 W (D - 1) + C) 4
    evaluation chunk                        2 min(E, 65536) (F + W) 4

It counts only what the fit adds to the already loaded signal, and is compared with
MemAvailable from /proc/meminfo (CPU) or the free memory of the GPU. ``--max-memory``
sets the limit explicitly (``16G``, ``512M``) or turns the guard ``off``.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from nfit.config import FitConfig
from nfit.device import resolve_device, resolve_precision
from nfit.errors import DataError, UsageError
from nfit.fit import EVAL_CHUNK, FEATURE_CACHE_BYTES, PointSource
from nfit.signals import Task

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


def estimate_fit_bytes(task: Task, cfg: FitConfig, precision: str = "fp32") -> int:
    """The estimate in the module docstring, from shapes only (the field is built on the
    meta device, so even a huge configuration costs nothing to estimate)."""
    from nfit.api import build_task_field

    with torch.device("meta"):
        fld = build_task_field(task, cfg)
    features = fld.encoding.out_dim
    params = sum(p.numel() for p in fld.parameters() if p.requires_grad)
    learned_encoding = any(p.requires_grad for p in fld.encoding.parameters())
    problem = task.problem
    n_train = len(problem.train_x)
    n_eval = sum(len(held) if isinstance(held, PointSource) else len(held[0])
                 for held in problem.eval_sets.values())
    batch = cfg.batch if 0 < cfg.batch < n_train else n_train
    value_bytes = 2 if precision == "bf16" else 4
    cache = (n_train + n_eval) * features * value_bytes
    if learned_encoding or problem.sampler is not None or cache > FEATURE_CACHE_BYTES:
        cache = 0
    width, depth, channels = cfg.width, cfg.depth, task.out_dim
    step = 2 * batch * (features + 2 * width * max(depth - 1, 0) + channels) * 4
    evaluation = 2 * min(n_eval, EVAL_CHUNK) * (features + width) * 4
    return 16 * params + cache + step + evaluation


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.2f} GiB"


def guard_memory(task: Task, cfg: FitConfig, max_memory: str | None = None) -> int:
    """Refuse (DataError naming --max-memory) a fit whose estimate exceeds the limit;
    return the estimate in bytes."""
    device = resolve_device(cfg.device)
    estimate = estimate_fit_bytes(task, cfg, resolve_precision(cfg.precision, device))
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
