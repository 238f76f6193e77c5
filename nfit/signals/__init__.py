"""Signal kinds' implementations, found through one registry (``nfit.catalog.KINDS``, whose
facts name each implementation): ``signal_kind(name)``, or ``SIGNAL_KINDS[name]``."""

from __future__ import annotations

import importlib

from nfit.catalog import KINDS, kind_facts
from nfit.signals.base import SignalKind, Task, build_task_field


def signal_kind(name: str) -> SignalKind:
    module, attr = kind_facts(name).implementation.split(":")
    return getattr(importlib.import_module(module), attr)


SIGNAL_KINDS: dict[str, SignalKind] = {name: signal_kind(name) for name in KINDS}


__all__ = ["SIGNAL_KINDS", "SignalKind", "Task", "build_task_field", "signal_kind"]
