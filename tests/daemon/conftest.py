"""Real `locftd` processes on the tiny model: helpers to run the CLIs and wait for the store."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from locft.home import Home
from locft.store import Store

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")


@pytest.fixture(scope="session")
def daemon_model_dir(tiny_model_dir: Path) -> Path:
    return tiny_model_dir


def env(home: Home) -> dict[str, str]:
    # One torch thread per process: the daemon's worker shares 2 cores with pytest.
    return dict(os.environ, LOCFT_HOME=str(home.root), OMP_NUM_THREADS="1",
                PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))


def locft(home: Home, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The `locft` CLI in a subprocess, as a user would run it."""
    proc = subprocess.run([sys.executable, "-m", "locft.cli.main", *args], env=env(home), cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"locft {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def locftd(home: Home, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "locft.daemon.cli", *args, "--home", str(home.root)],
                          env=env(home), cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"locftd {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def foreground(home: Home) -> subprocess.Popen[str]:
    """`locftd start --foreground --no-api` as our own child (so the test can signal and wait on it)."""
    return subprocess.Popen([sys.executable, "-m", "locft.daemon.cli", "start", "--foreground", "--no-api",
                             "--home", str(home.root)], env=env(home), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 90.0, every: float = 0.25) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def store_of(home: Home) -> Store:
    return Store.open(home, sweep_orphans=False)


def read(home: Home, fn: Callable[[Store], T]) -> T:
    with store_of(home) as store:
        return fn(store)


def logs(home: Home) -> str:
    out = []
    for name in ("locftd.log", "rounds.log", "locftd.out"):
        path = home.logs_dir / name
        if path.exists():
            out.append(f"--- {name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-40:]))
    return "\n".join(out)
