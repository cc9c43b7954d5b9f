"""Shared pieces of the store commands: opening the store, --json, tables, times. No torch."""

from __future__ import annotations

import getpass
import json
import os
import shutil
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:  # the store imports SQLModel: only load it when a command runs
    from locft.home import Home
    from locft.store import Store

F = TypeVar("F", bound=Callable[..., Any])


def json_option(func: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON (machine-readable) instead of text.")(func)


def author_option(func: F) -> F:
    return click.option(
        "--author", default=None, metavar="NAME",
        help="Who is making this change, for the audit log (default: $LOCFT_AUTHOR or your user name).",
    )(func)


def default_author(author: str | None) -> str:
    if author:
        return author
    env = os.environ.get("LOCFT_AUTHOR")
    if env:
        return env
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in some containers
        return "unknown"


def resolve_home() -> Home:
    from locft.home import Home

    return Home.resolve()


def open_store(create: bool = False, sweep_orphans: bool = True) -> Store:
    """The store of $LOCFT_HOME; a missing one is a one-line error telling to run `locft init`."""
    from locft.config import load_config
    from locft.store import Store

    home = resolve_home()
    return Store.open(home, load_config(home.root).store, create=create, sweep_orphans=sweep_orphans)


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def fmt_time(value: datetime | None) -> str:
    """A timestamp in local time, to the second."""
    if value is None:
        return "-"
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def clip(text: str | None, width: int) -> str:
    text = " ".join((text or "").split())  # one line
    return text if len(text) <= width else text[: max(width - 1, 1)] + "…"


def terminal_width() -> int:
    return max(shutil.get_terminal_size((120, 24)).columns, 60)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], flex: int | None = None) -> None:
    """Left-aligned columns; column `flex` takes the width that is left (and is clipped)."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    if flex is not None:
        others = sum(w for i, w in enumerate(widths) if i != flex) + 2 * (len(widths) - 1)
        widths[flex] = max(min(widths[flex], terminal_width() - others), 20)
        cells = [[clip(c, widths[flex]) if i == flex else c for i, c in enumerate(r)] for r in cells]
    click.echo("  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip())
    for r in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
