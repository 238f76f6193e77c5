"""Signal kinds, found through one registry: ``SIGNAL_KINDS[name]``."""

from __future__ import annotations

from nfit.errors import UsageError
from nfit.signals.base import SignalKind, Task, build_task_field
from nfit.signals.ct import CT
from nfit.signals.image import IMAGE
from nfit.signals.mesh import SDF
from nfit.signals.mri import MRI
from nfit.signals.volume import VOLUME

SIGNAL_KINDS: dict[str, SignalKind] = {IMAGE.name: IMAGE, VOLUME.name: VOLUME, SDF.name: SDF,
                                       CT.name: CT, MRI.name: MRI}


def signal_kind(name: str) -> SignalKind:
    if name not in SIGNAL_KINDS:
        raise UsageError(f"unknown signal kind {name!r}; choose from {', '.join(SIGNAL_KINDS)}")
    return SIGNAL_KINDS[name]


__all__ = ["SIGNAL_KINDS", "SignalKind", "Task", "build_task_field", "signal_kind"]
