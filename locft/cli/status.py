"""`locft status`: home, model, promoted version, facts, last round, daemon."""

from __future__ import annotations

from typing import Any

import click

from locft.cli.common import echo_json, fmt_time, json_option, open_store, resolve_home

EMBEDDED_MODEL = "embedded SmolLM2-135M-Instruct (GGUF)"


@click.command("status", short_help="Show the promoted version, pending facts, last round, daemon.")
@json_option
def status(as_json: bool) -> None:
    """Where things stand: the promoted version, facts waiting, the last round, the daemon.

    "pending" counts the facts the promoted version does not know yet: added or revised since
    it was trained, plus retractions it still knows; the next round picks them up.

    \b
    Examples:
      locft status
      locft status --json | jq .facts.pending
    """
    from locft.config import load_config
    from locft.home import read_daemon_info
    from locft.rounds.live import describe_progress, read_progress

    home = resolve_home()
    config = load_config(home.root)
    from locft.errors import SnapshotError

    with open_store() as store:
        summary = store.summary()
        problems: list[str] = []
        try:  # the promoted snapshot: there and intact (a sha256 of the tuned tensors only)
            store.verify_version_snapshot(summary.promoted.id)
        except SnapshotError as exc:
            problems.append(f"{exc}; `locft rollback` serves the previous version")
    from locft.checks import check_config

    # what would make the next round or the daemon fail: the same checks as `locft config check`
    problems += [str(p) for p in check_config(home, config)]
    daemon = read_daemon_info(home)
    if daemon is not None and daemon.serving_error:
        problems.append(f"the daemon's API: {daemon.serving_error}")
    model = config.model.path or EMBEDDED_MODEL
    running = summary.last_round is not None and summary.last_round.outcome == "running"
    progress = read_progress(home.run_dir) if running else None  # what the daemon's worker is doing
    if as_json:
        data: dict[str, Any] = {"home": str(home.root), "model": model, **summary.to_dict()}
        data["daemon"] = daemon.to_dict() if daemon else None
        data["round_progress"] = progress
        data["problems"] = problems
        echo_json(data)
        return
    p = summary.promoted
    f = summary.facts
    rows: list[tuple[str, str]] = [
        ("home", str(home.root)),
        ("database", summary.database),
        ("model", model),
        ("promoted", f"version {p.id}" + (" (the base model)" if p.is_base
                                          else f", {p.fact_count} facts, built {fmt_time(p.created_at)}")),
        ("facts", f"{f.active} active, {f.pending} pending since version {p.id}, {f.retracted} retracted"),
        ("versions", ", ".join(f"{n} {state}" for state, n in sorted(summary.versions.items()))),
    ]
    r = summary.last_round
    if r is None:
        rows.append(("last round", "none yet"))
    else:
        took = f" in {r.seconds:.1f} s" if r.seconds is not None else ""
        made = f", version {r.version_id}" if r.version_id is not None else ""
        ended = f"finished {fmt_time(r.finished_at)}{took}" if r.finished_at else f"started {fmt_time(r.started_at)}"
        rows.append(("last round",
                     f"#{r.id} ({r.trigger}) {r.outcome}{made}, {ended}" + (f": {r.error}" if r.error else "")))
        if progress is not None:
            rows.append(("  now", describe_progress(progress)))
    if summary.open_requests:
        rows.append(("requests", f"{summary.open_requests} round request(s) waiting for the daemon"))
    if daemon is None:
        rows.append(("daemon", "not running (start it with `locftd start`)"))
    else:
        rows.append(("daemon", f"running, pid {daemon.pid}, since {daemon.started_at}"))
        rows.append(("next round", daemon.next_round_at or "not scheduled"))
        if daemon.api_url:
            rows.append(("api", daemon.api_url))
    rows += [("PROBLEM", problem) for problem in problems]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        click.echo(f"{key.ljust(width)}  {value}")
