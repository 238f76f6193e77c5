"""Feeds: how points reach the loss, built once per fit and the only reader of ``--batch``.

    feed = build_feed(problem, cfg.batch)      # from the problem's shape and the option
    feed.start(context)                        # members, device, dtype, slice rows, cache
    for s in feed.step(step): ...              # this step's slices: inputs, targets, share

Four feeds, chosen by the problem:

- ``MinibatchFeed``: random points of a fixed training set each step (an image above
  ``AUTO_FULL_BATCH`` pixels, ``--batch N``): the set's inputs are prepared once (a
  Fourier encoding's features in the compute dtype, a grid's cell geometry) and indexed;
  each member draws its indices from its own seeded generator.
- ``FullBatchFeed``: the whole fixed set every step, in contiguous slices prepared once.
- ``SamplerFeed``: points drawn each step by the problem's sampler (a volume's voxels, a
  mesh's labelled pool; video frames read from disk next), ``--batch`` of them.
- ``GridFeed``: the whole grid of an operator problem (CT, MRI): slices of the grid's
  coordinates, which the whole-grid step evaluates twice (without, then with a graph).

``--batch``: ``auto`` (the kind's rule), ``full``, or a number of points. A sampler
refuses ``full`` (it has no fixed set), an operator problem refuses a number (its loss
couples the whole grid). Slices: on the CPU a step's points go through the members in
slices of ``slice_rows`` rows (bounded activations the allocator reuses); a GPU takes the
whole step at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from nfit.config import parse_batch
from nfit.errors import UsageError
from nfit.problem import Problem, Sampler

#: --batch auto: the full batch up to this many training points (the paper split's 256^2),
#: random minibatches beyond. Measured (bench/bench_defaults.py, kodim08 whole, equal points
#: evaluated): minibatches of 2^16 beat 2^17 by 2 dB, which beat 2^18 and the full batch;
#: on a CPU a step's cost is linear in its points, so smaller steps buy more updates.
AUTO_FULL_BATCH = 1 << 16
#: --batch auto: points per step of the random minibatches of a larger training set
AUTO_MINIBATCH = 1 << 16


def fixed_batch(text: str | int, n: int) -> int:
    """Points per step for a fixed training set of n points; 0 means the full batch.

    auto: the full batch up to AUTO_FULL_BATCH points, random minibatches of
    AUTO_MINIBATCH beyond (measured: see AUTO_FULL_BATCH)."""
    size = parse_batch(text)
    if size is None:
        size = 0 if n <= AUTO_FULL_BATCH else AUTO_MINIBATCH
    return size if 0 < size < n else 0


class MemberRNG:
    """One sampling generator per distinct member seed (members that share a seed share
    their draws, as their single fits would make the same ones)."""

    def __init__(self, seeds: list[int], device: torch.device) -> None:
        self.device = device
        self.distinct = sorted(set(seeds))
        self.generators = {s: torch.Generator(device=device).manual_seed(s) for s in self.distinct}
        self.slot = [self.distinct.index(s) for s in seeds]

    def indices(self, n: int, batch: int) -> torch.Tensor:
        """(K, batch) random indices below n, one row per member."""
        drawn = torch.stack([torch.randint(n, (batch,), device=self.device, generator=self.generators[s])
                             for s in self.distinct])
        return drawn[torch.tensor(self.slot, device=self.device)]

    def state(self) -> dict[str, torch.Tensor]:
        return {("sampler" if i == 0 else f"sampler_{i}"): self.generators[s].get_state().cpu()
                for i, s in enumerate(self.distinct)}

    def restore(self, rng: dict[str, torch.Tensor]) -> None:
        for i, s in enumerate(self.distinct):
            self.generators[s].set_state(rng["sampler" if i == 0 else f"sampler_{i}"])


@dataclass
class FeedContext:
    """What a feed needs to prepare inputs: the stacked members (``nfit.stack.Members``),
    where and in which dtype they run, the rows of one slice, whether fixed inputs are
    cached, and the members' generators."""

    members: Any
    device: torch.device
    dtype: torch.dtype
    rows: int
    cache: bool
    rng: MemberRNG


@dataclass
class Slice:
    """One slice of a step: its targets (n, C) or (K, n, C), its share n / points of the
    step (the loss weight), and what the members read: ``inputs`` prepared once (cached),
    or ``coords`` prepared when read, so a step holds one slice's inputs at a time.
    ``differentiable``: the objective differentiates through ``coords`` (an eikonal term)."""

    target: torch.Tensor
    share: float
    inputs: Any = None
    coords: torch.Tensor | None = None
    differentiable: bool = False

    def read(self, members: Any, dtype: torch.dtype) -> Any:
        return self.inputs if self.inputs is not None else members.prepare(self.coords, dtype)


class Feed:
    """Base of the feeds: ``start`` once, then ``step(step)`` gives the step's slices."""

    name = "feed"
    #: points of the step per member (the memory model's B)
    points = 0

    def fixed_points(self) -> int:
        """Training points whose inputs the feed prepares once (cached)."""
        return 0

    def start(self, ctx: FeedContext, raw: bool = False) -> None:
        """Bind to the fit; ``raw``: hand out coordinates, not prepared inputs."""
        self.ctx, self.raw = ctx, raw

    def step(self, step: int) -> list[Slice]:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"feed": self.name, "points_per_step": self.points}

    def _cut(self, x: torch.Tensor, y: torch.Tensor, n: int) -> list[Slice]:
        """Slices of drawn points x (n, d) or (K, n, d), prepared when read."""
        rows = self.ctx.rows if self.ctx.device.type == "cpu" else max(n, 1)
        return [Slice(y[..., i:i + rows, :], x[..., i:i + rows, :].shape[-2] / n, coords=x[..., i:i + rows, :],
                      differentiable=self.raw) for i in range(0, n, rows)]


class FullBatchFeed(Feed):
    """The whole fixed set every step, in contiguous slices prepared once when cached."""

    name = "full batch"
    #: slices of ``ctx.rows`` on every device (else a GPU takes the whole set at once)
    bounded = False

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y, self.points = x, y, len(x)

    def fixed_points(self) -> int:
        return len(self.x)

    def start(self, ctx: FeedContext, raw: bool = False) -> None:
        super().start(ctx, raw)
        self.x, self.y = self.x.to(ctx.device), self.y.to(ctx.device)
        rows = ctx.rows if ctx.device.type == "cpu" or self.bounded else max(len(self.x), 1)
        self.parts = [self.x[i:i + rows] for i in range(0, len(self.x), rows)]
        self.targets = [self.y[i:i + rows] for i in range(0, len(self.y), rows)]
        # Prepared once: a slice along N of one (K, N, F) tensor would be strided per member
        # and bmm would copy it in the forward and again in the backward.
        self.prepared = [ctx.members.prepare(p, ctx.dtype) for p in self.parts] \
            if ctx.cache and not raw else None

    def step(self, step: int) -> list[Slice]:
        n = len(self.x)
        return [Slice(y, len(x) / n, inputs=self.prepared[j] if self.prepared is not None else None, coords=x,
                      differentiable=self.raw)
                for j, (x, y) in enumerate(zip(self.parts, self.targets, strict=True))]


class MinibatchFeed(Feed):
    """``batch`` random points of a fixed set per member each step (cached features indexed)."""

    name = "minibatch"

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch: int) -> None:
        self.x, self.y, self.points = x, y, int(batch)

    def fixed_points(self) -> int:
        return len(self.x)

    def start(self, ctx: FeedContext, raw: bool = False) -> None:
        super().start(ctx, raw)
        self.x, self.y = self.x.to(ctx.device), self.y.to(ctx.device)
        self.features = ctx.members.prepare(self.x, ctx.dtype) \
            if ctx.cache and ctx.members.fixed and not raw else None
        self.member_rows = torch.arange(ctx.members.k, device=ctx.device)[:, None]

    def step(self, step: int) -> list[Slice]:
        idx = self.ctx.rng.indices(len(self.x), self.points)  # (K, batch)
        n = self.points
        if self.features is not None:
            feats, y = self.features[self.member_rows, idx], self.y[idx]
            rows = self.ctx.rows if self.ctx.device.type == "cpu" else n
            return [Slice(y[:, i:i + rows], feats[:, i:i + rows].shape[1] / n, inputs=feats[:, i:i + rows])
                    for i in range(0, n, rows)]
        if len(self.ctx.rng.distinct) == 1:
            x, y = self.x[idx[0]], self.y[idx[0]]
        else:
            x, y = self.x[idx], self.y[idx]
        return self._cut(x, y, n)


class SamplerFeed(Feed):
    """``batch`` points drawn each step by ``sampler(batch, generator)`` per distinct seed."""

    name = "sampler"

    def __init__(self, sampler: Sampler, batch: int) -> None:
        self.sampler, self.points = sampler, int(batch)

    def step(self, step: int) -> list[Slice]:
        rng = self.ctx.rng
        drawn = [self.sampler(self.points, rng.generators[s]) for s in rng.distinct]
        if len(drawn) == 1:
            x, y = drawn[0][0].to(self.ctx.device), drawn[0][1].to(self.ctx.device)
        else:
            x = torch.stack([drawn[j][0].to(self.ctx.device) for j in rng.slot])
            y = torch.stack([drawn[j][1].to(self.ctx.device) for j in rng.slot])
        return self._cut(x, y, x.shape[-2])


class GridFeed(FullBatchFeed):
    """The whole grid of an operator problem: its coordinates in slices (prepared once when
    cached), with no targets (the loss is on measurements). Its slices are bounded on every
    device: the whole-grid step holds one slice's graph, on a GPU too."""

    name = "whole grid"
    bounded = True

    def __init__(self, coords: torch.Tensor) -> None:
        super().__init__(coords, coords[:, :0])


def build_feed(problem: Problem, batch: str | int) -> Feed:
    """The feed of ``problem`` under ``--batch`` (see the module docstring)."""
    size = parse_batch(batch)
    if problem.grid_shape is not None:
        if size:
            raise UsageError(f"{problem.kind_name or 'this'} fits are full-batch (the loss runs through "
                             f"the operator on the whole grid); drop --batch {batch}")
        return GridFeed(problem.train_x)
    if problem.sampler is not None:
        if size == 0:
            raise UsageError(f"--batch full: a {problem.kind_name or 'sampled'} fit draws its points "
                             "each step; give a number of points (or auto)")
        return SamplerFeed(problem.sampler, size or problem.batch)
    points = fixed_batch(batch, len(problem.train_x))
    if points:
        return MinibatchFeed(problem.train_x, problem.train_y, points)
    return FullBatchFeed(problem.train_x, problem.train_y)
