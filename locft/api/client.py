"""Finding a running API server and calling it (stdlib only: `locft ask` must start fast).

A server announces itself in the home's run directory: the daemon in run/daemon.json
(`api_url`), a foreground `locft serve` in run/api.json. Either counts only while its pid lives.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from locft.atomic import atomic_write_text
from locft.errors import DaemonError, LocftError
from locft.home import Home, pid_alive, read_daemon_info

API_FILE = "api.json"


class ApiCallError(LocftError):
    """The server answered with an error (its message is shown as is)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def api_file(home: Home) -> Path:
    return home.run_dir / API_FILE


def write_api_info(home: Home, url: str, pid: int | None = None) -> None:
    """Atomically announce a foreground server (`locft serve`)."""
    atomic_write_text(api_file(home), json.dumps({"pid": pid or os.getpid(), "api_url": url}), durable=False)


def remove_api_info(home: Home, pid: int | None = None) -> None:
    """Remove run/api.json if it is ours."""
    path = api_file(home)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if int(data.get("pid", -1)) == (pid or os.getpid()):
            path.unlink()
    except (OSError, ValueError):
        pass


def discover_api(home: Home) -> str | None:
    """The URL of a live server for this home: the daemon's first, then a `locft serve`."""
    daemon = read_daemon_info(home)
    if daemon is not None and daemon.api_url:
        return daemon.api_url
    try:
        data = json.loads(api_file(home).read_text(encoding="utf-8"))
        if pid_alive(int(data["pid"])) and isinstance(data.get("api_url"), str):
            return str(data["api_url"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def call(base_url: str, path: str, body: Any = None, *, token: str | None = None, timeout: float = 300.0) -> Any:
    """POST (with a body) or GET a JSON endpoint; server errors become ApiCallError with the
    server's message, an unreachable server a DaemonError."""
    data = None if body is None else json.dumps(body).encode("utf-8")
    req = urllib.request.Request(base_url.rstrip("/") + path, data=data, method="POST" if data is not None else "GET")
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read().decode("utf-8"))
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read().decode("utf-8"))["error"]["message"]
        except (ValueError, KeyError, TypeError, OSError):
            message = f"HTTP {exc.code}"
        raise ApiCallError(exc.code, f"the server at {base_url} refused: {message}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise DaemonError(f"cannot reach the server at {base_url}: {exc}") from None
