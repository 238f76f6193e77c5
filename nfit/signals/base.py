"""What every signal kind provides, and the prepared fitting task it hands to ``fit``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch

from nfit.catalog import KINDS, KindFacts
from nfit.config import FitConfig
from nfit.field import Field, build_field
from nfit.grids import HASHGRID_FINEST
from nfit.problem import FitResult, Problem


@dataclass
class Task:
    """A signal made ready to fit: the problem, and what outputs and checkpoints need.

    meta: JSON-able description stored in the checkpoint (kind, shapes, channels, value
    range, transforms), enough for ``nfit render`` to write a reconstruction alone.
    output: the network's output activation ("sigmoid" for values in [0, 1]).
    state: the kind's own prepared state, a dataclass of that kind (``ImageState``,
    ``VolumeState``, ``MeshState``, ``CTData``, ``MRIData``), which its ``write_outputs``
    reads; nothing else looks inside.
    """

    kind: str
    in_dim: int
    out_dim: int
    problem: Problem
    meta: dict[str, Any]
    output: str = "sigmoid"
    state: Any = None


class SignalKind(Protocol):
    """A kind of signal (image, volume, sdf): loading, preparing, outputs and rendering."""

    name: str
    extensions: tuple[str, ...]
    #: option values this kind implies unless given (under the YAML file and the flags)
    defaults: dict[str, Any]
    #: published recipes (``--protocol NAME``): {name: {"*": options, encoding: options}}
    protocols: dict[str, dict[str, dict[str, Any]]]

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


class KindFromFacts:
    """Base of the signal kinds: a subclass names itself (``name = "image"``) and takes its
    facts (extensions, defaults, protocols, input option) from ``nfit.catalog.KINDS``."""

    name: ClassVar[str]
    facts: ClassVar[KindFacts]
    extensions: ClassVar[tuple[str, ...]]
    defaults: ClassVar[dict[str, Any]]
    protocols: ClassVar[dict[str, dict[str, dict[str, Any]]]]
    input_option: ClassVar[str | None]
    through_operator: ClassVar[bool]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.facts = facts = KINDS[cls.name]
        cls.extensions, cls.defaults, cls.protocols = facts.extensions, facts.defaults, facts.protocols
        cls.input_option, cls.through_operator = facts.input_option, facts.through_operator


def build_task_field(task: Task, cfg: FitConfig) -> Field:
    """The field for a task, its weights drawn from ``cfg.seed``."""
    torch.manual_seed(int(cfg.seed))
    encoding = cfg.encoding_spec()
    if "domain" in task.meta:
        # Grid encodings cover the signal's domain ([lo, hi] per axis; default [0, 1]).
        encoding.setdefault("bounds", list(task.meta["domain"]))
    if encoding["type"] == "hashgrid" and "finest_resolution" not in encoding and task.meta.get("shape"):
        # Instant-NGP (Müller et al. 2022, Sec. 3) matches N_max to the finest detail of
        # the data: one cell per sample along the longest axis, raised from the class
        # default, never lowered (a 2040-pixel-wide photograph at 512 cells loses its detail)
        encoding["finest_resolution"] = max(HASHGRID_FINEST, max(int(n) for n in task.meta["shape"]))
    return build_field({"in_dim": task.in_dim, "out_dim": task.out_dim,
                        "encoding": encoding, "network": cfg.network_spec(task.output)})
