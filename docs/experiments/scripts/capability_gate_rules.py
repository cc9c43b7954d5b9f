"""How often the capability gate rejects, by rule (point or paired) and items per task.

Two parts, both decided by the product's own `locft.policies.gating.judge`:

1. Real candidates: the per-item records of `bench/snapshot_capability.py --paired` (base and
   candidate scored on every item) are cut to the gate's tasks, at the gate's default 200 items
   (the first 200: what `capability_limit = 200` scores) and at whole splits, and judged under
   each rule.
2. Operating characteristics, exact: with no real loss, each item's answer changes with the
   probability measured on those records (its flip rate f), a loss or a gain equally likely
   (f / 2 each). A real loss d adds losses on top of that noise: an item is lost with probability
   f / 2 + d, gained with f / 2. Summing the trinomial over every (lost, gained) gives the
   probability that the gate rejects, for d = 0 (a candidate with no real loss: every rejection is
   a false one) up to several points.

    python bench/capability_gate_rules.py \\
        --records bench/results/quality/capability_suite_{n1000_defaults,raw033_ratio15,round_raw033}_paired.json \\
        --out bench/results/quality/capability_gate_rules.json

Writes the JSON and a Markdown table beside it (same name, .md). Pure Python, about a minute.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence
from dataclasses import replace
from functools import lru_cache
from pathlib import Path

from locft.config import GatePolicy
from locft.policies.gating import GateMetrics, PairedCounts, judge

TASKS = ("arc_easy", "piqa")
DROPS = (0.0, 0.01, 0.02, 0.03, 0.04, 0.06, 0.08)
GATE_ITEMS = 200  # GatePolicy().capability_limit


def rules(alphas: Sequence[float]) -> dict[str, GatePolicy]:
    policy = GatePolicy(capability_tasks=())
    out = {"point": replace(policy, capability_test="point")}
    out |= {f"paired a={a:g}": replace(policy, capability_test="paired", capability_alpha=a) for a in alphas}
    return out


def rejects(policy: GatePolicy, task: str, pairs: PairedCounts, base_right: int) -> bool:
    """The product's verdict on one task, from the items that moved (scores follow from them)."""
    n = pairs.n_items
    base = base_right / n
    cand = (base_right - pairs.lost + pairs.gained) / n
    metrics = GateMetrics(reliability=None, n_facts=0, capability={task: cand}, base_capability={task: base},
                          capability_pairs={task: pairs})
    return not judge(policy, metrics).passed


def real_candidates(paths: Sequence[Path], policies: dict[str, GatePolicy]) -> list[dict]:
    rows = []
    for path in paths:
        record = json.loads(path.read_text())
        base_items, cand_items = record["items"]["base"], record["items"]["candidate"]
        for scope in ("gate", "whole"):
            row: dict = {"record": path.name, "items": scope, "tasks": {}}
            for task in TASKS:
                n = GATE_ITEMS if scope == "gate" else len(base_items[task])
                b, c = base_items[task][:n], cand_items[task][:n]
                pairs = PairedCounts.from_items(b, c)
                row["tasks"][task] = {
                    "n_items": n, "lost": pairs.lost, "gained": pairs.gained,
                    "drop": round((pairs.lost - pairs.gained) / n, 4), "p_worse": round(pairs.p_worse, 4),
                    "rejected": {name: rejects(pol, task, pairs, int(sum(b))) for name, pol in policies.items()},
                }
            row["round_rejected"] = {name: any(t["rejected"][name] for t in row["tasks"].values())
                                     for name in policies}
            rows.append(row)
    return rows


def flip_rates(paths: Sequence[Path]) -> dict[str, float]:
    """Share of items whose answer differs between base and candidate, pooled over the records
    (whole splits)."""
    changed = {t: 0 for t in TASKS}
    total = {t: 0 for t in TASKS}
    for path in paths:
        items = json.loads(path.read_text())["items"]
        for t in TASKS:
            changed[t] += sum(b != c for b, c in zip(items["base"][t], items["candidate"][t]))
            total[t] += len(items["base"][t])
    return {t: changed[t] / total[t] for t in TASKS}


def reject_probability(policy: GatePolicy, task: str, n: int, flip: float, drop: float) -> float:
    """Exact P(gate rejects) when each item is lost w.p. flip/2 + drop and gained w.p. flip/2."""
    p_lost, p_gained = flip / 2 + drop, flip / 2
    changed = p_lost + p_gained
    # Beyond mean + 12 sd the trinomial's mass is far below the printed precision.
    top = min(n, math.ceil(changed * n + 12 * math.sqrt(changed * n) + 20))

    @lru_cache(maxsize=None)
    def verdict(lost: int, gained: int) -> bool:
        return rejects(policy, task, PairedCounts(n, lost, gained), n // 2)

    log_n = math.lgamma(n + 1)
    total = 0.0
    for lost in range(top + 1):
        for gained in range(top + 1 - lost):
            if not verdict(lost, gained):
                continue
            rest = n - lost - gained
            log_p = (log_n - math.lgamma(lost + 1) - math.lgamma(gained + 1) - math.lgamma(rest + 1)
                     + lost * _log(p_lost) + gained * _log(p_gained) + rest * math.log1p(-changed))
            total += math.exp(log_p)
    return total


def _log(p: float) -> float:
    return math.log(p) if p > 0 else -math.inf


def markdown(result: dict) -> str:
    names = list(result["rules"])
    lines = ["# Capability gate: how often each rule rejects", "",
             f"Flip rates (share of items whose answer changes, pooled over {len(result['records'])} candidates "
             f"at 1,000 facts, whole splits): " + ", ".join(f"{t} {f:.3f}" for t, f in result["flip_rates"].items()),
             "", "## A candidate with no real loss (true drop 0): every rejection is a false one", "",
             "| items per task | rule | " + " | ".join(TASKS) + " | round (either task) |",
             "|---|---|" + "---:|" * (len(TASKS) + 1)]
    for scope, block in result["operating"].items():
        for name in names:
            per = [block[t][name]["0.0"] for t in TASKS]
            either = 1 - math.prod(1 - p for p in per)
            lines.append(f"| {scope} | {name} | " + " | ".join(f"{p:.3f}" for p in per) + f" | {either:.3f} |")
    lines += ["", "## A real loss: probability of rejecting it (per task)", "",
              "| task | items | rule | " + " | ".join(f"drop {d:g}" for d in DROPS) + " |",
              "|---|---:|---|" + "---:|" * len(DROPS)]
    for scope, block in result["operating"].items():
        for t in TASKS:
            for name in names:
                cells = " | ".join(f"{block[t][name][str(d)]:.3f}" for d in DROPS)
                lines.append(f"| {t} | {block[t]['n_items']} | {name} | {cells} |")
    lines += ["", "## Real candidates (1,000 ZsRE facts), judged by each rule", "",
              "| record | items | " + " | ".join(f"{t} drop (lost/gained, p)" for t in TASKS) + " | "
              + " | ".join(f"{n}: rejected" for n in names) + " |",
              "|---|---|" + "---|" * len(TASKS) + "---|" * len(names)]
    for row in result["real"]:
        cells = " | ".join(f"{v['drop']:+.3f} ({v['lost']}/{v['gained']}, p {v['p_worse']:.3f})"
                           for v in row["tasks"].values())
        verdicts = " | ".join("yes" if row["round_rejected"][n] else "no" for n in names)
        lines.append(f"| {row['record']} | {row['items']} | {cells} | {verdicts} |")
    lines += ["", f"Computed in {result['seconds']:.0f} s by `bench/capability_gate_rules.py`.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=Path, nargs="+", required=True,
                        help="snapshot_capability.py --paired records with whole splits of the gate's tasks")
    parser.add_argument("--alphas", default="0.05,0.01", help="paired-rule significance levels to compare")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    started = time.perf_counter()
    policies = rules([float(a) for a in args.alphas.split(",")])
    flips = flip_rates(args.records)
    whole = {t: len(json.loads(args.records[0].read_text())["items"]["base"][t]) for t in TASKS}
    operating: dict[str, dict] = {}
    for scope, sizes in (("200", {t: GATE_ITEMS for t in TASKS}), ("whole split", whole)):
        operating[scope] = {}
        for t in TASKS:
            operating[scope][t] = {"n_items": sizes[t]}
            for name, pol in policies.items():
                operating[scope][t][name] = {str(d): round(reject_probability(pol, t, sizes[t], flips[t], d), 4)
                                             for d in DROPS}
                print(scope, t, name, operating[scope][t][name], flush=True)
    result = {
        "records": [str(p) for p in args.records], "flip_rates": {t: round(f, 4) for t, f in flips.items()},
        "max_capability_drop": GatePolicy().max_capability_drop, "rules": list(policies),
        "operating": operating, "real": real_candidates(args.records, policies),
        "seconds": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
