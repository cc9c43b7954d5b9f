"""p50 latency of a 16-token completion on two HTTP stacks in one run: this tree's and another
commit's (e.g. the stdlib http.server one before the FastAPI port), on the embedded model.

    git worktree add /tmp/locft-old <commit>
    python bench/serving_stack_ab.py --old /tmp/locft-old --label-old "http.server (<commit>)"

Both `locft serve` processes run at once on one home (the same store, the same promoted
version), each with its own port; one `openai` client asks them in turn, one request at a
time (old, new, old, new, ...), so that the load of this shared machine falls on both alike.
Greedy /v1/completions with max_tokens 16 over the prompts of bench/serving_latency.py; both
stacks must give the same text. Results: bench/results/serving_stack_ab.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.serving_latency import PROMPTS, cpu_seconds, load, pct  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(tree: Path, home: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    # cwd = the tree: `python -m locft...` imports that tree's package first
    env = {**os.environ, "LOCFT_HOME": str(home), "PYTHONPATH": str(tree)}
    return subprocess.Popen([sys.executable, "-m", "locft.cli.main", "serve", "--port", str(port)], cwd=tree,
                            env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)


def wait_health(url: str, proc: subprocess.Popen[bytes], timeout: float = 900) -> float:
    t = time.perf_counter()
    while time.perf_counter() - t < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"a server exited ({proc.args})")
        try:
            with urllib.request.urlopen(url + "/health", timeout=5) as r:
                if r.status == 200:
                    return time.perf_counter() - t
        except OSError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"{url} did not start")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", type=Path, required=True, help="a checkout (git worktree) of the other commit")
    ap.add_argument("--label-old", default="old")
    ap.add_argument("--label-new", default="new")
    ap.add_argument("--n", type=int, default=30, help="requests per stack")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--n-health", type=int, default=200, help="GET /health requests per stack")
    ap.add_argument("--home", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args()
    import openai

    home = args.home or Path(tempfile.mkdtemp(prefix="locft-ab-"))
    if not (home / "locft.db").exists():  # by the old tree: older code refuses a store with newer migrations
        subprocess.run([sys.executable, "-m", "locft.cli.main", "init"], cwd=args.old,
                       env={**os.environ, "LOCFT_HOME": str(home), "PYTHONPATH": str(args.old)},
                       check=True, capture_output=True)
    (home / "logs").mkdir(exist_ok=True)
    stacks = {args.label_old: args.old.resolve(), args.label_new: ROOT}
    procs, urls, startup = {}, {}, {}
    try:
        for label, tree in stacks.items():  # one after the other (the old one first): the first converts the GGUF
            port = free_port()
            procs[label] = start(tree, home, port, home / "logs" / f"ab-{len(procs)}.log")
            urls[label] = f"http://127.0.0.1:{port}"
            startup[label] = wait_health(urls[label], procs[label])
        clients = {k: openai.OpenAI(base_url=u + "/v1", api_key="unused", max_retries=0, timeout=300)
                   for k, u in urls.items()}
        for c in clients.values():  # warm-up
            for p in PROMPTS[:2]:
                c.completions.create(model="locft", prompt=p, max_tokens=args.max_tokens)
        samples: dict[str, list[float]] = {k: [] for k in stacks}
        texts: dict[str, list[str]] = {k: [] for k in stacks}
        cpu0 = {k: cpu_seconds(procs[k].pid) for k in stacks}
        before = load()
        for i in range(args.n):
            order = list(stacks) if i % 2 == 0 else list(reversed(stacks))
            for k in order:
                t = time.perf_counter()
                r = clients[k].completions.create(model="locft", prompt=PROMPTS[i % len(PROMPTS)],
                                                  max_tokens=args.max_tokens)
                samples[k].append(time.perf_counter() - t)
                texts[k].append(r.choices[0].text)
                assert r.usage.completion_tokens == args.max_tokens or r.choices[0].finish_reason == "stop"
        after = load()
        cpu = {k: (cpu_seconds(procs[k].pid) - cpu0[k]) / args.n for k in stacks}
        # the stack alone: GET /health (no model), a new connection each time, in turn
        health: dict[str, list[float]] = {k: [] for k in stacks}
        for i in range(args.n_health):
            for k in (list(stacks) if i % 2 == 0 else list(reversed(stacks))):
                t = time.perf_counter()
                with urllib.request.urlopen(urls[k] + "/health", timeout=30) as r:
                    r.read()
                health[k].append(time.perf_counter() - t)
    finally:
        for p in procs.values():
            p.terminate()
        for p in procs.values():
            p.wait(60)
    same = texts[args.label_old] == texts[args.label_new]
    result = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": platform.machine(),
        "cpus": os.cpu_count(), "n": args.n, "max_tokens": args.max_tokens, "same_texts": same,
        "loadavg_before": before, "loadavg_after": after,
        "stacks": {k: {"tree": str(stacks[k]), "startup_s": startup[k], "p50_s": pct(samples[k], 0.5),
                       "p95_s": pct(samples[k], 0.95), "min_s": min(samples[k]), "max_s": max(samples[k]),
                       "server_cpu_s_per_request": cpu[k], "health_p50_ms": 1000 * pct(health[k], 0.5),
                       "health_p95_ms": 1000 * pct(health[k], 0.95), "samples_s": samples[k]} for k in stacks},
        "command": "python " + shlex.join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serving_stack_ab.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    rows = "\n".join(f"| {k} | {v['p50_s']:.3f} | {v['p95_s']:.3f} | {v['min_s']:.3f} | {v['max_s']:.3f} | "
                     f"{v['server_cpu_s_per_request']:.3f} | {v['health_p50_ms']:.2f} | {v['health_p95_ms']:.2f} | "
                     f"{v['startup_s']:.1f} |" for k, v in result["stacks"].items())
    md = f"""# p50 latency of a 16-token completion: two HTTP stacks in one run (bench/serving_stack_ab.py)

`{result['command']}`

Embedded SmolLM2-135M-Instruct, fp32, CPU ({result['cpus']} CPUs shared with other jobs), `locft serve` per
stack (1 torch thread each, the default on 2 cores), one `openai` client asking them in turn,
{args.n} greedy /v1/completions of {args.max_tokens} tokens each; {result['when']}. Load average before
{before}, after {after}. Both stacks gave the same texts: {same}. Then {args.n_health} GET /health
per stack, in turn, each on a new connection (urllib): the HTTP stack without the model.

| stack | p50 s | p95 s | min s | max s | server CPU s/request | GET /health p50 ms | p95 ms | start s (incl. model load) |
|---|---|---|---|---|---|---|---|---|
{rows}
"""
    (args.out / "serving_stack_ab.md").write_text(md, encoding="utf-8")
    print(md)


if __name__ == "__main__":
    main()
