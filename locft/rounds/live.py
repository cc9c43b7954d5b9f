"""A running round's progress file, run/round-progress.json: the daemon's worker writes it; `locftd
status`, `locft status`, `locft round list`, the dashboard and /metrics read it.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from locft.atomic import atomic_write_text
from locft.home import pid_alive

if TYPE_CHECKING:
    from locft.rounds.phases import RoundProgress

log = logging.getLogger("locft.daemon.worker")  # the worker's log: its phase lines belong there


PROGRESS_FILE = "round-progress.json"  # in run/: what the round is doing, for `locftd status`


class RoundProgressFile:
    """The round's progress (RoundProgress) as run/round-progress.json (atomic, at most every 2 s) and a log line
    per phase, so that `locftd status` and the log say what a long round is doing."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / PROGRESS_FILE
        self.phase: str | None = None
        self.written = 0.0

    def __call__(self, p: RoundProgress) -> None:
        now = time.monotonic()
        if p.phase != self.phase:
            self.phase = p.phase
            log.info("phase %s%s", p.phase, f": {p.detail}" if p.detail else "")
        elif now - self.written < 2.0:
            return
        self.written = now
        data = {"pid": os.getpid(), "phase": p.phase, "done": p.done, "total": p.total, "detail": p.detail,
                "loss": p.loss, "updated_at": time.time()}
        try:
            atomic_write_text(self.path, json.dumps(data), durable=False)
        except OSError as exc:  # progress is a courtesy; never fail a round for it
            log.debug("could not write %s: %s", self.path, exc)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def read_progress(run_dir: Path) -> dict[str, Any] | None:
    """The progress a live worker wrote (None when there is none or its writer is gone)."""
    try:
        data = json.loads((run_dir / PROGRESS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and pid_alive(int(data.get("pid", 0))) else None


def describe_progress(p: dict[str, Any]) -> str:
    """One line for a person: "train 160/800 (epoch 5/25, loss 0.6231)", "evaluate 576/981 (locality)"."""
    count = f" {p['done']}/{p['total']}" if p.get("total") else ""
    loss = f", loss {p['loss']:.4f}" if p.get("loss") is not None else ""
    return f"{p['phase']}{count}" + (f" ({p['detail']}{loss})" if p.get("detail") else "")
