"""Where a training step's time goes: a few steps of a loop under torch.profiler, summarized.

`locft bench --random-init ... --profile-steps N` runs each timed loop once more, skips its first
steps (warm-up), profiles the next N and cancels the rest. Per step it reports the wall time,
the operators the host dispatched, and on CUDA the kernels, the host-to-device copies, the
host syncs (the host waiting for a device value) and how much of the wall time the device was busy (the union of its
kernel and copy intervals); then the operators that cost the most. A step whose device is idle
for much of its wall time is bound by the host (dispatch, syncs), not by the arithmetic.

The profiled run is not the timed one: profiling slows the host, so its wall times are for
comparing shares, not for the speed figure.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from locft.config import EditConfig

WARM_STEPS = 3  # steps run before profiling: allocator and kernel choices settle
TOP_OPERATORS = 12
# what the engine's own reads of device values wait in (the profile window's own synchronize at
# each step's end is cudaDeviceSynchronize, left out)
_SYNC_CALLS = ("cudaStreamSynchronize", "cudaEventSynchronize")


@dataclass
class _Window:
    """Starts the profiler after `skip` steps and stops it `steps` steps later."""

    profiler: Any
    skip: int
    steps: int
    seen: int = 0
    marks: list[float] = field(default_factory=list)  # host clock at each profiled step's end

    @property
    def done(self) -> bool:
        return self.seen >= self.skip + self.steps

    def step_ended(self, device: torch.device) -> None:
        self.seen += 1
        if not self.skip <= self.seen <= self.skip + self.steps:
            return
        _sync(device)  # a step's device work belongs to it (read after the sync)
        self.marks.append(time.perf_counter())
        if self.seen == self.skip:
            self.profiler.start()
        elif self.done:
            self.profiler.stop()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _busy_ms(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of [start, end) intervals, in ms (the profiler's clock is in us)."""
    total, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if stop <= end:
            continue
        total += stop - max(start, end)
        end = stop
    return total / 1000


def summarize(events: Any, averages: Any, steps: int, wall_s: float, cuda: bool) -> dict[str, Any]:
    """The per-step summary of a profile over `steps` steps that took `wall_s` on the host clock."""
    from torch.autograd import DeviceType

    host = [e for e in events if e.device_type == DeviceType.CPU]
    device = [e for e in events if e.device_type != DeviceType.CPU]
    per_step = 1.0 / steps
    summary: dict[str, Any] = {
        "steps": steps,
        "wall_ms_per_step": round(wall_s * 1000 * per_step, 3),
        "operators_per_step": round(sum(e.name.startswith("aten::") for e in host) * per_step, 1),
        "device": None,
    }
    if cuda:
        copies = [e for e in device if e.name.startswith("Memcpy")]
        kernels = [e for e in device if not e.name.startswith(("Memcpy", "Memset"))]
        busy = _busy_ms([(e.time_range.start, e.time_range.end) for e in device]) * per_step
        summary["device"] = {
            "kernels_per_step": round(len(kernels) * per_step, 1),
            "host_to_device_copies_per_step": round(sum("HtoD" in e.name for e in copies) * per_step, 2),
            "device_to_host_copies_per_step": round(sum("DtoH" in e.name for e in copies) * per_step, 2),
            # the host waiting for the device: a value read (.item(), .tolist(), a bool of a device tensor)
            "host_syncs_per_step": round(sum(e.name in _SYNC_CALLS for e in host) * per_step, 2),
            "busy_ms_per_step": round(busy, 3),
            "busy_share": round(busy / max(summary["wall_ms_per_step"], 1e-9), 4),
        }
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    top = sorted(averages, key=lambda a: getattr(a, key), reverse=True)[:TOP_OPERATORS]
    summary["top_operators"] = [
        {"name": a.key, "calls_per_step": round(a.count * per_step, 2),
         f"{'device' if cuda else 'host'}_ms_per_step": round(getattr(a, key) / 1000 * per_step, 4)}
        for a in top if getattr(a, key) > 0
    ]
    return summary


def profile_loop(loaded: Any, facts: list[Any], cfg: EditConfig, steps: int,
                 on_event: Callable[[str, Any], None] | None = None) -> dict[str, Any]:
    """Profile `steps` training steps of `cfg`'s loop after WARM_STEPS unprofiled ones."""
    from torch.profiler import ProfilerActivity, profile

    from locft.engine.train import EditCancelled, edit

    cuda = loaded.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    window = _Window(profile(activities=activities), WARM_STEPS, steps)

    def progress(p: Any) -> None:
        if on_event:
            on_event("train", p)
        if p.phase == "train":
            window.step_ended(loaded.device)

    steps_per_epoch = math.ceil(len(facts) / (cfg.batch_size or 1))
    epochs = max(cfg.max_epochs, math.ceil((WARM_STEPS + steps) / steps_per_epoch))
    try:
        edit(loaded, facts, replace(cfg, max_epochs=epochs), progress=progress, should_stop=lambda: window.done)
    except EditCancelled:
        pass  # the profile is complete: the rest of the epoch is not needed
    if len(window.marks) < steps + 1:
        return {"steps": 0, "error": f"the loop ran {window.seen} steps, fewer than {WARM_STEPS} + {steps}"}
    return summarize(window.profiler.events(), window.profiler.key_averages(), steps,
                     window.marks[-1] - window.marks[0], cuda)
