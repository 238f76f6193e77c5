"""What a fit is asked to do, below every signal kind: the problem, its objective, its results.

A signal kind (``nfit.signals``) turns a file into a ``Problem``: training points (or a
sampler that draws them), held-out sets, and the ``Objective`` that says what the field
minimises and how it is scored. The training loop (``nfit.train``) reads nothing else,
so a new kind of measurement (a projector, a k-space mask, an eikonal term) is added by
giving its problem an objective, in one place.

Shapes: K members are scored at once, so predictions are (K, n, C); targets are (n, C)
shared by the members or (K, n, C) one per member.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from nfit.metrics import psnr_from_mse

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
Sampler = Callable[[int, torch.Generator], tuple[torch.Tensor, torch.Tensor]]


def held_len(held: HeldOut) -> int:
    return len(held) if isinstance(held, PointSource) else len(held[0])


class Objective:
    """What the field minimises and how a prediction is scored.

    ``terms(pred, target)`` returns the loss as named per-member means, each (K,): their
    sum is what training minimises, and a kind adds a term (a data term through a
    projector, a regulariser) by overriding it. ``metric`` names the score reported
    next to the loss ("psnr" or "accuracy"); ``inside``, when set, is the kind's own
    inside/outside rule (meshes), and then every scored set also gets its IoU, which is
    what sweeps select on (``select``).
    """

    name = "mse"
    metric = "psnr"

    def __init__(self, inside: Callable[[Any], Any] | None = None) -> None:
        self.inside = inside

    @property
    def select(self) -> str:
        return "iou" if self.inside is not None else self.metric

    def terms(self, pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """pred (K, n, C), target (n, C) or (K, n, C) -> {"mse": (K,)}."""
        diff = pred.float() - target.expand_as(pred)
        return {"mse": (diff * diff).mean(dim=(1, 2))}

    def loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The per-member training loss (K,): the sum of ``terms``."""
        terms = list(self.terms(pred, target).values())
        total = terms[0]
        for term in terms[1:]:
            total = total + term
        return total

    def point_loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Loss summed over channels per point, float64: (K, n, C) -> (K, n), for scoring."""
        return ((pred.double() - target.double().expand_as(pred)) ** 2).sum(-1)

    def metric_of(self, loss: float, hits: float, count: int) -> float:
        return psnr_from_mse(loss)

    def to_dict(self) -> dict[str, Any]:
        return {"loss": self.name, "metric": self.metric, "select": self.select}


class BCEObjective(Objective):
    """Binary cross-entropy on logits (targets in {0, 1}); metric: accuracy of the sign."""

    name = "bce"
    metric = "accuracy"

    def terms(self, pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        pred = pred.float()
        return {"bce": F.binary_cross_entropy_with_logits(
            pred, target.expand_as(pred), reduction="none").mean(dim=(1, 2))}

    def point_loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        pred = pred.double()
        return F.binary_cross_entropy_with_logits(
            pred, target.double().expand_as(pred), reduction="none").sum(-1)

    def metric_of(self, loss: float, hits: float, count: int) -> float:
        return hits / count if count else float("nan")


class Scores:
    """Per-member loss and metric over chunks: running float64 sums, divided at the end.

    ``add(pred, target)``: pred (K, n, C), target (n, C) or (K, n, C). ``result()`` gives
    K dicts with "loss", the objective's metric and, when the objective has an inside
    rule, "iou" of the first output's inside/outside sign (empty on both sides is 1).
    """

    def __init__(self, k: int, objective: Objective) -> None:
        self.k, self.objective = k, objective
        self.total = torch.zeros(k, dtype=torch.float64)
        self.hits = torch.zeros(k, dtype=torch.float64)
        self.inter = torch.zeros(k, dtype=torch.float64)
        self.union = torch.zeros(k, dtype=torch.float64)
        self.count = 0

    def add(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        target = target.expand_as(pred)
        self.count += target[0].numel()
        self.total += self.objective.point_loss(pred, target).sum(dim=1).cpu()
        if self.objective.metric == "accuracy":
            self.hits += ((pred > 0) == (target > 0.5)).double().sum(dim=(1, 2)).cpu()
        inside = self.objective.inside
        if inside is not None:
            p, t = inside(pred[..., 0]), inside(target[..., 0])
            self.inter += (p & t).double().sum(dim=1).cpu()
            self.union += (p | t).double().sum(dim=1).cpu()

    def result(self) -> list[dict[str, float]]:
        n = self.count
        out = []
        for k in range(self.k):
            loss = float(self.total[k]) / n if n else float("nan")
            row = {"loss": loss,
                   self.objective.metric: self.objective.metric_of(loss, float(self.hits[k]), n)}
            if self.objective.inside is not None:
                row["iou"] = float(self.inter[k] / self.union[k]) if self.union[k] > 0 else 1.0
            out.append(row)
        return out


@dataclass
class Problem:
    """What to fit.

    train_x: (N, d) coordinates; train_y: (N, C) targets. eval_sets: name -> (x, y) or a
    PointSource, typically "val" and "test". objective: the loss and its scores.
    sampler: optional ``(step, generator) -> (x, y)`` that replaces train_x/train_y with
    fresh points each step (mesh SDFs draw from a labelled pool, volumes draw voxels);
    train_x/train_y then hold the fixed pool, or nothing. step_points: the points one
    training step sees (a sampler's batch), for the memory model.
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    eval_sets: Mapping[str, HeldOut] = field(default_factory=dict)
    objective: Objective = field(default_factory=Objective)
    sampler: Sampler | None = None
    step_points: int = 0

    @property
    def metric_name(self) -> str:
        return self.objective.metric

    def points_per_step(self, batch: int) -> int:
        """How many points one step trains on with ``--batch`` (0: the full training set)."""
        if self.sampler is not None:
            return self.step_points or len(self.sampler(0, torch.Generator().manual_seed(0))[0])
        n = len(self.train_x)
        return batch if 0 < batch < n else n

    def final_sets(self) -> dict[str, HeldOut]:
        """The sets a trained field is scored on: "train" (when there are fixed training
        points: the pixels, or a mesh's labelled pool) and every held-out set."""
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
    elapsed: training seconds so far. All tensors are on the CPU.
    """

    step: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    rng: dict[str, torch.Tensor]
    history: list[dict[str, float]]
    elapsed: float


#: ``on_step(step, capture)``: called after every completed step; ``capture()`` returns
#: the FitState at that step (it costs a copy of the weights, so call it only when needed).
StepHook = Callable[[int, Callable[[], FitState]], None]
