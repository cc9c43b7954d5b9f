"""A snapshot corrupted on disk under a running daemon: one byte flipped, truncated, deleted.

Detected by its sha256 and refused with a clear error (promote, ask, the API); the daemon keeps
serving the copy it verified when it loaded it; `locft status` shows the problem; rollback to a
healthy version works, and is served within seconds. Then the same after a restart: the daemon
still starts (serving version 0 and saying why) instead of refusing to run.

tests/engine/test_snapshot.py (verify_snapshot per damage) and tests/test_serving.py (the model
server refuses a corrupted or foreign snapshot) test the pieces; this is the whole service.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from locft.engine.model_io import LoadedModel
from locft.errors import SnapshotError, error_code
from locft.facts import EditFact
from locft.home import read_daemon_info
from locft.store import Store
from tests.daemon.conftest import free_port, locft, locftd, logs, read, wait_for
from tests.round_helpers import FACTS, make_home
from tests.serving_helpers import train_version

ONLY_V2_KNOWS = FACTS[3]  # v1 is trained on FACTS[:2], v2 on all four


def call(url: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def answer(url: str, prompt: str, model: str = "locft") -> tuple[str, str]:
    status, body = call(url, "/v1/completions", {"model": model, "prompt": prompt, "max_tokens": 8})
    assert status == 200, body
    return body["model"], body["choices"][0]["text"].strip()


def served(url: str) -> int:
    return int(call(url, "/health")[1]["version"])


def flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


def delete(path: Path) -> None:
    path.unlink()


DAMAGES: dict[str, Callable[[Path], None]] = {"one byte flipped": flip, "truncated": truncate, "deleted": delete}


def test_corrupted_snapshots_are_refused_the_daemon_keeps_serving_and_rollback_works(
        tmp_path: Path, tiny_model_dir: Path, loaded: LoadedModel, figures: dict[str, Any]) -> None:
    home = make_home(tmp_path / "home", tiny_model_dir, port=free_port(), schedule='cron = "0 0 1 1 *"\n')
    with Store.open(home) as store:
        for prompt, ans in FACTS[:2]:
            store.add_fact(EditFact(prompt, ans))
        v1 = train_version(home, store, loaded, "v1")
        for prompt, ans in FACTS[2:]:
            store.add_fact(EditFact(prompt, ans))
        v2 = train_version(home, store, loaded, "v2")
        tensors = Path(store.snapshot_dir(v2) or "") / "tensors.safetensors"
    healthy = tensors.read_bytes()
    served_during_damage = 0

    locftd(home, "start")
    try:
        url = (read_daemon_info(home) or pytest_fail("no daemon.json")).api_url or ""
        wait_for("the daemon to serve version 2", lambda: served(url) == v2, timeout=30)
        assert answer(url, ONLY_V2_KNOWS[0]) == (f"locft-v{v2}", ONLY_V2_KNOWS[1])

        for name, damage in DAMAGES.items():
            damage(tensors)
            # the daemon keeps serving the copy it verified when it loaded it
            for prompt, ans in FACTS:
                assert answer(url, prompt) == (f"locft-v{v2}", ans), name
                served_during_damage += 1
            # `locft status` shows the problem, and says what to do
            status = locft(home, "status").stdout
            problem = "corrupted" if name != "deleted" else "gone"
            assert "PROBLEM" in status and f"version {v2}" in status and problem in status, status
            assert "locft rollback" in status
            data = json.loads(locft(home, "status", "--json").stdout)
            assert any(problem in p for p in data["problems"]), data["problems"]
            if name == "one byte flipped":  # loading it anew is refused, naming the hash
                asked = locft(home, "ask", "--local", "--version", str(v2), ONLY_V2_KNOWS[0], check=False)
                assert asked.returncode == error_code(SnapshotError)[1]
                assert "corrupted: sha256" in asked.stderr and "Traceback" not in asked.stderr
            # rollback to the healthy version works, and is served at once
            assert f"version {v1}" in locft(home, "rollback", "--reason", f"v2 {name}").stdout
            wait_for(f"version {v1} to be served", lambda: served(url) == v1, timeout=10)
            assert answer(url, FACTS[0][0]) == (f"locft-v{v1}", FACTS[0][1])
            # the damaged version cannot be promoted again (CLI or API): a clear error, nothing moves
            promoted = locft(home, "promote", str(v2), check=False)
            assert promoted.returncode == error_code(SnapshotError)[1]
            assert problem in promoted.stderr and "Traceback" not in promoted.stderr
            code, body = call(url, "/locft/promote", {"version": v2, "force": True})
            assert code == 409 and body["error"]["code"] == "version_unavailable"
            assert problem in body["error"]["message"]
            assert read(home, lambda s: s.promoted_version().id) == v1 and served(url) == v1
            # repaired (restored from a backup): promotable and served again
            tensors.write_bytes(healthy)
            locft(home, "promote", str(v2))
            wait_for(f"version {v2} to be served again", lambda: served(url) == v2, timeout=10)
            assert "PROBLEM" not in locft(home, "status").stdout

        # A restart with the promoted snapshot corrupted: the daemon still starts (serving version 0),
        # and says why; rollback heals it.
        flip(tensors)
        locftd(home, "stop")
        started = locftd(home, "start", check=False)
        assert started.returncode == 0, started.stderr + logs(home)
        url = (read_daemon_info(home) or pytest_fail("no daemon.json")).api_url or ""
        assert served(url) == 0
        code, status_body = call(url, "/locft/status")
        assert code == 200 and "corrupted" in (status_body["served"]["swap_error"] or "")
        assert answer(url, FACTS[0][0], model=f"locft-v{v1}") == (f"locft-v{v1}", FACTS[0][1])  # others still load
        wait_for("the daemon to report its serving problem", lambda: (read_daemon_info(home) or None)
                 and (read_daemon_info(home).serving_error or ""), timeout=10)  # type: ignore[union-attr]
        status = locft(home, "status").stdout
        assert status.count("PROBLEM") == 2 and "daemon's API" in status, status
        assert "PROBLEM" in locftd(home, "status").stdout
        locft(home, "rollback")
        wait_for(f"version {v1} to be served after the rollback", lambda: served(url) == v1, timeout=10)
        assert answer(url, FACTS[0][0]) == (f"locft-v{v1}", FACTS[0][1])
        wait_for("status to be clean", lambda: "PROBLEM" not in locft(home, "status").stdout, timeout=10)
    finally:
        locftd(home, "stop")
    assert "Traceback" not in (home.logs_dir / "locftd.log").read_text()
    figures.update({
        "damages": list(DAMAGES) + ["one byte flipped, then a daemon restart"],
        "requests answered while the promoted snapshot was damaged": served_during_damage,
        "failed requests": 0, "refused promotions of a damaged version": 2 * len(DAMAGES),
    })


def pytest_fail(msg: str) -> Any:
    raise AssertionError(msg)
