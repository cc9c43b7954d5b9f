"""Training throughput of locft's loop vs the reference recipe, side by side on the same facts.

The reference is the paper's released loop (forward_mode "reference": full forward from the
embeddings, logits at every position, fp32); locft's "cached" forward runs only the layers above
the tuned weight on activations computed once and takes logits at target positions only. Both
train the same facts with the same seed and no replay, so the loss per epoch must agree (it is
printed next to each other) and the ratio of edits x epochs per second is the speedup. A bfloat16
row (autocast, edit.compute_dtype) shows what bf16 matmuls add on a CPU or GPU that has them; its
losses agree to bf16 precision, not exactly. The last rows show the default round setting
(cached + replay) for what an operator actually pays.

    python bench/train_throughput.py --n 100 --epochs 3 --out bench/results/quality/throughput
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace
from pathlib import Path

from locft.benchmark import environment
from locft.config import EditConfig, ModelConfig
from locft.engine.model_io import load_base
from locft.engine.train import edit
from locft.readers import load_edit_facts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.path.join(os.environ.get("LOCFT_BENCH_DATA", ""), "zsre_dev.json"))
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--out", required=True, help="path without suffix: writes .json and .md")
    ap.add_argument("--home", default=os.environ.get("LOCFT_HOME", str(Path.home() / ".locft")))
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    loaded = load_base(ModelConfig(), Path(args.home))
    facts = load_edit_facts(Path(args.data), "auto", limit=args.n)
    # skip/stop thresholds off so that every run does exactly `epochs` full epochs
    common = EditConfig(max_epochs=args.epochs, skip_loss=0.0, stop_loss=0.0)
    runs = {
        "reference (paper's loop)": replace(common, forward_mode="reference", replay_ratio=0.0, compute_dtype="float32"),
        "locft cached": replace(common, forward_mode="cached", replay_ratio=0.0, compute_dtype="float32"),
        "locft cached, bfloat16": replace(common, forward_mode="cached", replay_ratio=0.0, compute_dtype="bfloat16"),
        "locft cached + replay, float32": replace(common, forward_mode="cached", compute_dtype="float32"),
        "locft cached + replay (round default)": replace(common, forward_mode="cached"),
    }
    rows = []
    for name, cfg in runs.items():
        t0 = time.perf_counter()
        result = edit(loaded, facts, cfg, cache_dir=Path(args.home) / "cache")
        wall = time.perf_counter() - t0
        one_time = result.cache_seconds + result.setup_seconds
        throughput = len(facts) * len(result.epochs) / (result.train_seconds + one_time)
        rows.append({
            "run": name, "forward_mode": result.forward_mode, "replay_pool": result.n_replay,
            "compute_dtype": result.compute_dtype,
            "epochs": len(result.epochs), "cache_seconds": round(result.cache_seconds, 2),
            "setup_seconds": round(result.setup_seconds, 2),
            "train_seconds": round(result.train_seconds, 2), "wall_seconds": round(wall, 2),
            "edits_x_epochs_per_second": round(throughput, 3),
            "seconds_per_epoch": round(result.train_seconds / len(result.epochs), 2),
            "loss_per_epoch": [round(e.mean_loss, 6) for e in result.epochs],
        })
        print(json.dumps(rows[-1]), flush=True)
    ref = rows[0]["edits_x_epochs_per_second"]
    ref_epoch = rows[0]["seconds_per_epoch"]
    for r in rows:
        r["speedup_vs_reference"] = round(r["edits_x_epochs_per_second"] / ref, 2)
        # steady state: what a round of many epochs approaches once the one-time cost is spread
        r["speedup_per_epoch"] = round(ref_epoch / r["seconds_per_epoch"], 2)
    record = {"n": len(facts), "data": args.data, "epochs": args.epochs, "rows": rows,
              "load_average": os.getloadavg(), "environment": environment()}
    Path(args.out + ".json").write_text(json.dumps(record, indent=1) + "\n")
    lines = [
        "# Training throughput: locft vs the reference loop",
        "",
        f"`python bench/train_throughput.py --n {args.n} --epochs {args.epochs}"
        f"{f' --threads {args.threads}' if args.threads else ''} --out {args.out}` "
        f"({len(facts)} ZsRE facts, embedded SmolLM2-135M, CPU, {record['environment']['torch_threads']} "
        f"torch threads, load average at the end {', '.join(f'{x:.1f}' for x in record['load_average'])}). "
        "Throughput counts fact edits x epochs per second, one-time costs included: the activation cache, "
        "the forward-mode check, and for replay runs the base model's distribution on the replay prompts. "
        "The per-epoch speedup leaves them out, which is what a round of many epochs approaches.",
        "",
        "| run | compute | edits x epochs / s | speedup | s per epoch | speedup per epoch | one-time s | "
        "train s (with one-time) | loss per epoch |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(f"| {r['run']} | {r['compute_dtype']} | {r['edits_x_epochs_per_second']:.2f} | "
                     f"{r['speedup_vs_reference']:.2f}x | {r['seconds_per_epoch']:.1f} | {r['speedup_per_epoch']:.2f}x | "
                     f"{r['cache_seconds'] + r['setup_seconds']:.1f} | "
                     f"{r['train_seconds'] + r['cache_seconds'] + r['setup_seconds']:.1f} | "
                     f"{', '.join(f'{x:.4f}' for x in r['loss_per_epoch'])} |")
    Path(args.out + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
