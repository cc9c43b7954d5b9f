"""`locftd`: start, stop and inspect the daemon of a $LOCFT_HOME. No torch at import time."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import click

from locft.cli.main import ErrorReportingGroup
from locft.errors import LocftError

HOME_HELP = "The locft home (default: $LOCFT_HOME, else the user data dir)."


def _home(path: str | None) -> Any:
    from locft.home import Home

    return Home.resolve(path)


def _require_store(home: Any) -> None:
    from locft.errors import DaemonError

    if not home.db_path.exists() and not home.config_path.exists():
        raise DaemonError(f"no locft home in {home.root}; run `locft init` first (or pass --home / set LOCFT_HOME)")


@click.group(cls=ErrorReportingGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="locft")
def cli() -> None:
    """locftd: turns the facts in a locft store into gated model versions, on a schedule.

    \b
    One daemon per home. It runs a round (train over ALL active facts, gate, promote or reject)
      - at schedule.cron (default nightly 02:00 local time),
      - when someone runs `locft round request` (picked up within schedule.poll_seconds),
      - when schedule.min_pending_facts facts wait (off unless set).
    Each round runs in a child process; a crash there is recorded and the daemon carries on.
    Logs: $LOCFT_HOME/logs/locftd.log (daemon) and rounds.log (rounds), rotated.

    \b
      locftd start                 start in the background
      locftd start --foreground    run in this terminal (logs to stderr too; Ctrl-C stops)
      locftd status                is it running, what is it doing
      locftd stop                  stop it (a round in progress is abandoned safely)
    """


@cli.command()
@click.option("--home", "home_path", default=None, metavar="DIR", help=HOME_HELP)
@click.option("--foreground", is_flag=True, help="Run in this process instead of the background.")
@click.option("--no-api", is_flag=True, help="Do not serve the HTTP API ([serve] host:port); rounds only.")
def start(home_path: str | None, foreground: bool, no_api: bool) -> None:
    """Start the daemon (refused, with its pid, if one already runs for this home).

    SIGTERM or SIGINT stop it within 15 s: a round in progress is stopped, recorded as
    interrupted (its candidate can never be promoted without --force), its temporary files
    removed, and the lock released.
    """
    home = _home(home_path)
    _require_store(home)
    if foreground:
        sys.exit(_run(home, foreground=True, api=not no_api))
    from locft.daemon.control import start_detached

    pid = start_detached(home, api=not no_api)
    click.echo(f"locftd started (pid {pid}) for {home.root}")
    if not no_api:
        from locft.home import read_daemon_info

        info = read_daemon_info(home)
        click.echo(f"HTTP API: {info.api_url if info else '?'} (OpenAI-compatible; see `locft serve --help`)")
    click.echo(f"logs: {home.logs_dir / 'locftd.log'}; `locftd status` shows what it does")


@cli.command(hidden=True)
@click.option("--home", "home_path", default=None, metavar="DIR", help=HOME_HELP)
@click.option("--no-api", is_flag=True)
def run(home_path: str | None, no_api: bool) -> None:
    """The background daemon itself (what `locftd start` launches)."""
    sys.exit(_run(_home(home_path), foreground=False, api=not no_api))


def _run(home: Any, foreground: bool, api: bool) -> int:
    from locft.daemon.logs import DAEMON_LOG, setup_logging
    from locft.daemon.service import Daemon

    setup_logging(home.logs_dir, DAEMON_LOG, to_stderr=foreground)
    try:
        return Daemon(home, foreground=foreground, api=api).run()
    except LocftError as exc:
        logging.getLogger("locft.daemon").error("%s", exc)
        raise


@cli.command()
@click.option("--home", "home_path", default=None, metavar="DIR", help=HOME_HELP)
@click.option("--timeout", default=None, type=float, metavar="S", help="Give up waiting after S seconds (default 20).")
def stop(home_path: str | None, timeout: float | None) -> None:
    """Stop the daemon and wait until it has exited."""
    from locft.daemon.control import stop_daemon
    from locft.daemon.service import STOP_BOUND_S

    home = _home(home_path)
    pid = stop_daemon(home, timeout if timeout is not None else STOP_BOUND_S + 5)
    if pid is None:
        click.echo(f"locftd is not running for {home.root}")
    else:
        click.echo(f"locftd (pid {pid}) stopped")


@cli.command()
@click.option("--home", "home_path", default=None, metavar="DIR", help=HOME_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status(home_path: str | None, as_json: bool) -> None:
    """Is the daemon running; the round in progress, the last round, the promoted version.

    Exit code 0 when running, 3 when not (like `systemctl status`).
    """
    from locft.config import load_config
    from locft.home import read_daemon_info
    from locft.locks import daemon_lock
    from locft.rounds.live import describe_progress, read_progress
    from locft.store import Store

    home = _home(home_path)
    pid = daemon_lock(home.run_dir).holder()
    info = read_daemon_info(home)
    data: dict[str, Any] = {
        "home": str(home.root), "running": pid is not None, "pid": pid or None,
        "started_at": info.started_at if info else None, "next_round_at": info.next_round_at if info else None,
        "api_url": info.api_url if info else None, "serving_error": info.serving_error if info else None,
    }
    if home.db_path.exists() or load_config(home.root).store.database_url:
        with Store.open(home, load_config(home.root).store, sweep_orphans=False) as store:
            running = store.running_rounds()
            last = store.last_round()
            data |= {
                "promoted_version": store.promoted_version().id,
                "running_round": running[0].to_dict() if running else None,
                "round_progress": read_progress(home.run_dir) if running else None,
                "last_round": last.to_dict() if last else None,
                "open_round_requests": len(store.open_round_requests()),
                "pending_facts": store.count_facts().pending,
            }
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        if data["running"]:
            click.echo(f"locftd: running (pid {data['pid']}) since {data['started_at'] or '?'}")
            click.echo(f"HTTP API: {data['api_url'] or 'off (--no-api)'}")
            if data["serving_error"]:
                click.echo(f"PROBLEM: {data['serving_error']}")
            click.echo(f"next scheduled round: {data['next_round_at'] or 'none (schedule.cron is off)'}")
        else:
            click.echo(f"locftd: not running for {home.root}")
        if "promoted_version" in data:
            click.echo(f"promoted version: {data['promoted_version']}")
            r = data["running_round"]
            if r:
                click.echo(f"round in progress: {r['id']} ({r['trigger']}, started {r['started_at']})")
                if data["round_progress"]:
                    click.echo(f"  phase: {describe_progress(data['round_progress'])}")
            last = data["last_round"]
            if last and (not r or last["id"] != r["id"]):
                version = f", version {last['version_id']}" if last["version_id"] is not None else ""
                click.echo(f"last round: {last['id']} ({last['trigger']}): {last['outcome']}{version}"
                           + (f" - {last['error']}" if last["error"] else ""))
            click.echo(f"pending facts: {data['pending_facts']}; open round requests: {data['open_round_requests']}")
    sys.exit(0 if data["running"] else 3)


def main() -> None:
    cli(prog_name="locftd")


if __name__ == "__main__":
    main()
