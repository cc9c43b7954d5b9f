"""Sweep edit settings for locality on one fact slice, loading the model and base answers once.

Each variant is a JSON object of EditConfig overrides. Per variant it trains, then measures
reliability and generalization (greedy generation, exact match), and locality two ways:
on the facts' own probes (ZsRE: NQ questions) and on the daemon's fixed 100-prompt probe set
(four prompt styles), each as token-level agreement with the base model's continuation, plus
exact-answer agreement on the facts' probes. One JSON line per variant is appended to --out.

    python bench/locality_sweep.py --n 100 --out bench/results/quality/sweep_n100.jsonl \
        '{"replay_ratio": 1.0}' '{"replay_ratio": 1.0, "replay_pool": "mixed"}'
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from locft.benchmark import environment, peak_rss_bytes
from locft.config import EditConfig, ModelConfig, to_dict
from locft.engine.data import resolve_prompt_format
from locft.engine.generate import greedy_generate
from locft.engine.model_io import load_base
from locft.engine.replay import replay_for
from locft.engine.resolve import resolve_edit_config
from locft.engine.train import edit
from locft.engine.weights import applied
from locft.evaluation.editing import token_agreement
from locft.evaluation.probes import FIXED_PROBE_PROMPTS
from locft.readers import load_edit_facts
from locft.text import exact_match, normalize_answer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("variants", nargs="+", help="JSON objects of EditConfig overrides")
    ap.add_argument("--data", default=os.path.join(os.environ.get("LOCFT_BENCH_DATA", ""), "zsre_dev.json"))
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--offset", type=int, default=0)
    ap.add_argument("--out", required=True)
    ap.add_argument("--home", default=os.environ.get("LOCFT_HOME", str(Path.home() / ".locft")))
    ap.add_argument("--model", default=None, help="local model directory or GGUF (default: embedded)")
    args = ap.parse_args()

    home = Path(args.home)
    loaded = load_base(ModelConfig(path=args.model) if args.model else ModelConfig(), home)
    facts = load_edit_facts(Path(args.data), "auto", limit=args.offset + args.n)[args.offset :]
    fmt = resolve_prompt_format("auto", loaded.tokenizer)
    fact_probes = [p.prompt for f in facts for p in f.probes]
    probe_set = list(FIXED_PROBE_PROMPTS)
    t = time.perf_counter()
    base_facts = greedy_generate(loaded, fact_probes, fmt, 32)
    base_set = greedy_generate(loaded, probe_set, fmt, 32)
    print(f"base answers: {time.perf_counter() - t:.0f} s", file=sys.stderr)
    evaluated = [f.prompt for f in facts] + [p for f in facts for p in f.paraphrases] + fact_probes + probe_set

    for raw in args.variants:
        overrides = json.loads(raw)
        # resolved first, so that '{}' means the model's defaults (replay included)
        cfg = resolve_edit_config(loaded, replace(EditConfig(), **overrides), len(facts))
        replay = replay_for(loaded, cfg, fmt, len(facts), exclude=evaluated, cache_dir=home / "cache")
        t0 = time.perf_counter()
        result = edit(loaded, facts, cfg, replay=replay)
        train_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        with applied(loaded.model, result.tensors):
            rel = greedy_generate(loaded, [f.prompt for f in facts], fmt, 32)
            pairs = [(p, f.answer) for f in facts for p in f.paraphrases]
            gen = greedy_generate(loaded, [p for p, _ in pairs], fmt, 32)
            now = greedy_generate(loaded, fact_probes, fmt, 32)
            tok_facts = token_agreement(loaded, fact_probes, base_facts, fmt)
            tok_set = token_agreement(loaded, probe_set, base_set, fmt)
        eval_s = time.perf_counter() - t1
        styles = {name: sum(tok_set[i::4]) / len(tok_set[i::4])
                  for i, name in enumerate(("question", "search", "completion", "instruction"))}
        row = {
            "variant": overrides,
            "n": len(facts),
            "reliability": sum(exact_match(g.answer, f.answer) for g, f in zip(rel, facts)) / len(facts),
            "generalization": sum(exact_match(g.answer, a) for g, (_, a) in zip(gen, pairs)) / max(len(pairs), 1),
            "locality_token_fact_probes": sum(tok_facts) / max(len(tok_facts), 1),
            "locality_exact_fact_probes": sum(normalize_answer(a.answer) == normalize_answer(b.answer)
                                              for a, b in zip(now, base_facts)) / max(len(now), 1),
            "locality_token_probe_set": sum(tok_set) / len(tok_set),
            "locality_token_probe_set_by_style": styles,
            "epochs": len(result.epochs),
            "final_loss": result.epochs[-1].mean_loss,
            "steps": result.steps,
            "replay_pool": len(replay),
            "train_seconds": round(train_s, 1),
            "eval_seconds": round(eval_s, 1),
            "peak_memory_bytes": peak_rss_bytes(),
            "config": to_dict(result.config) if result.config else None,
            "torch_threads": torch.get_num_threads(),
        }
        print(json.dumps({k: v for k, v in row.items() if k != "config"}), file=sys.stderr)
        with open(args.out, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row | {"environment": environment()}) + "\n")


if __name__ == "__main__":
    main()
