"""Starting and stopping a home's daemon from another process (`locftd start`, `locftd stop`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from locft.daemon.service import STOP_BOUND_S, describe_exit
from locft.errors import DaemonError
from locft.home import Home
from locft.locks import daemon_lock


def start_detached(home: Home, timeout_s: float = 300.0, api: bool = True) -> int:
    """Start the daemon in the background (new session, output to logs/locftd.out); returns its
    pid once it has taken the lock and written run/daemon.json."""
    from locft.daemon.logs import DETACHED_OUTPUT
    from locft.home import read_daemon_info

    holder = daemon_lock(home.run_dir).holder()
    if holder is not None:
        raise DaemonError(f"locftd is already running for {home.root} (pid {holder}); `locftd stop` stops it")
    home.logs_dir.mkdir(parents=True, exist_ok=True)
    out_path = home.logs_dir / DETACHED_OUTPUT
    stale = home.daemon_file
    stale.unlink(missing_ok=True)
    with open(out_path, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "locft.daemon.cli", "run", "--home", str(home.root)] + ([] if api else ["--no-api"]),
            stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True, close_fds=True,
            env=dict(os.environ, LOCFT_HOME=str(home.root)),
        )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        rc = proc.poll()
        if rc is not None:
            tail = _tail(out_path, 15)
            raise DaemonError(f"locftd exited at once ({describe_exit(rc)}); {out_path}:\n{tail}")
        info = read_daemon_info(home)
        if info is not None and info.pid == proc.pid:
            return proc.pid
        time.sleep(0.1)
    raise DaemonError(f"locftd (pid {proc.pid}) did not report ready within {timeout_s:.0f} s; see {out_path}")


def stop_daemon(home: Home, timeout_s: float = STOP_BOUND_S + 5) -> int | None:
    """SIGTERM the home's daemon and wait until it has released its lock; returns its pid, or
    None when none was running."""
    lock = daemon_lock(home.run_dir)
    pid = lock.holder()
    if pid is None:
        return None
    if not pid:
        raise DaemonError(f"the daemon lock {lock.path} is held but names no pid; is locftd starting?")
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return pid
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if lock.holder() is None:
            return pid
        time.sleep(0.1)
    raise DaemonError(f"locftd (pid {pid}) did not stop within {timeout_s:.0f} s; `kill -9 {pid}` is safe "
                      "(the next start recovers)")


def _tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no output)"
