"""The phases a round runs, in order: what a round reports while it runs and how long each took."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

# The order phases run in: what RoundProgress.phase and a round's timings name.
PHASES: tuple[str, ...] = (
    "freeze", "load", "replay", "train", "scope", "snapshot", "record", "base_probes", "evaluate", "retention",
    "capability_base", "capability", "judge", "cleanup",
)


@dataclass(frozen=True)
class RoundProgress:
    """What a round is doing now; shells render it (the library only calls back)."""

    phase: str
    done: int | None = None
    total: int | None = None
    detail: str = ""
    loss: float | None = None


RoundProgressCallback = Callable[[RoundProgress], None]


class PhaseClock:
    """Per-phase wall time; a phase entered twice accumulates."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.seconds: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t

    def timings(self) -> dict[str, float]:
        out = {k: round(v, 3) for k, v in self.seconds.items()}
        out["total"] = round(time.perf_counter() - self.started, 3)
        return out
