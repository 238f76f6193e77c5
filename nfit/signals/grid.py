"""Signals sampled on a regular grid (images, volumes): coordinates, splits, chunked rendering.

Domain: a grid of shape (n_0, ..., n_{d-1}) covers [0, 1)^d with the coordinate of
index i along an axis being i / n (``linspace(0, 1, n + 1)[:-1]``, Tancik et al.'s
convention). Coordinates are ordered like (x, y[, z]): coordinate k belongs to array
axis d-1-k, so for an image (H, W) a point is (column / W, row / H), as in the paper's
``meshgrid(coords, coords)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from nfit.errors import UsageError


@dataclass
class Split:
    """Flat indices into the grid for each role, plus the sub-grid shape when a role is a grid.

    train/val/test: (n,) int64 flat indices. ``shapes[role]`` is set when that role's
    points form a regular sub-grid in row-major order (the paper split), so its values
    can be reshaped into an image for SSIM.
    """

    name: str
    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    shapes: dict[str, tuple[int, ...]]
    held_out: bool  # False when test == train (split "all")


def parse_split(text: str) -> tuple[str, float]:
    """'paper' | 'all' | 'random' | 'random:F' -> (kind, fraction)."""
    text = text.strip().lower()
    if text in ("paper", "all"):
        return text, 0.0
    if text.startswith("random"):
        _, _, frac = text.partition(":")
        try:
            fraction = float(frac) if frac else 0.1
        except ValueError:
            raise UsageError(f"bad --split {text!r}: expected random:F with F a number") from None
        if not 0.0 < fraction < 0.5:
            raise UsageError(f"--split random:F needs 0 < F < 0.5 (F is held out for test and again "
                             f"for validation), got {fraction}")
        return "random", fraction
    raise UsageError(f"unknown --split {text!r}; choose paper, all, or random[:F]")


def interleaved_split(shape: tuple[int, ...]) -> Split:
    """The paper's protocol generalised to d dimensions.

    train: every even index on every axis ([::2, ::2] for an image); test: every odd
    index on every axis ([1::2, 1::2]); validation: even on every axis but the last,
    odd on the last ([::2, 1::2]), which neither of the others uses.
    """
    flat = torch.arange(int(torch.tensor(shape).prod())).reshape(shape)

    def take(starts: list[int]) -> tuple[torch.Tensor, tuple[int, ...]]:
        sub = flat[tuple(slice(s, None, 2) for s in starts)]
        return sub.reshape(-1), tuple(sub.shape)

    d = len(shape)
    train, train_shape = take([0] * d)
    test, test_shape = take([1] * d)
    val, val_shape = take([0] * (d - 1) + [1])
    return Split("paper", train, val, test,
                 {"train": train_shape, "val": val_shape, "test": test_shape}, held_out=True)


def make_split(shape: tuple[int, ...], text: str, seed: int) -> Split:
    kind, fraction = parse_split(text)
    n = int(torch.tensor(shape).prod())
    if kind == "paper":
        if min(shape) < 2:
            raise UsageError(f"--split paper needs at least 2 samples per axis, got shape {shape}")
        return interleaved_split(shape)
    everything = torch.arange(n)
    if kind == "all":
        return Split("all", everything, everything, everything,
                     {r: shape for r in ("train", "val", "test")}, held_out=False)
    generator = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(n, generator=generator)
    k = max(int(round(fraction * n)), 1)
    if n - 2 * k < 1:
        raise UsageError(f"signal of {n} samples is too small for --split {text}")
    test, val, train = perm[:k].sort().values, perm[k:2 * k].sort().values, perm[2 * k:].sort().values
    return Split(f"random:{fraction:g}", train, val, test, {}, held_out=True)


def grid_coords(shape: tuple[int, ...], flat_index: torch.Tensor | None = None) -> torch.Tensor:
    """Coordinates in [0, 1)^d of grid points.

    shape: (n_0, ..., n_{d-1}); flat_index: (N,) row-major indices, or None for all.
    Returns (N, d) float32 with column k = index along axis d-1-k divided by its size.
    """
    if flat_index is None:
        flat_index = torch.arange(int(torch.tensor(shape).prod()))
    coords = []
    rest = flat_index
    for size in reversed(shape):  # last axis first: that is x
        coords.append((rest % size).to(torch.float32) / size)
        rest = rest // size
    return torch.stack(coords, dim=-1)


def render_grid(fn: Callable[[torch.Tensor], torch.Tensor], shape: tuple[int, ...], out_dim: int,
                *, device: torch.device, chunk: int | None = None) -> torch.Tensor:
    """Evaluate ``fn`` (coords (N, d) -> (N, C)) on every point of the grid, in chunks.

    Peak memory is bounded by ``chunk`` points, not the grid. Returns (*shape, C) on the CPU.
    The default chunk is ``nfit.device.eval_chunk``: 8,192 points on a CPU, whose features
    and hidden values the allocator then reuses from chunk to chunk, where 65,536-point
    chunks were fresh mappings each time, their page faults costing more than the
    arithmetic (a 4096x4096 render of the default gauss field on 2 cores: 67 s, 72 s of
    it system time, against 47 s with 8,192-point chunks); 65,536 on a GPU.
    """
    from nfit.device import eval_chunk

    chunk = chunk or eval_chunk(device)
    n = int(torch.tensor(shape).prod())
    out = torch.empty((n, out_dim), dtype=torch.float32)
    with torch.no_grad():
        for start in range(0, n, chunk):
            idx = torch.arange(start, min(start + chunk, n))
            out[start:start + len(idx)] = fn(grid_coords(shape, idx).to(device)).float().cpu()
    return out.reshape(*shape, out_dim)
