"""Cross-check for bench/serving_lm_eval.sh: lm-eval's in-process HFLM (locft.evaluation.capability)
on the same home's base model and version 1, ARC-Easy first 50 items.

    python bench/serving_crosscheck.py /tmp/srvbench/home
"""
import json
import sys
from pathlib import Path

import torch

from locft.config import ModelConfig
from locft.engine.model_io import load_base
from locft.engine.snapshot import apply_snapshot, load_snapshot
from locft.evaluation.capability import measure_capability
from locft.store import Store

torch.set_num_threads(1)
home = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/srvbench/home")
loaded = load_base(ModelConfig(), home)
out = {"v0": measure_capability(loaded.model, loaded.tokenizer, ["arc_easy"], 50, home / "cache" / "hf")}
with Store.open(home) as s:
    apply_snapshot(loaded, load_snapshot(s.snapshot_dir(1)))
out["v1"] = measure_capability(loaded.model, loaded.tokenizer, ["arc_easy"], 50, home / "cache" / "hf")
print(json.dumps(out))
