"""`locft init`: create $LOCFT_HOME, a commented locft.toml and the knowledge store."""

from __future__ import annotations

import click

from locft.cli.common import echo_json, json_option, resolve_home


@click.command("init", short_help="Create $LOCFT_HOME: directories, a commented locft.toml, the store.")
@json_option
def init(as_json: bool) -> None:
    """Create $LOCFT_HOME: the directory tree, a commented locft.toml and the store.

    Safe to run again: an existing locft.toml is never overwritten, and an existing store is
    only migrated to the current schema. The new store serves version 0, the base model.

    \b
    Examples:
      locft init
      LOCFT_HOME=~/kb-staging locft init     # a second, separate home
    """
    from locft.config import load_config
    from locft.store import Store

    home = resolve_home()
    created = home.create()
    config = load_config(home.root)  # a broken locft.toml is reported here, before anything else
    with Store.open(home, config.store, create=True) as store:
        migrations = store.applied_migrations
        promoted = store.promoted_version()
        database = store.summary().database
    if as_json:
        echo_json({
            "home": str(home.root), "config": str(home.config_path), "database": database,
            "created": [str(p) for p in created], "migrations_applied": list(migrations),
            "promoted_version": promoted.id,
        })
        return
    fresh = home.config_path in created
    click.echo(f"{'Initialized' if migrations else 'Already initialized:'} locft home {home.root}")
    click.echo(f"  config     {home.config_path}{' (new, every key commented)' if fresh else ''}")
    click.echo(f"  database   {database}" + (f" (schema: {', '.join(migrations)})" if migrations else ""))
    click.echo(f"  serving    version {promoted.id}{' (the base model)' if promoted.is_base else ''}")
    if migrations:
        click.echo("\nNext: locft add-fact \"Who is the CEO of Acme?\" \"Jane Doe\"   then   locft status")
