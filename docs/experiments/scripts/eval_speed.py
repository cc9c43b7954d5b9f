"""How much batching and the base-answer cache save in generation-based evaluation.

Greedy generation is what evaluation costs on a CPU (reliability, generalization and locality
are all measured by generating). This runs the base model's greedy answers to the same prompts
(the first N ZsRE facts' edit prompts and their locality prompts) one prompt at a time and in
left-padded batches, checks the answers agree, and times the base-answer cache that the gates
use for probe prompts (first call generates, second reads the cache).

    python bench/eval_speed.py --n 48 --batch-sizes 1,8,32 --threads 1 \\
        --out bench/results/quality/eval_speed.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("LOCFT_BENCH_DATA", "")) / "zsre_dev.json")
    parser.add_argument("--n", type=int, default=64, help="facts; each gives an edit prompt and a locality prompt")
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--home", type=Path, default=Path(os.environ.get("LOCFT_HOME", ".locft-home")))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    import torch

    from locft.config import ModelConfig
    from locft.engine.data import resolve_prompt_format
    from locft.engine.generate import greedy_generate
    from locft.engine.model_io import load_base
    from locft.evaluation.probes import base_answers
    from locft.readers import load_edit_facts

    torch.set_num_threads(args.threads)
    loaded = load_base(ModelConfig(), args.home)
    fmt = resolve_prompt_format("auto", loaded.tokenizer)
    facts = load_edit_facts(args.data)[: args.n]
    prompts = [f.prompt for f in facts] + [f.probes[0].prompt for f in facts if f.probes]

    runs: list[dict[str, Any]] = []
    answers: dict[int, list[str]] = {}
    for size in (int(s) for s in args.batch_sizes.split(",")):
        t = time.perf_counter()
        gens = greedy_generate(loaded, prompts, fmt, args.max_new_tokens, batch_size=size)
        seconds = time.perf_counter() - t
        answers[size] = [g.text for g in gens]
        runs.append({"batch_size": size, "seconds": round(seconds, 1),
                     "prompts_per_s": round(len(prompts) / seconds, 2),
                     "new_tokens": sum(len(g.token_ids) for g in gens)})
        print(runs[-1], flush=True)
    first = answers[runs[0]["batch_size"]]
    for run in runs:
        same = sum(a == b for a, b in zip(first, answers[run["batch_size"]]))
        run["same_answer_as_first"] = round(same / len(first), 4)
        run["speedup_vs_first"] = round(runs[0]["seconds"] / run["seconds"], 2)

    largest = max(runs, key=lambda r: r["batch_size"])["batch_size"]
    with tempfile.TemporaryDirectory() as cache_dir:
        cache_runs = []
        for _ in range(2):
            t = time.perf_counter()
            _, generated = base_answers(prompts, lambda ps: greedy_generate(loaded, ps, fmt, args.max_new_tokens,
                                                                            batch_size=largest),
                                        Path(cache_dir), loaded.fingerprint, fmt, args.max_new_tokens)
            cache_runs.append({"seconds": round(time.perf_counter() - t, 2), "generated": generated})
    record = {
        "n_prompts": len(prompts), "max_new_tokens": args.max_new_tokens, "threads": args.threads,
        "prompt_format": fmt, "generation": runs, "base_answer_cache": cache_runs,
        "machine": f"{platform.platform()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
                   f"{torch.backends.cpu.get_cpu_capability()}",
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
