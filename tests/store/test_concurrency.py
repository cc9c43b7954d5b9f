"""Two real processes write at once: every fact lands, nobody sees "database is locked"."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

from locft.home import Home
from locft.store import Store

WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from locft.facts import EditFact
    from locft.store import Store

    home, name, other, go = sys.argv[1], sys.argv[2], sys.argv[3], Path(sys.argv[4])
    with Store.open(home, sweep_orphans=False) as store:
        (go.parent / f"ready-{name}").touch()
        while not go.exists():  # start together
            time.sleep(0.01)
        for i in range(500):
            r = store.add_fact(EditFact(f"{name}: question {i}?", f"answer {i}"), author=name)
            assert r.status == "added", r
            if i == 0:  # on a loaded machine one writer could otherwise finish before the other starts
                (go.parent / f"wrote-{name}").touch()
                deadline = time.monotonic() + 60
                while not (go.parent / f"wrote-{other}").exists() and time.monotonic() < deadline:
                    time.sleep(0.001)
    print("ok", name)
    """
)


def test_two_processes_add_500_facts_each(home: Home, tmp_path: Path) -> None:
    Store.open(home, create=True).close()
    go = tmp_path / "go"
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(home.root), name, other, str(go)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, other in (("alpha", "beta"), ("beta", "alpha"))
    ]
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"ready-{n}").exists() for n in ("alpha", "beta")):  # both opened the store
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "a writer failed to start"
        time.sleep(0.02)
    go.touch()
    outputs = [p.communicate(timeout=120) for p in procs]
    for p, (_out, err) in zip(procs, outputs):
        assert p.returncode == 0, err
        assert "locked" not in err
    with Store.open(home) as store:
        facts = store.active_facts()
        assert len(facts) == 1000
        assert {f.fact.prompt for f in facts} == {f"{n}: question {i}?" for n in ("alpha", "beta") for i in range(500)}
        assert len({f.fact_id for f in facts}) == 1000
        assert len(store.list_events(kind="fact.added", limit=None)) == 1000
        # the two writers really interleaved (otherwise this test proves nothing about locking)
        authors = [f.fact.prompt.split(":")[0] for f in sorted(facts, key=lambda f: f.fact_id)]
        switches = sum(1 for a, b in zip(authors, authors[1:]) if a != b)
        assert switches > 1
