"""Per-home process locks: flock'ed files that hold the owner's pid.

Why flock: the kernel releases it when the process dies, however it dies (kill -9, OOM), so a
lock is never stale in the sense that matters; a file left behind by a dead process is simply
locked again ("stale lock recovered"). The pid written inside is only for messages and for
`locftd stop`; the lock itself, not the pid, says whether someone holds it (pids are reused).

Two locks live in $LOCFT_HOME/run/:
  locftd.lock  one daemon per home
  round.lock   one round per home (held by the round's process: the daemon's worker, or a
               foreground `locft round run`), so that rounds never overlap and crash recovery
               only ever touches rounds whose process is gone.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
from pathlib import Path
from types import TracebackType

from locft.errors import BusyError

log = logging.getLogger(__name__)

DAEMON_LOCK = "locftd.lock"
ROUND_LOCK = "round.lock"


class LockHeld(BusyError):
    """Another process holds the lock; `pid` names it when the file says so."""

    def __init__(self, message: str, pid: int | None) -> None:
        super().__init__(message)
        self.pid = pid


def _read_pid(fd: int) -> int | None:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 64).decode("ascii", "replace").strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None


class PidLock:
    """An exclusive, non-blocking flock on `path` that records the holder's pid."""

    def __init__(self, path: Path, what: str = "lock") -> None:
        self.path = Path(path)
        self.what = what
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> PidLock:
        """Take the lock or raise LockHeld naming the holder's pid. The fd is close-on-exec, so a
        child process never keeps the lock alive after this process died."""
        if self._fd is not None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            pid = _read_pid(fd)
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                who = f"pid {pid}" if pid else "another process"
                raise LockHeld(f"the {self.what} is held by {who} ({self.path})", pid) from None
            raise
        previous = _read_pid(fd)
        if previous is not None and previous != os.getpid():
            log.info("recovered a stale %s left by pid %d (that process is gone)", self.what, previous)
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        """Unlock. The file stays (removing it would race with a process opening it)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)  # no pid: nobody holds it (a reader must still check the flock)
        except OSError:
            pass
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def holder(self) -> int | None:
        """The pid holding the lock (0 when held but the pid is unreadable), None when free."""
        if self._fd is not None:
            return os.getpid()
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                return _read_pid(fd) or 0
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    def __enter__(self) -> PidLock:
        return self.acquire()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def daemon_lock(run_dir: Path) -> PidLock:
    return PidLock(Path(run_dir) / DAEMON_LOCK, "daemon lock")


def round_lock(run_dir: Path) -> PidLock:
    return PidLock(Path(run_dir) / ROUND_LOCK, "round lock")
