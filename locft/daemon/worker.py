"""One round in a child process of the daemon: `python -m locft.daemon.worker --home H --trigger T`.

Why a child: training and lm-eval allocate gigabytes; an OOM kill or a crash in native code
must cost one round, not the daemon. The worker takes the round lock, runs `locft.rounds.run.run_round`
and exits; everything it decides is in the store.

Stopping: SIGTERM/SIGINT set a flag that training polls at every step and the round checks
between phases; the round is then recorded as interrupted. A phase that cannot poll (an lm-eval
task, a batch of generations) could take minutes, so WORKER_GRACE_S after the first signal
the worker exits hard; the daemon (or the next daemon start) then records the round as
interrupted. The worker also gets SIGTERM when the daemon dies (Linux PR_SET_PDEATHSIG, plus
a parent-pid check), so it never outlives a daemon killed with -9.

Exit codes: 0 the round ended (any outcome, see the store), 1 the round failed (recorded),
2 bad arguments or configuration, 3 another round holds the round lock (nothing done),
4 stopped hard after the grace period.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence

from locft.policies.schedule import TRIGGERS
from locft.rounds.live import RoundProgressFile

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_BUSY = 3
EXIT_HARD_STOP = 4
WORKER_GRACE_S = 8.0  # cooperative stop budget before a hard exit (the daemon waits a bit longer)

log = logging.getLogger("locft.daemon.worker")


def _die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask Linux to signal us when the parent dies (no-op elsewhere)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):  # not Linux
        pass


class _Stopper:
    """First signal: ask the round to stop; after WORKER_GRACE_S, or a second signal: exit hard."""

    def __init__(self, parent_pid: int | None, grace_s: float) -> None:
        self.event = threading.Event()
        self.parent_pid = parent_pid
        self.grace_s = grace_s
        self._timer: threading.Timer | None = None

    def __call__(self) -> bool:
        if self.parent_pid is not None and os.getppid() != self.parent_pid:
            self.trigger("the daemon is gone")
        return self.event.is_set()

    def trigger(self, why: str) -> None:
        if self.event.is_set():
            return
        log.warning("stopping the round: %s", why)
        self.event.set()
        self._timer = threading.Timer(self.grace_s, self._hard_exit)
        self._timer.daemon = True
        self._timer.start()

    def _hard_exit(self) -> None:
        log.error("the round did not stop within %.0f s: exiting now (it is recorded as interrupted by "
                  "the daemon or its next start)", self.grace_s)
        logging.shutdown()
        os._exit(EXIT_HARD_STOP)

    def on_signal(self, signum: int, _frame: object) -> None:
        if self.event.is_set():
            self._hard_exit()
        self.trigger(f"received {signal.Signals(signum).name}")


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m locft.daemon.worker", description=__doc__.split("\n")[0])
    parser.add_argument("--home", required=True)
    parser.add_argument("--trigger", required=True, choices=TRIGGERS)
    parser.add_argument("--request-ids", default="", help="comma-separated round request ids this round answers")
    parser.add_argument("--actor", default="locftd")
    parser.add_argument("--parent-pid", type=int, default=None)
    parser.add_argument("--log-stderr", action="store_true")
    parser.add_argument("--grace", type=float, default=WORKER_GRACE_S)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    _die_with_parent()
    stopper = _Stopper(args.parent_pid, args.grace)
    signal.signal(signal.SIGTERM, stopper.on_signal)
    signal.signal(signal.SIGINT, stopper.on_signal)
    if args.parent_pid is not None and os.getppid() != args.parent_pid:
        return EXIT_OK  # the daemon died before we could even start: do nothing

    from locft.config import load_config
    from locft.daemon.logs import WORKER_LOG, setup_logging
    from locft.errors import LocftError
    from locft.home import Home
    from locft.locks import LockHeld

    home = Home.resolve(args.home)
    setup_logging(home.logs_dir, WORKER_LOG, to_stderr=args.log_stderr)
    try:
        request_ids = [int(x) for x in args.request_ids.split(",") if x.strip()]
        config = load_config(home.root)
    except (ValueError, LocftError) as exc:
        log.error("worker: %s", exc)
        return EXIT_USAGE

    from locft.rounds.outcome import describe
    from locft.rounds.recovery import hold_round_lock
    from locft.rounds.run import run_round
    from locft.store import Store

    try:
        store = Store.open(home, config.store, sweep_orphans=False)
    except LocftError as exc:
        log.error("worker: %s", exc)
        return EXIT_USAGE
    progress = RoundProgressFile(home.run_dir)
    try:
        with hold_round_lock(home, store):
            log.info("worker %d: %s round starting", os.getpid(), args.trigger)
            result = run_round(home, config, store, trigger=args.trigger, actor=args.actor,
                               request_ids=request_ids, should_stop=stopper, progress=progress)
            progress.clear()
            log.info("%s", describe(result))
            return EXIT_OK
    except LockHeld as exc:
        log.warning("worker: %s; not starting a round", exc)
        return EXIT_BUSY
    except Exception:  # noqa: BLE001 - recorded as failed by run_round; the daemon carries on
        log.exception("the round failed")
        return EXIT_FAILED
    finally:
        if progress.phase is not None:
            progress.clear()
        store.close()


if __name__ == "__main__":
    sys.exit(main())
