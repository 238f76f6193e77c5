"""What every signal kind provides, and the prepared fitting task it hands to ``fit``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from nfit.config import FitConfig
from nfit.field import Field
from nfit.fit import FitResult, Problem


@dataclass
class Task:
    """A signal made ready to fit: the problem, and what outputs and checkpoints need.

    meta: JSON-able description stored in the checkpoint (kind, shapes, channels, value
    range, transforms), enough for ``nfit render`` to write a reconstruction alone.
    output: the network's output activation ("sigmoid" for values in [0, 1]).
    selection_metric: the held-out metric ``nfit sweep`` chooses on when it is not the
    problem's own (``Problem.metric_name``): "iou" for meshes (inside/outside agreement).
    """

    kind: str
    in_dim: int
    out_dim: int
    problem: Problem
    meta: dict[str, Any]
    output: str = "sigmoid"
    selection_metric: str | None = None
    context: dict[str, Any] = field(default_factory=dict)


class SignalKind(Protocol):
    """A kind of signal (image, volume, sdf): loading, preparing, outputs and rendering."""

    name: str
    extensions: tuple[str, ...]

    def prepare(self, path: Path, cfg: FitConfig) -> Task:
        """Load the file and build the fitting problem. Raises DataError/UsageError."""
        ...

    def write_outputs(self, task: Task, result: FitResult, out_dir: Path) -> dict[str, Any]:
        """Write reconstructions and figures; return extra report entries."""
        ...

    def render(self, fld: Field, meta: dict[str, Any], out: Path, *, size: str | None = None,
               resolution: int | None = None) -> dict[str, Any]:
        """Evaluate a loaded field and write it to ``out``; return a summary."""
        ...

    def render_extensions(self) -> tuple[str, ...]:
        ...
