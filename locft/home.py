"""$LOCFT_HOME: where everything locft keeps lives, and the daemon's run file.

Layout (all paths below the home; nothing is relative to the working directory):

    locft.toml          configuration (written by `locft init` from config.CONFIG_TEMPLATE)
    locft.db            the knowledge store (SQLite, unless store.database_url says otherwise)
    snapshots/<name>/   one directory per version: tensors.safetensors + manifest.json
    logs/               daemon and round logs
    cache/              derived, re-creatable data (cache/models/: converted base models)
    run/daemon.json     written by a running daemon: pid, started_at, next_round_at, api_url
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from locft.atomic import atomic_write_text
from locft.config import CONFIG_FILE, CONFIG_TEMPLATE, check_home_path, default_home

log = logging.getLogger(__name__)

DB_FILE = "locft.db"
DAEMON_FILE = "daemon.json"


@dataclass(frozen=True)
class Home:
    """The paths of one locft home. Build with `Home.resolve()` (honours $LOCFT_HOME)."""

    root: Path

    @classmethod
    def resolve(cls, root: str | Path | None = None) -> Home:
        """`root` when given, else $LOCFT_HOME, else the user data dir; always absolute."""
        if root is None:
            return cls(default_home())
        return cls(check_home_path(Path(root).expanduser().resolve(), "--home"))

    @property
    def db_path(self) -> Path:
        return self.root / DB_FILE

    @property
    def config_path(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def snapshots_dir(self) -> Path:
        return self.root / "snapshots"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

    @property
    def models_cache_dir(self) -> Path:
        return self.cache_dir / "models"

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def daemon_file(self) -> Path:
        return self.run_dir / DAEMON_FILE

    def default_database_url(self) -> str:
        return f"sqlite:///{self.db_path}"

    def create(self) -> list[Path]:
        """Create the directory tree and a commented locft.toml; returns what was newly created.

        Idempotent: an existing locft.toml is never overwritten (it may hold the user's edits).
        """
        created: list[Path] = []
        for path in (self.root, self.snapshots_dir, self.logs_dir, self.cache_dir, self.run_dir):
            if not path.is_dir():
                path.mkdir(parents=True, exist_ok=True)
                created.append(path)
        if not self.config_path.exists():
            self.config_path.write_text(CONFIG_TEMPLATE, encoding="utf-8")
            created.append(self.config_path)
        return created

    def relative(self, path: Path) -> str:
        """`path` as stored in the database: relative to the home, POSIX separators."""
        path = Path(path)
        if not path.is_absolute():
            path = self.root / path
        return path.resolve().relative_to(self.root).as_posix()

    def absolute(self, stored: str) -> Path:
        """The inverse of `relative`."""
        return self.root / stored


@dataclass(frozen=True)
class DaemonInfo:
    """The contents of run/daemon.json, as written by the daemon."""

    pid: int
    started_at: str
    next_round_at: str | None = None
    api_url: str | None = None
    serving_error: str | None = None  # why the promoted version is not what the API serves

    def to_dict(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "started_at": self.started_at,
            "next_round_at": self.next_round_at,
            "api_url": self.api_url,
            "serving_error": self.serving_error,
        }


def pid_alive(pid: int) -> bool:
    """True when a process with this pid exists (signal 0 checks without touching it)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def write_daemon_info(home: Home, info: DaemonInfo) -> None:
    """Atomically (temp file + rename) write run/daemon.json, so readers never see half a file."""
    atomic_write_text(home.daemon_file, json.dumps(info.to_dict()), durable=False)  # meaningless after a reboot


def read_daemon_info(home: Home) -> DaemonInfo | None:
    """The running daemon's info, or None when there is no file, it is unreadable, or its pid is dead."""
    try:
        data = json.loads(home.daemon_file.read_text(encoding="utf-8"))
        info = DaemonInfo(
            pid=int(data["pid"]),
            started_at=str(data["started_at"]),
            next_round_at=data.get("next_round_at"),
            api_url=data.get("api_url"),
            serving_error=data.get("serving_error"),
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring unreadable %s: %s", home.daemon_file, exc)
        return None
    return info if pid_alive(info.pid) else None
