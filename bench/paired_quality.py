"""Two editing runs on the same facts, compared item by item.

Reads two records that carry per-item scores (`locft bench --out`, or `bench/snapshot_quality.py
--out`) made on the same benchmark file, the same N, and the same seeded evaluation sample (same
`--eval-sample` and `--seed`), and compares them paraphrase by paraphrase and probe by probe:

    python bench/paired_quality.py first.json second.json --out paired.json

Two generalization figures of 0.495 and 0.535 on 200 paraphrases are one standard error apart
as independent shares; paired, the answers both runs got right or both got wrong cancel out. For
0/1 scores it reports the items lost and gained (second against first), the difference with a
95% interval, and McNemar's exact two-sided test; for token locality (a share per probe) the
mean paired difference with a 95% interval and the probes that moved each way.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from snapshot_capability import paired  # the same test as the capability comparison

EXACT = ("reliability", "generalization", "locality_exact")
SHARES = ("locality_token",)


def paired_shares(first: list[float], second: list[float]) -> dict[str, Any]:
    """Mean paired difference (second - first) of per-item shares, with a normal 95% interval."""
    diffs = [b - a for a, b in zip(first, second)]
    n = len(diffs)
    mean = sum(diffs) / n if n else 0.0
    var = sum((d - mean) ** 2 for d in diffs) / (n - 1) if n > 1 else 0.0
    se = math.sqrt(var / n) if n else 0.0
    return {"items": n, "worse": sum(1 for d in diffs if d < 0), "better": sum(1 for d in diffs if d > 0),
            "difference": round(mean, 4), "ci95": [round(mean - 1.96 * se, 4), round(mean + 1.96 * se, 4)]}


def sample_key(record: dict[str, Any]) -> tuple[Any, ...]:
    """What fixes the items: the file, N, offset, sample size and the seed that drew the sample."""
    seed = record.get("seed", (record.get("config") or {}).get("seed"))
    return (Path(record["data"]).name, record["n"], record.get("offset", 0), record.get("eval_sample"), seed)


def compare(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    for name, record in (("first", first), ("second", second)):
        if "items" not in record:
            raise SystemExit(f"the {name} record has no per-item scores (made before `items` was recorded); "
                             "re-evaluate its snapshot with bench/snapshot_quality.py")
    if sample_key(first) != sample_key(second):
        raise SystemExit(f"the records were not measured on the same items: {sample_key(first)} "
                         f"against {sample_key(second)} (file, n, offset, eval sample, seed)")
    out: dict[str, Any] = {}
    for metric in (*EXACT, *SHARES):
        a, b = first["items"][metric], second["items"][metric]
        if len(a) != len(b):
            raise SystemExit(f"{metric}: {len(a)} items against {len(b)}")
        if a:
            out[metric] = paired(a, b) if metric in EXACT else paired_shares(a, b)
            out[metric] |= {"first": round(sum(a) / len(a), 4), "second": round(sum(b) / len(b), 4)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("first", type=Path, help="the reference run's record")
    parser.add_argument("second", type=Path, help="the run compared with it")
    parser.add_argument("--out", type=Path, default=None, help="also write the comparison here (JSON)")
    args = parser.parse_args()
    first, second = (json.loads(p.read_text()) for p in (args.first, args.second))
    result = {"first": str(args.first), "second": str(args.second), "sample": list(sample_key(first)),
              "paired": compare(first, second)}
    for metric, r in result["paired"].items():
        moved = (f"lost {r['lost']}, gained {r['gained']}, McNemar p {r['mcnemar_p']}" if "lost" in r
                 else f"{r['worse']} probes worse, {r['better']} better")
        print(f"{metric}: {r['first']} -> {r['second']} ({r['difference']:+.4f}, 95% {r['ci95']}; {moved})")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    json.dump(result, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
