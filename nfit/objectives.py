"""What a field minimises and how it is scored: objectives with an explicit shape.

Two shapes, which the training loop (``nfit.train``) tells apart by type:

- **Pointwise** (``Objective``): a loss on predictions and targets at the same points,
  returned as named per-member terms. Images, volumes and meshes (MSE; BCE on occupancy)
  are pointwise; so is a term that needs the field's derivative with respect to its
  input (``EikonalObjective``: the loop then hands the objective the coordinates it
  differentiated through).
- **Operator** (``OperatorObjective``): the field's values on a whole grid go through a
  forward operator ``A`` (a projector, a k-space mask) and the loss is on measurements,
  ``mean |A f - y|^2``. Every value of the grid couples to every measurement, so the loop
  takes the *whole-grid step*: it evaluates the field on the grid in slices without a
  graph, computes the loss and its gradient with respect to the field's values through
  the operator (autograd through ``A``, i.e. its adjoint), then re-runs each slice with a
  graph and back-propagates that slice's part of the gradient. Peak memory is one slice's
  graph plus the grid's values, at any size, and the gradient equals the full-graph one
  (``tests/test_ct_mri.py``).

Shapes: K members are scored at once, so pointwise predictions are (K, n, C) and targets
(n, C) shared by the members or (K, n, C) one per member; operator values are (K, N) in
the grid's row-major order.

Every scored set reports ``loss`` (its mean squared error, or BCE) and the metric named
by ``metric`` from it; for operator sets both are in image units (``score_scale``), so
a CT fit's training PSNR in ``curve.csv``, on the progress bar and in ``report.json`` is
the same quantity.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from nfit.metrics import psnr_from_mse


def sum_terms(terms: dict[str, torch.Tensor]) -> torch.Tensor:
    """The total of named per-member terms, each (K,): what training minimises."""
    values = list(terms.values())
    total = values[0]
    for value in values[1:]:
        total = total + value
    return total


class Objective:
    """A pointwise objective: what the field minimises at its points and how it is scored.

    ``terms(pred, target)`` returns the loss as named per-member means, each (K,): their
    sum is what training minimises, and a kind adds a term by overriding it. ``metric``
    names the score reported next to the loss ("psnr" or "accuracy"); ``inside``, when
    set, is the kind's own inside/outside rule (meshes), and then every scored set also
    gets its IoU, which is what sweeps select on (``select``). ``needs_coords``: the terms
    read the field's gradient with respect to its input, so ``terms`` also gets the
    coordinates (``coords``, requiring grad) the predictions were computed from.
    """

    name = "mse"
    metric = "psnr"
    needs_coords = False

    def __init__(self, inside: Callable[[Any], Any] | None = None) -> None:
        self.inside = inside

    @property
    def select(self) -> str:
        return "iou" if self.inside is not None else self.metric

    def terms(self, pred: torch.Tensor, target: torch.Tensor,
              coords: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """pred (K, n, C), target (n, C) or (K, n, C) -> {"mse": (K,)}."""
        diff = pred.float() - target.expand_as(pred)
        return {"mse": (diff * diff).mean(dim=(1, 2))}

    def loss(self, pred: torch.Tensor, target: torch.Tensor,
             coords: torch.Tensor | None = None) -> torch.Tensor:
        """The per-member training loss (K,): the sum of ``terms``."""
        return sum_terms(self.terms(pred, target, coords))

    def point_loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Loss summed over channels per point, float64: (K, n, C) -> (K, n), for scoring."""
        return ((pred.double() - target.double().expand_as(pred)) ** 2).sum(-1)

    def metric_of(self, loss: float, hits: float, count: int) -> float:
        return psnr_from_mse(loss)

    def train_metric(self, terms: dict[str, float]) -> float | None:
        """The metric of one member's training step from its terms, in the units of the
        scored sets: PSNR of the MSE term (None where a step's loss does not give the
        metric: accuracy needs the hits)."""
        return psnr_from_mse(terms["mse"]) if self.metric == "psnr" and "mse" in terms else None

    def to_dict(self) -> dict[str, Any]:
        return {"loss": self.name, "metric": self.metric, "select": self.select}


class BCEObjective(Objective):
    """Binary cross-entropy on logits (targets in {0, 1}); metric: accuracy of the sign."""

    name = "bce"
    metric = "accuracy"

    def terms(self, pred: torch.Tensor, target: torch.Tensor,
              coords: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        pred = pred.float()
        return {"bce": F.binary_cross_entropy_with_logits(
            pred, target.expand_as(pred), reduction="none").mean(dim=(1, 2))}

    def point_loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        pred = pred.double()
        return F.binary_cross_entropy_with_logits(
            pred, target.double().expand_as(pred), reduction="none").sum(-1)

    def metric_of(self, loss: float, hits: float, count: int) -> float:
        return hits / count if count else float("nan")


class EikonalObjective(Objective):
    """MSE on signed distances plus ``weight * mean (|grad_x f| - 1)^2`` (Gropp et al. 2020;
    SIREN's ``sdf`` loss): a signed distance has a unit gradient everywhere.

    The gradient is taken with autograd through the encoding and the network
    (``create_graph``), so its term trains the weights; ``coords`` (K or 1, n, d) are the
    points the predictions were computed from, requiring grad.
    """

    name = "mse+eikonal"
    needs_coords = True

    def __init__(self, weight: float, inside: Callable[[Any], Any] | None = None) -> None:
        super().__init__(inside)
        self.weight = float(weight)

    def terms(self, pred: torch.Tensor, target: torch.Tensor,
              coords: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        out = super().terms(pred, target)
        if coords is None or not coords.requires_grad:
            raise ValueError("the eikonal term needs the coordinates the predictions came from")
        (grad,) = torch.autograd.grad(pred[..., 0].float().sum(), coords, create_graph=True)
        norm = grad.float().norm(dim=-1)  # (K or 1, n)
        out["eikonal"] = self.weight * ((norm - 1.0) ** 2).mean(dim=-1).expand(pred.shape[0])
        return out

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "eikonal_weight": self.weight}


class Scores:
    """Per-member loss and metric over chunks of a pointwise set: running float64 sums.

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
class Measurement:
    """One set of measurements of the grid's values.

    forward: (K, N) values -> (K, ...) measurements like ``data`` (real or complex), linear
    and differentiable (its autograd backward is the operator's adjoint); data: the
    measured values (no K axis); score_scale: multiplies the residual's mean square into
    image units when scored (1/N^2 for sums over N pixels, 1/N for the unnormalised DFT);
    weight: multiplies it in the training loss (the paper's 0.5, a whole-grid mean).
    """

    forward: Callable[[torch.Tensor], torch.Tensor]
    data: torch.Tensor
    score_scale: float = 1.0
    weight: float = 1.0
    _on: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def residual_mse(self, values: torch.Tensor) -> torch.Tensor:
        """(K, N) -> (K,) mean squared magnitude of forward(values) - data, in fp32."""
        key = str(values.device)
        data = self._on.get(key)
        if data is None:
            data = self._on.setdefault(key, self.data.to(values.device))
        # the operators run in fp32 whatever the network's precision (sparse products and
        # FFTs have no bf16 kernels on the CPU, and the residual is the loss)
        with torch.autocast(values.device.type, enabled=False):
            diff = self.forward(values.float()) - data.unsqueeze(0)
        sq = diff.real ** 2 + diff.imag ** 2 if diff.is_complex() else diff ** 2
        return sq.reshape(sq.shape[0], -1).mean(dim=1)


class OperatorObjective:
    """The loss and scores of a field measured through operators (CT, MRI).

    sets: role -> Measurement, with "train" (the measurements fitted) required, "val"
    (held-out measurements) and "test" (the identity against the ground truth) when known.
    The training loss of K members' grid values (K, N) is the train set's weighted
    residual mean square; a scored set's loss is its residual mean square in image units.
    """

    name = "measurement_mse"
    metric = "psnr"
    select = "psnr"
    inside = None

    def __init__(self, shape: tuple[int, ...], sets: dict[str, Measurement]) -> None:
        if "train" not in sets:
            raise ValueError("an operator objective needs a train set")
        self.shape = tuple(int(s) for s in shape)
        self.sets = sets

    @property
    def points(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    def held_out(self) -> list[str]:
        return [role for role in self.sets if role != "train"]

    def loss(self, values: torch.Tensor) -> torch.Tensor:
        """(K, N) grid values -> (K,) training loss (differentiable in ``values``)."""
        train = self.sets["train"]
        return train.residual_mse(values) * train.weight

    def score(self, values: torch.Tensor, role: str) -> list[dict[str, float]]:
        """(K, N) grid values -> K rows {"loss": MSE in image units, "psnr"} of ``role``."""
        m = self.sets[role]
        with torch.no_grad():
            mse = (m.residual_mse(values).double() * m.score_scale).tolist()
        return [{"loss": v, "psnr": psnr_from_mse(v)} for v in mse]

    def train_metric(self, terms: dict[str, float]) -> float:
        """PSNR of the training measurements from one member's step loss ({"data": loss}),
        in the scored sets' units: the same quantity as the final "train_psnr"."""
        train = self.sets["train"]
        return psnr_from_mse(terms["data"] / train.weight * train.score_scale)

    def operator_bytes(self, k: int) -> int:
        """Bytes the operators make per step beyond the grid's values: about three times
        each set's measurements per member (forward, residual, adjoint). The operators
        themselves (a projector's sparse matrices) are built with the problem, like the
        signal, and are not counted."""
        return sum(3 * k * m.data.numel() * max(m.data.element_size(), 4) for m in self.sets.values())

    def to_dict(self) -> dict[str, Any]:
        return {"loss": self.name, "metric": self.metric, "select": self.select,
                "sets": {name: {"score_scale": s.score_scale, "weight": s.weight}
                         for name, s in self.sets.items()}}


AnyObjective = Objective | OperatorObjective
