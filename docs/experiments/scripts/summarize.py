"""Tabulate `locft bench --out` records: python bench/summarize.py bench/results/engine > .../SUMMARY.md"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def fmt(x: object) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.3f}"
    return str(x)


def main(directory: str) -> None:
    rows = []
    for path in sorted(Path(directory).glob("*.json")):
        r = json.loads(path.read_text())
        if "metrics" not in r:
            continue
        m, t, c = r["metrics"], r["training"], r["config"]
        rows.append([
            path.stem, r["n"], r["pipeline"], c["location"], c["prompt_format"], c["lr"], c.get("batch_size"),
            c.get("replay_ratio", 0.0), m["reliability"], m["generalization"], m["locality_token"],
            m["locality_exact"], f"{t['epochs']}{'' if t['converged'] else '*'}", t["train_seconds"],
            t["seconds_per_epoch"], t["edits_x_epochs_per_second"], r["peak_memory_bytes"] / 2**30,
        ])
    head = ["run", "N", "pipeline", "location", "prompt", "lr", "batch", "replay", "reliability",
            "generalization", "locality (token)", "locality (exact)", "epochs", "train s", "s/epoch",
            "edits x epochs/s", "peak GiB"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for row in rows:
        print("| " + " | ".join(fmt(x) for x in row) + " |")
    print("\n`*` = did not reach the stopping loss within the epoch budget.")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "bench/results/engine")
