"""Where a job's progress goes (importable without torch, so the CLI can subclass it)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any


class Reporter:
    """Where a job's progress goes. This one says nothing; override what you want to see."""

    @contextlib.contextmanager
    def fit(self, total: int, metric: str, budget: float | None = None
            ) -> Iterator[Callable[[dict[str, float]], None] | None]:
        """Around a fit of at most ``total`` steps and ``budget`` seconds (None: no time
        budget): yields the ``on_eval(row)`` callback, or None."""
        yield None

    def group(self, label: str, steps: int) -> Callable[[int], None] | None:
        """A sweep's stack starts: returns the per-step ``tick(step)``, or None."""
        return None

    def note(self, text: str) -> None:
        """Something the user should know that is not an error."""

    def study(self, study: Any) -> None:
        """One encoding's kernel study is done."""
