"""`locft round run|request|list|show`: rounds by hand, and what rounds did. Torch only in `run`."""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
from typing import TYPE_CHECKING, Any

import click

from locft.cli.common import author_option, default_author, echo_json, json_option, open_store, resolve_home, table

if TYPE_CHECKING:
    from locft.rounds.phases import RoundProgress


def when(value: Any) -> str:
    """A stored (aware) timestamp in local time, to the second."""
    return "-" if value is None else value.astimezone().strftime("%Y-%m-%d %H:%M:%S")


@click.group("round")
def round_group() -> None:
    """Train, gate and promote a version: now, or by asking the daemon.

    \b
    A round trains from the base model over ALL active facts, writes a candidate version,
    measures its gates (reliability, generalization, locality, retention, lm-eval capability)
    and promotes it when every gate passes (gates.promotion = "auto"), leaves it for
    `locft promote` ("manual"), or rejects it. Rounds with no change since the promoted
    version are skipped.

    \b
      locft round run          one round in this terminal, with progress (no daemon needed)
      locft round request      ask the running daemon for a round (picked up within seconds)
      locft round list         recent rounds and their outcomes
      locft round show ID      one round: per-phase timings, loss per epoch, its version's gates
    """


class _RoundBars:
    """Renders a round's RoundProgress: one tqdm bar per phase, on stderr; phases without a total
    just print a line."""

    def __init__(self) -> None:
        self.phase: str | None = None
        self.bar: Any = None

    def __call__(self, p: RoundProgress) -> None:
        from tqdm import tqdm

        if p.phase != self.phase or (self.bar is not None and p.total is not None and self.bar.total != p.total):
            self.close()
            self.phase = p.phase
            if p.total:
                self.bar = tqdm(total=p.total, desc=f"{p.phase:<15}", unit="", leave=True, file=sys.stderr,
                                dynamic_ncols=True)
            else:
                click.echo(f"{p.phase:<15} {p.detail}", err=True)
        if self.bar is not None and p.done is not None:
            self.bar.n = min(p.done, self.bar.total)
            post = {"loss": f"{p.loss:.4f}"} if p.loss is not None else {}
            if p.detail:
                post["at"] = p.detail
            self.bar.set_postfix(post, refresh=False)
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


@round_group.command("run")
@click.option("--force", is_flag=True, help="Run even when the facts did not change since the promoted version.")
@author_option
@json_option
def run_cmd(force: bool, author: str | None, as_json: bool) -> None:
    """Run one round now, in the foreground, with a progress bar.

    Refused while another round runs (the daemon's, or another `locft round run`).
    Ctrl-C stops it safely: the round is recorded as interrupted, nothing is promoted.
    """
    from locft.config import load_config
    from locft.errors import BusyError, LocftError
    from locft.home import Home
    from locft.locks import LockHeld
    from locft.rounds.recovery import hold_round_lock
    from locft.rounds.run import run_round

    home = Home.resolve()
    config = load_config(home.root)
    stop = {"asked": False}

    def on_signal(signum: int, _frame: object) -> None:
        if stop["asked"]:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now (still recorded as interrupted)
        stop["asked"] = True
        click.echo("\nstopping after the current step (Ctrl-C again to stop at once)...", err=True)

    previous = signal.signal(signal.SIGINT, on_signal)
    previous_term = signal.signal(signal.SIGTERM, on_signal)
    bars = _RoundBars()
    try:
        with open_store() as store, contextlib.ExitStack() as stack:
            try:
                stack.enter_context(hold_round_lock(home, store))
            except LockHeld as exc:
                raise BusyError(
                    f"a round is already running (pid {exc.pid}): the daemon's or another `locft round run`; "
                    "wait for it (`locft round list`)"
                ) from None
            stack.callback(bars.close)
            try:
                result = run_round(home, config, store, trigger="manual", force=force, actor=default_author(author),
                                   progress=None if as_json else bars, should_stop=lambda: stop["asked"])
            except Exception as exc:  # noqa: BLE001 - a full disk, an OOM in torch...: one line, not a traceback
                if isinstance(exc, LocftError):
                    raise
                logging.getLogger(__name__).debug("the round failed", exc_info=True)
                last = store.last_round()
                where = (f"round {last.id} is recorded as failed; `locft round show {last.id}`" if last
                         else "the round failed")
                raise LocftError(f"{type(exc).__name__}: {exc} ({where}; -vv shows the traceback)") from None
            stack.close()
            if as_json:
                echo_json(result.to_dict())
            else:
                _print_result(result)
            if result.outcome == "interrupted":
                sys.exit(130)
    finally:
        signal.signal(signal.SIGINT, previous)
        signal.signal(signal.SIGTERM, previous_term)


def _print_result(result: Any) -> None:
    click.echo(f"round {result.round_id}: {result.outcome.upper()}"
               + (f" - version {result.version_id}" if result.version_id is not None else ""))
    click.echo(f"  {result.reason}")
    if result.verdict is not None:
        click.echo("  gates:")
        for c in result.verdict.checks:
            mark = "ok  " if c.passed else "FAIL"
            mark = mark if c.gated else "info"
            click.echo(f"    {mark} {c.detail}")
    if result.loss_per_epoch:
        losses = result.loss_per_epoch
        click.echo(f"  training: {len(losses)} epoch(s), loss {losses[0]:.4f} -> {losses[-1]:.4f}")
    _print_timings(result.timings)
    click.echo(f"  promoted version now: {result.promoted_version_id}")


def _print_timings(timings: dict[str, Any] | None, indent: str = "  ") -> None:
    if not timings:
        return
    total = float(timings.get("total") or 0.0)
    parts = [(k, float(v)) for k, v in timings.items() if k != "total" and isinstance(v, (int, float))]
    shown = [f"{k} {v:.1f} s ({100 * v / total:.0f}%)" if total > 0 else f"{k} {v:.1f} s"
             for k, v in parts if v >= 0.05]
    click.echo(f"{indent}time: {total:.1f} s" + (" = " + ", ".join(shown) if shown else ""))


@round_group.command("request")
@click.option("--reason", default=None, help="Why (kept in the audit log).")
@author_option
@json_option
def request_cmd(reason: str | None, author: str | None, as_json: bool) -> None:
    """Ask the daemon for a round; it claims the request within schedule.poll_seconds."""
    from locft.config import load_config
    from locft.home import read_daemon_info

    with open_store() as store:
        req = store.request_round(actor=default_author(author), reason=reason)
        home = store.home
    info = read_daemon_info(home)
    if as_json:
        echo_json(req.to_dict() | {"daemon_running": info is not None})
        return
    click.echo(f"round requested (request {req.id})")
    if info is None:
        click.echo("note: no daemon is running for this home: `locftd start` starts one "
                   "(or `locft round run` runs a round right here)", err=True)
    else:
        poll = load_config(home.root).schedule.poll_seconds
        click.echo(f"locftd (pid {info.pid}) picks it up within {poll:g} s; `locft round list` shows the outcome")


@round_group.command("list")
@click.option("--limit", default=20, show_default=True, help="How many of the newest rounds.")
@json_option
def list_cmd(limit: int, as_json: bool) -> None:
    """Recent rounds, newest first."""
    with open_store(sweep_orphans=False) as store:
        rounds = store.list_rounds(limit=limit)
    if as_json:
        echo_json([r.to_dict() for r in rounds])
        return
    if not rounds:
        click.echo("no rounds yet: `locft round run`, or `locftd start` and `locft round request`")
        return
    rows = [
        (r.id, r.trigger, r.outcome, "-" if r.version_id is None else r.version_id, when(r.started_at),
         "-" if r.seconds is None else f"{r.seconds:.1f}", r.error or "")
        for r in rounds
    ]
    table(("ID", "TRIGGER", "OUTCOME", "VERSION", "STARTED", "SECONDS", "NOTE"), rows, flex=6)


@round_group.command("show")
@click.argument("round_id", type=int)
@json_option
def show_cmd(round_id: int, as_json: bool) -> None:
    """One round: outcome, per-phase timings and shares, loss per epoch, its version's gates."""
    with open_store(sweep_orphans=False) as store:
        r = store.get_round(round_id)
        version = store.get_version(r.version_id) if r.version_id is not None else None
    if as_json:
        echo_json(r.to_dict() | {"version": version.to_dict() if version else None})
        return
    click.echo(f"round {r.id} ({r.trigger}, by {r.actor or '-'}): {r.outcome}")
    click.echo(f"  started {when(r.started_at)}, finished {when(r.finished_at)}"
               + (f" ({r.seconds:.1f} s)" if r.seconds is not None else ""))
    if r.error:
        click.echo(f"  note: {r.error}")
    if r.outcome == "running":
        from locft.rounds.live import describe_progress, read_progress

        progress = read_progress(resolve_home().run_dir)
        click.echo(f"  now: {describe_progress(progress)}" if progress else
                   "  now: no progress reported (a round run by `locft round run` reports on its own terminal)")
    _print_timings(r.timings)
    if r.loss_history:
        click.echo("  loss per epoch: " + ", ".join(f"{x:.4f}" for x in r.loss_history))
    if version is not None:
        click.echo(f"  version {version.id}: {version.state}, {version.fact_count} fact(s)")
        if version.gate is not None:
            for c in version.gate.report.get("verdict", {}).get("checks", []):
                mark = "info" if not c.get("gated", True) else ("ok  " if c.get("passed") else "FAIL")
                click.echo(f"    {mark} {c.get('detail')}")
