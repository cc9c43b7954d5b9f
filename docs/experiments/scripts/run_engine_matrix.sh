#!/usr/bin/env bash
# The engine's standard matrix on the embedded model (issue 2). Results: bench/results/engine/*.json,
# tabulated by `python bench/summarize.py bench/results/engine`.
# Run from the repository root with the venv active:  bash bench/run_engine_matrix.sh
set -euo pipefail
DATA=${DATA:-${LOCFT_BENCH_DATA:-.}}
OUT=${OUT:-bench/results/engine}
mkdir -p "$OUT"
run() { local name=$1; shift; echo "== $name: locft bench $*" | tee -a "$OUT/commands.txt"; locft bench "$@" --out "$OUT/$name.json"; }
# batch size at N=100: the paper's 100 (one step per epoch) vs the embedded default 32; replay off (the paper's recipe)
run zsre_n100_bf_b100 --data "$DATA/zsre_dev.json" --n 100 --batch-size 100 --replay-ratio 0
run zsre_n100_bf_b32  --data "$DATA/zsre_dev.json" --n 100 --batch-size 32 --replay-ratio 0
# breadth-first vs depth-first at N=100 (each fact gets at most 25 gradient steps in both)
run zsre_n100_df      --data "$DATA/zsre_dev.json" --n 100 --pipeline depth-first
# the headline: N=1000 breadth-first, the paper's recipe (no replay); paraphrases and probes sampled
run zsre_n1000_bf     --data "$DATA/zsre_dev.json" --n 1000 --replay-ratio 0 --eval-sample 200
