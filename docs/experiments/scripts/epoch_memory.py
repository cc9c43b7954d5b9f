"""Does resident memory grow epoch over epoch, and what does returning freed memory cost?

Trains N ZsRE facts for E epochs with the round defaults (replay included; skip and stop off,
so every epoch does the same work) in a fresh process per variant:
- `keep`: glibc's default of keeping freed memory (locft.engine.memory.release_freed_memory made
  a no-op);
- `end`: freed memory goes back to the OS only once `edit` is done;
- `trim`: the library as it is: after every epoch and once `edit` is done;
- `mmap` or `mmap:<bytes>`: `end`, with every allocation of 128 KiB (or <bytes>) or more served
  by its own mmap (locft.engine.memory.mmap_large_allocations), so freed activations leave no
  holes in the heap.
After each epoch it records the process's peak RSS (the high-water mark that a 4 GiB budget
is about) and its RSS at that moment (before any trim), the epoch's seconds and the trim calls'
own seconds; and the RSS once `edit` has returned.

    python bench/epoch_memory.py --n 64 --epochs 20 --out bench/results/quality/epoch_memory.jsonl
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import sys
import time
from pathlib import Path

from variant_runs import run_in_children


def measure(variant: str, n: int, epochs: int, threads: int, data: Path, home: Path) -> dict:
    import torch

    import locft.engine.train as train
    from locft.config import EditConfig, ModelConfig
    from locft.engine.memory import release_freed_memory, resident_mib
    from locft.engine.model_io import load_base
    from locft.readers import load_edit_facts

    torch.set_num_threads(threads)
    trim_seconds: list[float] = []

    def timed_trim() -> bool:
        if variant != "trim" and sys._getframe(1).f_code.co_name != "edit":  # only the call at the end
            return False
        t = time.perf_counter()
        done = release_freed_memory()
        trim_seconds.append(time.perf_counter() - t)
        return done

    if variant.startswith("mmap"):
        from locft.engine.memory import mmap_large_allocations

        _, _, threshold = variant.partition(":")
        assert mmap_large_allocations(int(threshold or 128 * 1024))
    train.release_freed_memory = (lambda: False) if variant == "keep" else timed_trim
    per_epoch: list[dict[str, float]] = []

    class EpochProbe(logging.Handler):  # the loop logs each epoch's end, before its trim
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("epoch "):
                per_epoch.append({"peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                                  "resident_mib": resident_mib()})

    log = logging.getLogger("locft.engine.train")
    log.setLevel(logging.INFO)
    log.addHandler(EpochProbe())
    loaded = load_base(ModelConfig(), home)
    facts = load_edit_facts(data)[:n]
    start_mib = resident_mib()
    result = train.edit(loaded, facts, EditConfig(max_epochs=epochs, skip_loss=0.0, stop_loss=0.0),
                        cache_dir=home / "cache")
    resident_after = resident_mib()
    for row, stats in zip(per_epoch, result.epochs):
        row["seconds"] = round(stats.seconds, 2)
    return {
        "variant": variant, "n": n, "epochs": len(result.epochs), "threads": threads,
        "resident_after_load_mib": round(start_mib), "n_replay": result.n_replay,
        "train_seconds": round(result.train_seconds, 1),
        "trim_calls": len(trim_seconds), "trim_seconds_max": round(max(trim_seconds, default=0.0), 4),
        "trim_seconds_total": round(sum(trim_seconds), 3),
        "peak_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "resident_after_edit_mib": round(resident_after),
        "per_epoch": [{k: round(v, 1) for k, v in row.items()} for row in per_epoch],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--variants", default="keep,end,trim,mmap,mmap:16777216")
    ap.add_argument("--data", default=os.path.join(os.environ.get("LOCFT_BENCH_DATA", ""), "zsre_dev.json"))
    ap.add_argument("--home", default=os.environ.get("LOCFT_HOME", str(Path.home() / ".locft")))
    ap.add_argument("--out", help="append one JSON line per variant here")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # child mode: measure one variant, print JSON
    args = ap.parse_args()
    if args.one:
        row = measure(args.one, args.n, args.epochs, args.threads, Path(args.data), Path(args.home))
        print(json.dumps(row))
        return
    child_args = ["--n", str(args.n), "--epochs", str(args.epochs), "--threads", str(args.threads),
                  "--data", args.data, "--home", args.home]
    run_in_children(__file__, args.variants.split(","), child_args, args.out)


if __name__ == "__main__":
    main()
