"""What a fit is asked to do, below every signal kind: the problem and its results.

A signal kind (``nfit.signals``) turns a file into a ``Problem``: training points (or a
sampler that draws them, or a grid measured through operators), held-out sets, and the
objective (``nfit.objectives``) that says what the field minimises and how it is scored.
The training loop (``nfit.train``) reads nothing else: a feed (``nfit.feeds``) brings the
points to the loss, so a new kind of signal is a problem with its objective, in one place.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch

from nfit.objectives import AnyObjective, Objective, OperatorObjective

if TYPE_CHECKING:
    from nfit.field import Field


@runtime_checkable
class PointSource(Protocol):
    """A held-out set produced on demand instead of held as (x, y) tensors.

    ``chunks(size)`` yields every point once as (x: (n, d), y: (n, C)) with n <= size;
    ``sample(n, generator)`` returns n points drawn at random (generator on the CPU).
    """

    def __len__(self) -> int: ...

    def chunks(self, size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]: ...


HeldOut = tuple[torch.Tensor, torch.Tensor] | PointSource
#: ``sampler(n, generator) -> (x (n, d), y (n, C))``: n fresh training points
Sampler = Callable[[int, torch.Generator], tuple[torch.Tensor, torch.Tensor]]


def held_len(held: HeldOut) -> int:
    return len(held) if isinstance(held, PointSource) else len(held[0])


@dataclass
class Problem:
    """What to fit.

    train_x: (N, d) coordinates; train_y: (N, C) targets. eval_sets: name -> (x, y) or a
    PointSource, typically "val" and "test". objective: the loss and its scores.
    sampler: optional ``(n, generator) -> (x, y)`` that draws n fresh points each step in
    place of train_x/train_y (mesh SDFs draw from a labelled pool, volumes draw voxels);
    train_x/train_y then hold the fixed pool, or nothing; ``batch`` is its points per step
    under ``--batch auto``. An operator problem (``OperatorObjective``) has the grid's
    coordinates as train_x (row-major), no targets and no eval_sets: its held-out sets are
    the objective's measurement sets. kind_name: the signal kind, for messages.
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    eval_sets: Mapping[str, HeldOut] = field(default_factory=dict)
    objective: AnyObjective = field(default_factory=Objective)
    sampler: Sampler | None = None
    batch: int = 0
    kind_name: str = ""

    @property
    def metric_name(self) -> str:
        return self.objective.metric

    @property
    def grid_shape(self) -> tuple[int, ...] | None:
        """The grid an operator problem is measured on; None for pointwise problems."""
        return self.objective.shape if isinstance(self.objective, OperatorObjective) else None

    def held_out(self) -> list[str]:
        """Names of the held-out sets ("val", "test"): the eval sets, or an operator
        problem's measurement sets other than "train"."""
        if isinstance(self.objective, OperatorObjective):
            return self.objective.held_out()
        return list(self.eval_sets)

    def final_sets(self) -> dict[str, HeldOut]:
        """The pointwise sets a trained field is scored on: "train" (when there are fixed
        training points: the pixels, or a mesh's labelled pool) and every held-out set."""
        if self.grid_shape is not None:
            return {}
        sets: dict[str, HeldOut] = {"train": (self.train_x, self.train_y)} if len(self.train_x) else {}
        sets.update(self.eval_sets)
        return sets


@dataclass
class FitResult:
    field: Field
    history: list[dict[str, float]]
    metrics: dict[str, float]
    steps: int
    wall_time: float
    device: str
    precision: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.wall_time if self.wall_time > 0 else float("nan")


@dataclass
class FitState:
    """Everything a fit needs to continue bit-identically after ``step`` completed steps.

    model: the field's state_dict; optimizer: the optimizer's state_dict (tensors and
    plain values); rng: "torch_cpu" (torch's global CPU generator), "sampler" (the fit's
    own sampling generator), "torch_cuda" on CUDA; history: the evaluation rows so far;
    elapsed: training seconds so far. Under early stopping (``nfit.train.Plateau``):
    best, each member's best validation score and its step ({"steps": [...], "values":
    [...]}), and best_model, the weights at those steps (keyed as ``model``; a member
    that has no best yet has none). All tensors are on the CPU.
    """

    step: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    rng: dict[str, torch.Tensor]
    history: list[dict[str, float]]
    elapsed: float
    best: dict[str, list[float]] | None = None
    best_model: dict[str, torch.Tensor] = field(default_factory=dict)


#: ``on_step(step, capture)``: called after every completed step; ``capture()`` returns
#: the FitState at that step (it costs a copy of the weights, so call it only when needed).
StepHook = Callable[[int, Callable[[], FitState]], None]
