"""Eight processes add 1,000 facts each at once, through both front doors, while the daemon runs
rounds back to back over whatever has arrived (schedule.min_pending_facts = 1: each round reads
every fact, records a version over thousands of them in one transaction, gates and promotes):

  4 CLI writers     each runs `locft import` (10 files, 1,040 facts) and `locft add-fact` (10
                    facts), one process per invocation, one after the other
  4 HTTP writers    each POSTs 1,000 facts to the daemon's /locft/facts, one request per fact

Each writer also sends 50 facts of another writer (the other door): duplicates raced across
processes. All 8,000 facts must be there, each exactly once; every invocation must succeed and
every request be answered 201/200; "database is locked" must reach no user and no log.

tests/store/test_concurrency.py is the two-process, store-only version of this.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path
from typing import Any

from locft.home import Home, read_daemon_info
from locft.store import Store
from tests.daemon.conftest import env, free_port, locft, locftd, logs, read, wait_for
from tests.reliability.conftest import NO_CRON, sqlite_check
from tests.round_helpers import FACTS, config_text

WRITERS = 8
PER_WRITER = 1000
CROSS = 50  # facts of another writer each one also sends

# A round every time facts are pending; gates that every version passes (the test is about the
# store, not the model); one epoch, a sampled reliability gate: rounds stay seconds long.
GATES = "min_reliability = 0.0\nmax_retention_drop = 1.0\nreliability_sample = 16\n"


def fact(writer: int, i: int) -> dict[str, str]:
    return {"prompt": f"w{writer} fact {i}: what is the code?", "answer": f"code {writer}-{i}"}


CLI_WRITER = textwrap.dedent(
    """
    import json, subprocess, sys, time
    from pathlib import Path

    k, go, work = int(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    facts = json.loads(sys.argv[4])
    (go.parent / f"ready-{k}").touch()
    while not go.exists():
        time.sleep(0.01)
    out = {"invocations": 0, "failures": [], "started": time.time()}

    def locft(*args):
        out["invocations"] += 1
        p = subprocess.run([sys.executable, "-m", "locft.cli.main", *args], capture_output=True, text=True)
        if p.returncode != 0 or "locked" in p.stderr.lower():
            out["failures"].append([list(args[:2]), p.returncode, p.stderr[-500:]])
        return p

    batches, singles = facts[:-10], facts[-10:]
    for b in range(0, len(batches), 110):
        path = work / f"w{k}-{b}.jsonl"
        path.write_text("\\n".join(json.dumps(f) for f in batches[b:b + 110]))
        locft("import", str(path), "--author", f"cli{k}")
    for f in singles:
        locft("add-fact", f["prompt"], f["answer"], "--author", f"cli{k}")
    out["finished"] = time.time()
    print(json.dumps(out))
    """
)

HTTP_WRITER = textwrap.dedent(
    """
    import http.client, json, sys, time
    from pathlib import Path
    from urllib.parse import urlsplit

    k, go, url = int(sys.argv[1]), Path(sys.argv[2]), urlsplit(sys.argv[3])
    facts = json.loads(sys.argv[4])
    (go.parent / f"ready-{k}").touch()
    while not go.exists():
        time.sleep(0.01)
    out = {"requests": 0, "statuses": {}, "failures": [], "started": time.time()}
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=120)  # keep-alive
    for f in facts:
        body = json.dumps(dict(f, author=f"http{k}"))
        conn.request("POST", "/locft/facts", body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        text = resp.read().decode()
        out["requests"] += 1
        out["statuses"][str(resp.status)] = out["statuses"].get(str(resp.status), 0) + 1
        if resp.status not in (200, 201) or "locked" in text.lower():
            out["failures"].append([resp.status, text[:300]])
    out["finished"] = time.time()
    print(json.dumps(out))
    """
)


def test_eight_processes_add_1000_facts_each_while_rounds_run(tmp_path: Path, tiny_model_dir: Path,
                                                              figures: dict[str, Any]) -> None:
    home = Home.resolve(tmp_path / "home")
    home.create()
    text = config_text(tiny_model_dir, max_epochs=1, gates=GATES, port=free_port(),
                       schedule=NO_CRON + "min_pending_facts = 1\n")
    text = text.replace("batch_size = 4", "batch_size = 64").replace("min_locality = 0.5", "min_locality = 0.0")
    home.config_path.write_text(text, encoding="utf-8")
    Store.open(home, create=True).close()
    for prompt, answer in FACTS:  # something for the first round to train on
        locft(home, "add-fact", prompt, answer)
    try:
        locftd(home, "start")  # with its HTTP API
        url = (read_daemon_info(home) or _fail("no daemon.json")).api_url
        wait_for("a round to be running", lambda: read(home, lambda s: s.running_rounds()), timeout=60)

        go = tmp_path / "go"
        work = tmp_path / "work"
        work.mkdir()
        procs = []
        for k in range(WRITERS):
            own = [fact(k, i) for i in range(PER_WRITER)]
            other = (k + WRITERS // 2) % WRITERS  # a writer of the other door
            cross = [fact(other, i) for i in range(PER_WRITER - CROSS, PER_WRITER)]
            mine = own[:500] + cross + own[500:]  # the raced duplicates in the middle
            if k < WRITERS // 2:
                cmd = [sys.executable, "-c", CLI_WRITER, str(k), str(go), str(work), json.dumps(mine)]
            else:
                cmd = [sys.executable, "-c", HTTP_WRITER, str(k), str(go), str(url), json.dumps(mine)]
            procs.append(subprocess.Popen(cmd, env=env(home), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          text=True))
        wait_for("the writers to be ready", lambda: all((tmp_path / f"ready-{k}").exists() for k in range(WRITERS))
                 or any(p.poll() is not None for p in procs), timeout=60)
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        t0 = time.time()
        go.touch()
        results = []
        for p in procs:
            stdout, stderr = p.communicate(timeout=600)
            assert p.returncode == 0, stderr[-2000:]
            results.append(json.loads(stdout.strip().splitlines()[-1]))
        t1 = time.time()
        rounds_during = read(home, lambda s: [r for r in s.list_rounds(limit=None)
                                               if r.started_at.timestamp() < t1
                                               and (r.finished_at is None or r.finished_at.timestamp() > t0)])
    finally:
        locftd(home, "stop", check=False)
        for p in locals().get("procs", []):
            if p.poll() is None:
                p.kill()
                p.wait()

    failures = [f for r in results for f in r["failures"]]
    assert not failures, failures[:5]
    sqlite_check(home.db_path)
    with Store.open(home, sweep_orphans=False) as store:
        active = [e.fact for e in store.active_facts()]
        added_events = len(store.list_events(kind="fact.added", limit=None))
        revisions = store.count_facts()
    prompts = Counter(f.prompt for f in active)
    expected = {fact(k, i)["prompt"]: fact(k, i)["answer"] for k in range(WRITERS) for i in range(PER_WRITER)}
    assert [p for p, n in prompts.items() if n > 1] == []  # none twice
    assert {f.prompt: f.answer for f in active if f.prompt in expected} == expected  # all 8,000, exact
    assert len(active) == WRITERS * PER_WRITER + len(FACTS)
    assert added_events == len(active) and revisions.retracted == 0
    all_logs = "".join(p.read_text(errors="replace") for p in home.logs_dir.glob("*.log*"))
    assert "database is locked" not in all_logs and "Traceback" not in all_logs, logs(home)
    assert rounds_during, "no round ran during the writes"  # one was running when they began

    http_statuses = Counter()
    for r in results[WRITERS // 2:]:
        http_statuses.update(r["statuses"])
    figures.update({
        "writer processes": WRITERS, "facts per writer": PER_WRITER, "cross-sent duplicates per writer": CROSS,
        "facts written concurrently": WRITERS * PER_WRITER, "facts present": len(active) - len(FACTS),
        "duplicates": 0, "lost": 0,
        "CLI invocations": sum(r.get("invocations", 0) for r in results[:WRITERS // 2]),
        "HTTP requests": sum(r.get("requests", 0) for r in results[WRITERS // 2:]),
        "HTTP statuses": dict(http_statuses), "user-visible errors": 0,
        "rounds that ran during the writes": len(rounds_during),
        "outcomes of those rounds": dict(Counter(r.outcome for r in rounds_during)),
        "wall time of the writes (s)": round(t1 - t0, 1),
    })


def _fail(msg: str) -> Any:
    raise AssertionError(msg)
