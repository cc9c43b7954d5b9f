"""`locft` entry point. Subcommands load lazily so `locft --help` never imports torch."""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Any

import click

from locft.errors import LocftError

# name -> "module:attribute". One module per noun; heavy imports happen inside the commands.
COMMANDS: dict[str, str] = {
    "bench": "locft.cli.bench:bench",
    "demo": "locft.cli.demo:demo",
    "locate": "locft.cli.locate:locate_cmd",
    "init": "locft.cli.init:init",
    "status": "locft.cli.status:status",
    "add-fact": "locft.cli.facts:add_fact",
    "facts": "locft.cli.facts:facts",
    "import": "locft.cli.importing:import_facts",
    "versions": "locft.cli.versions:versions",
    "promote": "locft.cli.versions:promote",
    "rollback": "locft.cli.versions:rollback",
    "export": "locft.cli.versions:export",
    "log": "locft.cli.events:log",
    "round": "locft.cli.rounds:round_group",
    "ask": "locft.cli.serving:ask",
    "serve": "locft.cli.serving:serve",
}


class ErrorReportingGroup(click.Group):
    """A LocftError becomes one `error: ...` line and its exit code, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except LocftError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)


class LazyGroup(ErrorReportingGroup):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(COMMANDS))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in COMMANDS:
            module, attr = COMMANDS[name].split(":")
            return getattr(importlib.import_module(module), attr)
        return super().get_command(ctx, name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
@click.version_option(package_name="locft")
def cli(verbose: int) -> None:
    """locft: keep an LLM's facts current by localized, breadth-first fine-tuning.

    Facts (prompt -> new answer) go into a versioned store under $LOCFT_HOME; rounds re-tune one
    small weight over all of them, gate the candidate, and promote it or keep the old version.

    \b
    Start here:
      locft init                        create $LOCFT_HOME and a commented locft.toml
      locft add-fact "Q" "A"            add one fact
      locft import facts.jsonl          add many (JSONL, JSON, CSV, ZsRE/COUNTERFACT/WikiBigEdit)
      locft round run                   train, gate and promote a version now
      locft ask "Q" --compare           answer with the promoted version, base beside it
      locft bench --data F --n 100      measure editing quality and speed on a benchmark file
    """
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main() -> None:
    cli(prog_name="locft")


if __name__ == "__main__":
    main()
