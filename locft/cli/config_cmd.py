"""`locft config`: check the configuration of $LOCFT_HOME without running anything, and print the
commented template every locft.toml starts from."""

from __future__ import annotations

import click

from locft.cli.common import echo_json, json_option, resolve_home


@click.group("config", short_help="Check the configuration of $LOCFT_HOME; print its template.")
def config_group() -> None:
    """The configuration of $LOCFT_HOME (locft.toml)."""


@config_group.command("check")
@json_option
def check(as_json: bool) -> None:
    """Validate everything a round and the daemon need, without running them.

    \b
    locft.toml        parses; known keys; values in range
    schedule.cron     a valid cron expression (the daemon's own parser)
    capability tasks  known names; their offline data installed
    model             the path exists and loads as a model: config.json and weight files,
                      or a GGUF header (no weights are read); the embedded model installed
    database          the URL parses and its driver is installed (no connection is made)

    Exit status 0 when all is well; 3 with the problems listed (under --json the error object,
    its "details" holding {"problems": [{"what": ..., "message": ...}]}). `locft status` shows
    the same problems.
    """
    from locft.checks import check_home
    from locft.errors import ConfigError

    home = resolve_home()
    problems = check_home(home)
    report = {"home": str(home.root), "ok": not problems, "problems": [p.to_dict() for p in problems]}
    if not as_json:
        for problem in problems:
            click.echo(f"PROBLEM  {problem}")
    if problems:  # under --json: the error object, with the problems as its details
        raise ConfigError(f"{len(problems)} problem(s) in the configuration of {home.root}: "
                          + "; ".join(map(str, problems))).with_details(report)
    if as_json:
        echo_json(report)
        return
    click.echo(f"ok: {home.config_path} (cron, capability tasks, model, database)")


@config_group.command("template")
def template() -> None:
    """Print the commented locft.toml: every key, what it takes, its default and what it does.

    It is what `locft init` writes into a new home, rendered from the same schemas the loader
    validates with, so it also lists keys added since an older locft.toml was written.

    \b
    Examples:
      locft config template | less
      diff <(locft config template) "$LOCFT_HOME/locft.toml"
    """
    from locft.config_docs import config_template

    click.echo(config_template(), nl=False)
