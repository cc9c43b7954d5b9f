"""Logging for the daemon and its workers: rotating files in $LOCFT_HOME/logs, stderr in the
foreground. One file per process kind, because two processes rotating one file lose lines."""

from __future__ import annotations

import logging
import logging.handlers
import sys
from pathlib import Path

DAEMON_LOG = "locftd.log"
WORKER_LOG = "rounds.log"
DETACHED_OUTPUT = "locftd.out"  # stdout/stderr of a background daemon: tracebacks logging missed
MAX_BYTES = 5 * 2**20
BACKUPS = 5
FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"


def setup_logging(logs_dir: Path, filename: str, *, to_stderr: bool, level: int = logging.INFO) -> Path:
    """Route the root logger to a rotating file (and stderr); returns the file's path."""
    logs_dir.mkdir(parents=True, exist_ok=True)
    path = logs_dir / filename
    root = logging.getLogger()
    for handler in list(root.handlers):  # a CLI's basicConfig must not double every line
        root.removeHandler(handler)
    formatter = logging.Formatter(FORMAT)
    file_handler = logging.handlers.RotatingFileHandler(path, maxBytes=MAX_BYTES, backupCount=BACKUPS,
                                                        encoding="utf-8")
    file_handler.setFormatter(formatter)
    root.addHandler(file_handler)
    if to_stderr:
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(formatter)
        root.addHandler(stream)
    root.setLevel(level)
    # Chatty libraries: their INFO lines drown the daemon's own.
    for name in ("apscheduler.executors", "apscheduler.scheduler", "urllib3", "filelock", "httpx"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.captureWarnings(True)
    return path
