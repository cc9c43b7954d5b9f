"""`locft log`: the audit log (who added, revised, retracted, promoted, rolled back what, when)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import click

from locft.cli.common import clip, echo_json, fmt_time, json_option, open_store, table

DATES = ["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M"]


def _subject(fact_id: int | None, version_id: int | None, round_id: int | None) -> str:
    parts = []
    if fact_id is not None:
        parts.append(f"fact {fact_id}")
    if version_id is not None:
        parts.append(f"v{version_id}")
    if round_id is not None:
        parts.append(f"round {round_id}")
    return ", ".join(parts) or "-"


def _details(payload: dict[str, Any]) -> str:
    shown = {k: v for k, v in payload.items() if v not in (None, [], {}, "")}
    return " ".join(f"{k}={json.dumps(v, ensure_ascii=False, default=str)}" for k, v in shown.items())


@click.command("log", short_help="Show the audit log: who changed what, and when.")
@click.option("--kind", metavar="KIND", help="Exact kind (fact.added) or a prefix ending in '.' (version.).")
@click.option("--fact", "fact_id", type=int, metavar="ID", help="Only events about this fact.")
@click.option("--version", "version_id", type=int, metavar="V", help="Only events about this version.")
@click.option("--round", "round_id", type=int, metavar="R", help="Only events of this round.")
@click.option("--since", type=click.DateTime(formats=DATES), help="From this local time on.")
@click.option("--until", type=click.DateTime(formats=DATES), help="Up to this local time.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@json_option
def log(kind: str | None, fact_id: int | None, version_id: int | None, round_id: int | None,
        since: datetime | None, until: datetime | None, limit: int, as_json: bool) -> None:
    """The audit log, newest first: facts added / revised / retracted, versions recorded,
    gated, promoted, rolled back, rounds started and finished, and who did each.

    \b
    Examples:
      locft log
      locft log --fact 12                   everything that happened to fact 12
      locft log --kind version. --since 2026-03-01
      locft log --round 7 --json
    """
    with open_store(sweep_orphans=False) as store:
        events = store.list_events(
            kind=kind, fact_id=fact_id, version_id=version_id, round_id=round_id,
            since=since.astimezone() if since else None, until=until.astimezone() if until else None, limit=limit,
        )
    if as_json:
        echo_json([e.to_dict() for e in events])
        return
    if not events:
        click.echo("no events")
        return
    table(
        ["ID", "WHEN", "KIND", "ACTOR", "ABOUT", "DETAILS"],
        [[e.id, fmt_time(e.created_at), e.kind, clip(e.actor or "-", 16), _subject(e.fact_id, e.version_id, e.round_id),
          _details(e.payload)] for e in events],
        flex=5,
    )
