"""Seconds per epoch, A/B in one process: replay target (tokens | distribution) x micro-batch
size (64 = one pass per 32+32-row batch, 32 = two passes). 100 ZsRE facts, 2 epochs, round
defaults otherwise; the second epoch is the steady-state figure.

    python bench/step_cost_ab.py > bench/results/quality/step_cost_ab.jsonl
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from locft.config import EditConfig, ModelConfig
from locft.engine.model_io import load_base
from locft.engine.replay import replay_for
from locft.engine.resolve import resolve_edit_config
from locft.engine.train import edit
from locft.readers import load_edit_facts


def main() -> None:
    home = Path(os.environ.get("LOCFT_HOME", str(Path.home() / ".locft")))
    loaded = load_base(ModelConfig(), home)
    facts = load_edit_facts(Path(os.environ.get("LOCFT_BENCH_DATA", "")) / "zsre_dev.json", "auto", limit=100)
    for target, mb in (("tokens", 64), ("tokens", 32), ("distribution", 64), ("distribution", 32)):
        cfg = resolve_edit_config(loaded, EditConfig(max_epochs=2, skip_loss=0.0, stop_loss=0.0,
                                                     replay_target=target, micro_batch_size=mb), len(facts))
        replay = replay_for(loaded, cfg, cfg.prompt_format, len(facts), exclude=[f.prompt for f in facts],
                            cache_dir=home / "cache")
        r = edit(loaded, facts, cfg, replay=replay)
        row = {"replay_target": target, "micro_batch_size": mb,
               "seconds_per_epoch": [round(e.seconds, 2) for e in r.epochs], "cache_s": round(r.cache_seconds, 1)}
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
