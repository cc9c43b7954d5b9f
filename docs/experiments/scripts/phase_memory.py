"""Where in a round's training the memory peak is set: the peak RSS within each phase of `edit`.

Trains N ZsRE facts for E epochs with the round defaults (replay included; skip and stop off)
and any `--set KEY=VALUE` overrides of the edit config, in a fresh process per variant. The
kernel's high-water mark (VmHWM) is reset (/proc/self/clear_refs) before each phase, so each
phase reports its own peak: building the activation cache, the forward-mode check, recording
the replay prompts' soft targets, and every training step (forward and backward of one batch).

    python bench/phase_memory.py --n 256 --epochs 2 --variant micro_batch_tokens=100000 \\
        --variant micro_batch_tokens=1024 --out bench/results/quality/phase_memory.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from variant_runs import run_in_children
from typing import Any, Callable


def _status_mib() -> tuple[float, float]:
    """(peak since the last reset, resident now) in MiB."""
    values = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                values[key] = int(rest.split()[0]) / 1024
    return values["VmHWM"], values["VmRSS"]


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS


def measure(overrides: dict[str, Any], n: int, epochs: int, threads: int, data: Path, home: Path) -> dict:
    import torch

    import locft.engine.train as train
    from locft.engine.forward import Forward
    from locft.config import EditConfig, ModelConfig
    from locft.engine.model_io import load_base
    from locft.readers import load_edit_facts

    torch.set_num_threads(threads)
    phases: list[dict[str, Any]] = []

    def watched(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            _reset_peak()
            before = _status_mib()[1]
            out = fn(*args, **kwargs)
            peak, after = _status_mib()
            phases.append({"phase": name, "rss_before": round(before), "peak": round(peak), "rss_after": round(after)})
            return out
        return run

    for method in ("build_cache", "check_mode", "record_soft_targets"):
        setattr(Forward, method, watched(method, getattr(Forward, method)))
    train._accumulate_gradients = watched("step", train._accumulate_gradients)

    loaded = load_base(ModelConfig(), home)
    facts = load_edit_facts(data)[:n]
    cfg = EditConfig(**{"max_epochs": epochs, "skip_loss": 0.0, "stop_loss": 0.0, **overrides})
    t = time.perf_counter()
    result = train.edit(loaded, facts, cfg, cache_dir=home / "cache")
    steps = [p for p in phases if p["phase"] == "step"]
    return {
        "overrides": overrides, "n": n, "epochs": len(result.epochs), "threads": threads,
        "n_replay": result.n_replay, "edit_seconds": round(time.perf_counter() - t, 1),
        "train_seconds": round(result.train_seconds, 1),
        "seconds_per_epoch": [round(e.seconds, 1) for e in result.epochs],
        "setup_phases": [p for p in phases if p["phase"] != "step"],
        "step_peak_max": max(p["peak"] for p in steps),
        "step_rise_max": max(p["peak"] - p["rss_before"] for p in steps),
        "steps": steps,
    }


def _parse(variant: str) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for item in filter(None, variant.split(",")):
        key, _, value = item.partition("=")
        try:
            overrides[key] = json.loads(value)  # numbers, true/false, null
        except ValueError:
            overrides[key] = value  # a string such as tokens
    return overrides


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--variant", action="append", default=[],
                    help="comma-separated KEY=VALUE edit-config overrides; repeat for more variants ('' = defaults)")
    ap.add_argument("--data", default=os.path.join(os.environ.get("LOCFT_BENCH_DATA", ""), "zsre_dev.json"))
    ap.add_argument("--home", default=os.environ.get("LOCFT_HOME", str(Path.home() / ".locft")))
    ap.add_argument("--out", help="append one JSON line per variant here")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # child mode: one variant, print JSON
    args = ap.parse_args()
    if args.one is not None:
        row = measure(_parse(args.one), args.n, args.epochs, args.threads, Path(args.data), Path(args.home))
        print(json.dumps(row))
        return
    child_args = ["--n", str(args.n), "--epochs", str(args.epochs), "--threads", str(args.threads),
                  "--data", args.data, "--home", args.home]
    run_in_children(__file__, args.variant or [""], child_args, args.out)


if __name__ == "__main__":
    main()
