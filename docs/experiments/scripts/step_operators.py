"""Operators per training step of the cached and the reference loop, at a small Llama shape on the
CPU: how much the host dispatches per step (each is a kernel launch or more on a GPU), counted by
locft.step_profile, for the code on PYTHONPATH. Made docs/experiments/gpu/*_host_operators_cpu.*.

    PYTHONPATH=. python docs/experiments/scripts/step_operators.py --data $LOCFT_BENCH_DATA/zsre_dev.json \
        --out ops.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

import torch

SMALL_LLAMA = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 6,
               "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000,
               "max_position_embeddings": 512, "rope_theta": 500000.0}


def main() -> None:
    from locft.config import EditConfig, ModelConfig
    from locft.engine.resolve import resolve_edit_config
    from locft.readers import load_edit_facts
    from locft.speed import random_init_model
    from locft.step_profile import profile_loop

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--n", type=int, default=400)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = Path(tempfile.mkdtemp()) / "config.json"
    config.write_text(json.dumps(SMALL_LLAMA))
    loaded = random_init_model(config, ModelConfig(device="cpu"))
    facts = load_edit_facts(args.data, "auto", limit=args.n)
    rows = []
    for rows_per_pass, tokens_per_pass in ((32, 1024), (512, 8192)):  # the CPU's and the H200's pass sizes
        for mode in ("cached", "reference"):
            asked = EditConfig(batch_size=100, layers=(4,), location="model.layers.{L}.mlp.down_proj.weight",
                               max_epochs=2, skip_loss=0.0, stop_loss=0.0, forward_mode=mode,
                               micro_batch_size=rows_per_pass, micro_batch_tokens=tokens_per_pass,
                               compute_dtype="float32")
            profile = profile_loop(loaded, facts, resolve_edit_config(loaded, asked, len(facts)), args.steps)
            rows.append({"forward_mode": mode, "micro_batch_size": rows_per_pass,
                         "micro_batch_tokens": tokens_per_pass, "augment_prefixes": asked.augment_prefixes,
                         "operators_per_step": profile["operators_per_step"],
                         "wall_ms_per_step_profiled": profile["wall_ms_per_step"]})
            print(json.dumps(rows[-1]))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    args.out.write_text(json.dumps({"shape": SMALL_LLAMA, "n": args.n, "steps": args.steps, "commit": commit,
                                    "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
