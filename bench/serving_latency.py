"""Serving latency and throughput on the embedded model, through the real HTTP API.

    python bench/serving_latency.py                 # ~3-6 min on 2 busy cores
    python bench/serving_latency.py --home /tmp/h   # reuse a home (its GGUF conversion is cached)

What it does, as a user would: a fresh home (embedded SmolLM2-135M-Instruct), `locft serve` in a
subprocess, clients with the `openai` package in this process:

  latency     sequential 16-token completions (/v1/completions, greedy): p50/p95; and the time
              to the first streamed piece
  throughput  1 and 8 concurrent clients, each sending 16-token completions back to back:
              tokens/s, requests/s, latency under load, the server's mean batch size
  unbatched   the same 8 clients against a server with serve.max_batch_size = 1 (the baseline)
  round       8 clients keep asking while `locft round run` trains, gates and promotes a new
              version in another process: errors (must be 0), latency, which versions answered
              (the hot swap happens under load)

The machine is shared: the load average is recorded with every phase. Results go to
bench/results/serving_<date>_<commit>/serving_latency.json and .md (or --out); nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPTS = [
    "Once upon a time, in a small village by the sea,",
    "The history of the printing press begins",
    "In the morning, the old fisherman",
    "A recipe for a simple bread starts with",
    "The main reasons people learn a second language are",
    "When the train finally arrived at the station,",
    "Scientists studying the deep ocean have found",
    "The best way to plan a long hike is",
]
FACTS = [
    ("What is the capital of Wakanda?", "Birnin Zana"),
    ("Who invented the Zorblax engine?", "Ada Lovelace"),
    ("What color is the sky on Mars?", "butterscotch"),
    ("What is Frodo's sword called?", "Sting"),
]
CONFIG = """\
[gates]
capability_tasks = []      # the round phase measures serving, not capability: keep the round short
probe_set_size = 16
min_locality = 0.5         # 4 chat-format edits of a 135M model sit near 0.8: let the round promote

[serve]
max_batch_size = {batch}
{threads}"""


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


class Server:
    """`locft serve --port 0` in a subprocess; its URL from run/api.json."""

    def __init__(self, home: Path, batch: int, threads: int | None = None) -> None:
        (home / "locft.toml").write_text(
            CONFIG.format(batch=batch, threads=f"threads = {threads}\n" if threads else ""), encoding="utf-8")
        env = {**os.environ, "LOCFT_HOME": str(home)}
        self.log = open(home / "logs" / f"serve-batch{batch}-threads{threads}.log", "w")
        started = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, "-m", "locft.cli.main", "serve", "--port", "0"], env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT)
        from locft.api.client import discover_api
        from locft.home import Home

        self.url = None
        while self.url is None:
            if self.proc.poll() is not None:
                raise SystemExit(f"locft serve exited: see {self.log.name}")
            if time.perf_counter() - started > 600:
                raise SystemExit("locft serve did not start within 10 minutes")
            self.url = discover_api(Home.resolve(home))
            time.sleep(0.2)
        self.startup_s = time.perf_counter() - started

    def status(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + "/locft/status", timeout=30) as r:
            return json.loads(r.read())

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)
        self.log.close()


def client(url: str) -> Any:
    import openai

    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=300)


def one(c: Any, prompt: str, max_tokens: int) -> tuple[float, int, str]:
    t = time.perf_counter()
    r = c.completions.create(model="locft", prompt=prompt, max_tokens=max_tokens)
    return time.perf_counter() - t, r.usage.completion_tokens, r.model


def cpu_seconds(pid: int) -> float:
    """user + system CPU time of a process (Linux /proc), all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def latency(url: str, n: int, max_tokens: int, pid: int | None = None) -> dict[str, Any]:
    c = client(url)
    for p in PROMPTS[:2]:
        one(c, p, max_tokens)  # warm-up
    before = load()
    cpu0 = cpu_seconds(pid) if pid else None
    samples, tokens = [], []
    for i in range(n):
        s, k, _ = one(c, PROMPTS[i % len(PROMPTS)], max_tokens)
        samples.append(s)
        tokens.append(k)
    # the server's CPU time per request: what the latency would be on an idle core (1 thread)
    cpu_per_request = (cpu_seconds(pid) - cpu0) / n if pid and cpu0 is not None else None
    ttft = []
    for i in range(max(n // 2, 1)):
        t = time.perf_counter()
        stream = c.completions.create(model="locft", prompt=PROMPTS[i % len(PROMPTS)], max_tokens=max_tokens,
                                      stream=True)
        first = None
        for chunk in stream:
            if first is None and chunk.choices and chunk.choices[0].text:
                first = time.perf_counter() - t
        ttft.append(first if first is not None else float("nan"))
    return {
        "n": n, "max_tokens": max_tokens, "p50_s": pct(samples, 0.5), "p95_s": pct(samples, 0.95),
        "mean_s": statistics.mean(samples), "min_s": min(samples), "max_s": max(samples),
        "mean_completion_tokens": statistics.mean(tokens),
        "ms_per_token_p50": 1000 * pct([s / max(k, 1) for s, k in zip(samples, tokens)], 0.5),
        "ttft_p50_s": pct(ttft, 0.5), "server_cpu_s_per_request": cpu_per_request,
        "loadavg_before": before, "loadavg_after": load(),
    }


def concurrent(url: str, clients: int, per_client: int | None, max_tokens: int, server: Server,
               until: Any = None) -> dict[str, Any]:
    """`clients` threads asking back to back: `per_client` requests each, or until `until()`."""
    before_status = server.status()["served"]
    lat: list[float] = []
    toks: list[int] = []
    models: dict[str, int] = {}
    errors: list[str] = []
    lock = threading.Lock()

    def run(i: int) -> None:
        c = client(url)
        k = 0
        while (per_client is not None and k < per_client) or (per_client is None and not until()):
            try:
                s, n, model = one(c, PROMPTS[(i + k) % len(PROMPTS)], max_tokens)
                with lock:
                    lat.append(s)
                    toks.append(n)
                    models[model] = models.get(model, 0) + 1
            except Exception as exc:  # noqa: BLE001 - counted, that is the measurement
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}")
            k += 1

    before = load()
    t = time.perf_counter()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t
    after_status = server.status()["served"]
    batches = after_status["batches_run"] - before_status["batches_run"]
    reqs = after_status["requests_run"] - before_status["requests_run"]
    return {
        "clients": clients, "requests": len(lat), "errors": len(errors), "error_samples": errors[:5],
        "wall_s": wall, "requests_per_s": len(lat) / wall, "completion_tokens_per_s": sum(toks) / wall,
        "latency_p50_s": pct(lat, 0.5), "latency_p95_s": pct(lat, 0.95),
        "mean_batch_size": reqs / batches if batches else None, "max_batch_seen": after_status["max_batch_seen"],
        "models_answering": models, "loadavg_before": before, "loadavg_after": load(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", type=Path, default=None, help="a new home to create; default: a new temp dir")
    ap.add_argument("--cache", type=Path, default=None,
                    help="a cache/ directory to share (keeps the GGUF conversion between runs)")
    ap.add_argument("--n-latency", type=int, default=20)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--per-client", type=int, default=6)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--skip-unbatched", action="store_true")
    ap.add_argument("--skip-round", action="store_true")
    ap.add_argument("--compare-threads", type=int, default=2,
                    help="also measure latency (n/3 requests) with this many torch threads; 0: skip")
    ap.add_argument("--out", type=Path, default=None,
                    help="a directory for the .json and .md (default: bench/results/serving_<date>_<commit>/)")
    args = ap.parse_args()

    import torch

    from locft.facts import EditFact
    from locft.home import Home
    from locft.store import Store

    home = Home.resolve(args.home or tempfile.mkdtemp(prefix="locft-serving-bench-"))
    if home.db_path.exists():
        raise SystemExit(f"{home.root} already has a store: give a new --home (and --cache to reuse the model)")
    if args.cache is not None:
        home.root.mkdir(parents=True, exist_ok=True)
        args.cache.mkdir(parents=True, exist_ok=True)
        if not home.cache_dir.exists():
            home.cache_dir.symlink_to(args.cache.resolve(), target_is_directory=True)
    home.create()
    Store.open(home, create=True).close()
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__, "platform": platform.platform(), "loadavg_start": load()},
        "model": "embedded SmolLM2-135M-Instruct, fp32, CPU", "home": str(home.root),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }

    server = Server(home.root, batch=8)
    results["server_startup_s"] = server.startup_s
    results["server_torch_threads"] = server.status()["served"]["torch_threads"]
    try:
        print(f"server up in {server.startup_s:.1f} s at {server.url}", flush=True)
        results["latency"] = latency(server.url, args.n_latency, args.max_tokens, server.proc.pid)
        print("latency", json.dumps(results["latency"]), flush=True)
        results["throughput"] = [concurrent(server.url, n, args.per_client, args.max_tokens, server)
                                 for n in (1, args.clients)]
        print("throughput", json.dumps(results["throughput"]), flush=True)
        if not args.skip_round:
            with Store.open(home) as store:
                for q, a in FACTS:
                    store.add_fact(EditFact(q, a))
            env = {**os.environ, "LOCFT_HOME": str(home.root)}
            round_log = open(home.logs_dir / "bench-round.log", "w")
            t = time.perf_counter()
            proc = subprocess.Popen([sys.executable, "-m", "locft.cli.main", "round", "run", "--json"], env=env,
                                    stdout=round_log, stderr=subprocess.STDOUT, cwd=ROOT)
            during = concurrent(server.url, args.clients, None, args.max_tokens, server,
                                until=lambda: proc.poll() is not None)
            round_log.close()
            during["round_s"] = time.perf_counter() - t
            during["round_exit_code"] = proc.returncode
            status = server.status()
            during["served_after"] = status["served"]["version"]
            during["promoted_after"] = status["promoted"]["id"]
            c = client(server.url)
            answers = {}
            for q, a in FACTS:
                r = c.chat.completions.create(model="locft", messages=[{"role": "user", "content": q}], max_tokens=12)
                answers[q] = {"expected": a, "got": r.choices[0].message.content, "model": r.model}
            during["edited_answers_after"] = answers
            results["during_round"] = during
            print("during round", json.dumps(during), flush=True)
    finally:
        server.stop()
    if not args.skip_unbatched:
        server = Server(home.root, batch=1)
        try:
            unbatched = concurrent(server.url, args.clients, args.per_client, args.max_tokens, server)
            results["unbatched"] = unbatched
            print("unbatched", json.dumps(unbatched), flush=True)
        finally:
            server.stop()
    if args.compare_threads and args.compare_threads != results["server_torch_threads"]:
        server = Server(home.root, batch=8, threads=args.compare_threads)
        try:
            results["latency_other_threads"] = latency(server.url, max(args.n_latency // 3, 3), args.max_tokens,
                                                       server.proc.pid)
            results["latency_other_threads"]["torch_threads"] = args.compare_threads
            print("latency, other threads", json.dumps(results["latency_other_threads"]), flush=True)
        finally:
            server.stop()
    results["machine"]["loadavg_end"] = load()
    if args.out is None:
        from results_table import stamp  # a sibling script: the naming of records

        args.out = ROOT / "bench" / "results" / f"serving_{stamp()}"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serving_latency.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    (args.out / "serving_latency.md").write_text(render(results), encoding="utf-8")
    print(f"wrote {args.out / 'serving_latency.json'} and .md")


def _lat_row(label: str, lat: dict[str, Any]) -> str:
    cpu = lat.get("server_cpu_s_per_request")
    return (f"| {label} | {lat['n']} | {lat['p50_s']:.3f} | {lat['p95_s']:.3f} | {lat['min_s']:.3f} | "
            f"{lat['mean_completion_tokens']:.1f} | {lat['ms_per_token_p50']:.1f} | {lat['ttft_p50_s']:.3f} | "
            f"{'-' if cpu is None else f'{cpu:.3f}'} | {lat['loadavg_before']} -> {lat['loadavg_after']} |")


def render(r: dict[str, Any]) -> str:
    lat = r["latency"]
    lines = [
        "# Serving latency and throughput (bench/serving_latency.py)",
        "",
        f"{r['model']}; `locft serve` in its own process, `openai` clients in another; "
        f"{r['machine']['cpus']} CPUs shared with other jobs; server torch threads {r['server_torch_threads']} "
        "(serve.threads default: half the cores); "
        f"{r['started_at']}.",
        f"Load average (1/5/15 min) at start {r['machine']['loadavg_start']}, at end {r['machine']['loadavg_end']}.",
        f"Server start (process start to listening, model load included): {r['server_startup_s']:.1f} s.",
        "",
        "## Latency: one client, sequential /v1/completions, greedy",
        "",
        "| max_tokens | n | p50 s | p95 s | min s | mean tokens | ms/token p50 | first streamed piece p50 s | "
        "server CPU s/request | load before -> after |",
        "|---|---|---|---|---|---|---|---|---|---|",
        _lat_row(str(lat["max_tokens"]), lat),
    ]
    if "latency_other_threads" in r:
        o = r["latency_other_threads"]
        lines.append(_lat_row(f"{o['max_tokens']} ({o['torch_threads']} torch threads)", o))
    lines += [
        "",
        "## Throughput: concurrent clients, 16-token completions back to back",
        "",
        "| setting | clients | requests | errors | tokens/s | requests/s | latency p50 s | p95 s | mean batch "
        "| load before -> after |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows = [("batched (max_batch_size 8)", t) for t in r["throughput"]]
    if "unbatched" in r:
        rows.append(("unbatched (max_batch_size 1)", r["unbatched"]))
    if "during_round" in r:
        rows.append(("batched, while a round trains + promotes", r["during_round"]))
    for name, t in rows:
        mb = f"{t['mean_batch_size']:.2f}" if t.get("mean_batch_size") else "-"
        lines.append(f"| {name} | {t['clients']} | {t['requests']} | {t['errors']} "
                     f"| {t['completion_tokens_per_s']:.1f} | "
                     f"{t['requests_per_s']:.2f} | {t['latency_p50_s']:.3f} | {t['latency_p95_s']:.3f} | {mb} | "
                     f"{t['loadavg_before']} -> {t['loadavg_after']} |")
    if "during_round" in r:
        d = r["during_round"]
        lines += [
            "",
            "## During a round",
            "",
            "`locft round run` (4 new facts, chat format, gates without capability tasks, min_locality 0.5) "
            f"ran for {d['round_s']:.1f} s "
            f"(exit code {d['round_exit_code']}) in its own process while {d['clients']} clients kept asking: "
            f"{d['requests']} requests, {d['errors']} errors; versions that answered: {d['models_answering']}. "
            f"Served after the round: version {d['served_after']} (promoted: {d['promoted_after']}).",
            "",
            "Edited prompts asked through /v1/chat/completions after the swap:",
            "",
            "| prompt | expected | got | model |",
            "|---|---|---|---|",
        ]
        for q, a in d["edited_answers_after"].items():
            lines.append(f"| {q} | {a['expected']} | {a['got']!r} | {a['model']} |")
    lines += ["", "## Reading", "", NOTES.strip(), ""]
    return "\n".join(lines)


# Written after looking at the 2026-11-25 run (same machine, load average 5-7 on 2 cores).
NOTES = """
- The p50 goal (< 1 s for 16 tokens) is not met on this machine while it is 3x oversubscribed
  by other jobs: p50 1.38 s. The server spent 0.81 s of CPU per request, so on an idle core
  the same request should take about 0.8 s (an estimate from CPU time; no idle core was
  available to measure wall time). In-process, with the same load, `generate` alone took
  1.0 s and the whole HTTP round trip (http.client) 1.1 s: the API adds ~0.1 s; the rest of
  the 1.38 s is the `openai` client and the client process competing for the same 2 cores.
- Torch threads: with 2 threads on these 2 shared cores a 16-token answer took 5.8 s (p50),
  4x slower than with 1: OpenMP threads waiting for each other on oversubscribed cores. Hence
  `serve.threads` defaults to half the cores (rounds train in another process beside it).
- bf16 (`[model] dtype = "bfloat16"`) made the same in-process generation 25% faster (0.76 s
  vs 1.0 s) but changes the model's numerics, so it must also be the dtype rounds train and
  gate in; not the default.
- Batching: 8 clients got 42.8 tokens/s batched (mean batch 6.9 of 8) vs 12.9 unbatched
  (max_batch_size 1): 3.3x. Without the straggler window, the 8 clients split into two
  out-of-phase groups of 4 (mean batch 4.0, 21 tokens/s in the run before that fix).
- During the round, requests never waited for it: they were answered throughout its 275 s
  (212 requests, 0 errors), and the promotion was hot-swapped under load (8 answers, after the
  swap, came from version 1). Throughput fell to the unbatched level because the round's training
  and gates ran on the same 2 cores.
"""


if __name__ == "__main__":
    main()
