"""How a round's training grows with the fact count: wall time and peak memory per phase.

For each N (default 100, 1,000, 10,000) a fresh subprocess loads the embedded model, builds the
replay pool, encodes N facts, builds the activation cache and trains `--epochs` epochs with the
round defaults (replay included), recording the seconds of each phase and the process's peak
RSS after it. Training is not run to convergence here (25 epochs x 10,000 facts is hours on
2 CPU cores): per-epoch time is what the table extrapolates from, and the measured epoch count
is printed beside it.

The ZsRE, COUNTERFACT and WikiBigEdit files hold 6,000 facts together; larger N adds each
item's paraphrases as facts of their own (same answer), which is how a store accumulates them.

    python bench/scale.py --out /tmp/scale     # writes /tmp/scale.json and .md
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

DATA = ("zsre_dev.json", "counterfact_dev.json", "wikibigedit_dev.json")


def _facts(data_dir: Path, n: int) -> list:
    from locft.facts import EditFact
    from locft.readers import load_edit_facts

    items = [f for name in DATA for f in load_edit_facts(data_dir / name)]
    facts = list(items)
    for f in items:
        facts += [EditFact(p, f.answer) for p in f.paraphrases]
    if len(facts) < n:
        raise SystemExit(f"only {len(facts)} facts available, asked for {n}")
    return facts[:n]


def _peak_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(n: int, epochs: int, data_dir: Path, home: Path) -> dict:
    """One N in this process: phases, seconds, peak RSS after each."""
    from locft.config import EditConfig, ModelConfig
    from locft.engine.model_io import load_base
    from locft.engine.replay import replay_for
    from locft.engine.resolve import resolve_edit_config
    from locft.engine.result import TrainProgress
    from locft.engine.train import edit

    phases: dict[str, dict[str, float]] = {}
    t = time.perf_counter()
    loaded = load_base(ModelConfig(), home)
    phases["load"] = {"seconds": time.perf_counter() - t, "peak_mib": _peak_mib()}
    t = time.perf_counter()
    facts = _facts(data_dir, n)
    phases["read facts"] = {"seconds": time.perf_counter() - t, "peak_mib": _peak_mib()}
    cfg = resolve_edit_config(loaded, EditConfig(max_epochs=epochs, skip_loss=0.0, stop_loss=0.0), len(facts))
    t = time.perf_counter()
    replay = replay_for(loaded, cfg, cfg.prompt_format, len(facts), exclude=[f.prompt for f in facts],
                        cache_dir=home / "cache")
    phases["replay pool (cached)"] = {"seconds": time.perf_counter() - t, "peak_mib": _peak_mib()}
    cache_peak = [float("nan")]

    def progress(p: TrainProgress) -> None:  # the cache's last batch: its peak before training starts
        if p.phase == "cache" and p.step == p.steps_per_epoch:
            cache_peak[0] = _peak_mib()

    t = time.perf_counter()
    result = edit(loaded, facts, cfg, replay=replay, progress=progress)
    train_total = time.perf_counter() - t
    phases["activation cache"] = {"seconds": result.cache_seconds, "peak_mib": cache_peak[0]}
    phases["setup (mode check, replay targets)"] = {"seconds": result.setup_seconds, "peak_mib": float("nan")}
    phases["train"] = {"seconds": result.train_seconds, "peak_mib": _peak_mib()}
    return {
        "n": n, "epochs": len(result.epochs), "phases": phases,
        "edit_call_seconds": train_total,
        "seconds_per_epoch": result.train_seconds / max(len(result.epochs), 1),
        "edits_x_epochs_per_second": n * len(result.epochs) / result.train_seconds,
        "shared_prefix_tokens": result.shared_prefix_tokens, "replay_pool": result.n_replay,
        "peak_mib": _peak_mib(), "torch_threads": __import__("torch").get_num_threads(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100,1000,10000")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--data-dir", default=os.environ.get("LOCFT_BENCH_DATA", "."))
    ap.add_argument("--home", default=os.environ.get("LOCFT_HOME", str(Path.home() / ".locft")))
    ap.add_argument("--out", help="path without suffix: writes .json and .md (driver mode)")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # child mode: measure one N, print JSON
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.epochs, Path(args.data_dir), Path(args.home))))
        return
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        cmd = [sys.executable, __file__, "--one", str(n), "--epochs", str(args.epochs),
               "--data-dir", args.data_dir, "--home", args.home]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    from locft.recorded import recorded_command

    record = {"rows": rows, "load_average": os.getloadavg(), "command": recorded_command()}
    if not args.out:
        return
    Path(args.out + ".json").write_text(json.dumps(record, indent=1) + "\n")
    base = rows[0]
    lines = [
        "# Scale: a round's training at growing fact counts",
        "",
        f"`python bench/scale.py --sizes {args.sizes} --epochs {args.epochs} --out {args.out}`; embedded "
        f"SmolLM2-135M, CPU ({rows[0]['torch_threads']} torch threads), round defaults (replay 1.0, mixed "
        f"pool), {args.epochs} epoch(s) per size, load average at the end "
        f"{', '.join(f'{x:.1f}' for x in record['load_average'])}. Peak memory is the process's peak RSS.",
        "",
        "| facts | epochs run | s / epoch | x of smallest per fact | edits x epochs / s | cache s | peak RSS MiB "
        "| 25 epochs (extrapolated) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        growth = (r["seconds_per_epoch"] / r["n"]) / (base["seconds_per_epoch"] / base["n"])
        lines.append(
            f"| {r['n']:,} | {r['epochs']} | {r['seconds_per_epoch']:.1f} | {growth:.2f} | "
            f"{r['edits_x_epochs_per_second']:.1f} | {r['phases']['activation cache']['seconds']:.1f} | "
            f"{r['peak_mib']:.0f} | {25 * r['seconds_per_epoch'] / 60:.0f} min |"
        )
    lines += ["", "Phases (seconds, peak RSS MiB after the phase):", ""]
    for r in rows:
        lines.append(f"- N={r['n']:,}: " + "; ".join(
            f"{k} {v['seconds']:.1f} s" + ("" if v["peak_mib"] != v["peak_mib"] else f" ({v['peak_mib']:.0f} MiB)")
            for k, v in r["phases"].items()))
    Path(args.out + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
