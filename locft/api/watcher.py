"""Hot swap trigger: a thread that notices the store's promoted pointer moving and activates it.

Any writer may move the pointer (a round in the daemon's worker process, `locft promote` /
`locft rollback` from a shell, the API's own operator endpoints): the store is the only source
of truth, so the watcher polls it (one cheap indexed read per `interval_s`, default 1 s), and
`poke()` makes it look right away (the API calls it after its own promote / rollback).
A version that cannot be served (missing or corrupted snapshot, built on another base model)
is refused: the server keeps the version it has, and `last_error` says why (shown in status).
"""

from __future__ import annotations

import logging
import threading
import time

from locft.errors import LocftError
from locft.serving.model_server import ModelServer
from locft.store import Store

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 1.0


class PromotionWatcher:
    def __init__(self, store: Store, server: ModelServer, interval_s: float = DEFAULT_INTERVAL_S) -> None:
        self.store = store
        self.server = server
        self.interval_s = interval_s
        self.last_error: str | None = None
        self.last_check: float | None = None
        self._refused: int | None = None  # a version that failed to load: not retried until the pointer moves
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._check_lock = threading.Lock()

    def start(self) -> PromotionWatcher:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="locft-promotion-watcher", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def poke(self) -> None:
        """Check the pointer now instead of at the next poll."""
        self._wake.set()

    def check(self) -> bool:
        """One look at the pointer; True when the served version changed."""
        with self._check_lock:
            self.last_check = time.time()
            try:
                promoted = self.store.promoted_version().id
            except LocftError as exc:  # a locked or briefly unreadable database: try again later
                log.warning("could not read the promoted version: %s", exc)
                return False
            if promoted == self.server.active.id:
                self._refused = None
                self.last_error = None
                return False
            if promoted == self._refused:
                return False
            try:
                self.server.activate(promoted)
            except LocftError as exc:
                self._refused = promoted
                self.last_error = (f"version {promoted} is promoted but cannot be served ({exc}); still serving "
                                   f"version {self.server.active.id}")
                log.error("%s", self.last_error)
                return False
            self._refused = None
            self.last_error = None
            return True

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.check()
            except Exception:  # noqa: BLE001 - the watcher must outlive surprises
                log.exception("promotion watcher: unexpected error")
            self._wake.wait(self.interval_s)
            self._wake.clear()
