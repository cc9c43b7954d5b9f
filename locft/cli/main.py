"""`locft` entry point. Subcommands load lazily so `locft --help` never imports torch."""

from __future__ import annotations

import contextvars
import importlib
import json
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import click

from locft.errors import INTERNAL, USAGE, LocftError

# name -> "module:attribute". One module per noun; heavy imports happen inside the commands.
COMMANDS: dict[str, str] = {
    "bench": "locft.cli.bench:bench",
    "config": "locft.cli.config_cmd:config_group",
    "setup": "locft.cli.setup_cmd:setup",
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


# Whether this invocation asked for --json (set by ErrorReportingGroup.main for its duration).
_AS_JSON: contextvars.ContextVar[bool] = contextvars.ContextVar("locft_as_json", default=False)


def json_requested(args: Sequence[str]) -> bool:
    """`--json` anywhere among the options (not after a `--`, where it would be an argument)."""
    args = list(args)
    return "--json" in (args[: args.index("--")] if "--" in args else args)


def report_error(code: str, message: str, exit_status: int, details: dict[str, Any] | None = None) -> NoReturn:
    """The automation contract (README, "Automation: JSON, errors and exit codes"): under --json,
    one JSON object on stdout, where the command's result would have been; otherwise
    `error: ...` on stderr."""
    if _AS_JSON.get():
        error: dict[str, Any] = {"code": code, "message": message}
        if details is not None:
            error["details"] = details
        click.echo(json.dumps({"error": error}, ensure_ascii=False, default=str))
    else:
        click.echo(f"error: {message}", err=True)
    sys.exit(exit_status)


class ErrorReportingGroup(click.Group):
    """A LocftError becomes one `error: ...` line (a JSON object under --json) and the exit
    status of its class (locft.errors.ERROR_CODES), never a traceback."""

    def main(self, args: Sequence[str] | None = None, *rest: Any, **kwargs: Any) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        token = _AS_JSON.set(json_requested(argv))
        try:
            return super().main(argv, *rest, **kwargs)
        finally:
            _AS_JSON.reset(token)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except LocftError as exc:
            report_error(exc.code, str(exc), exc.exit_code, exc.details)
        except click.ClickException as exc:  # a usage error of a subcommand
            if not _AS_JSON.get():
                raise
            report_error(USAGE[0] if isinstance(exc, click.UsageError) else "error", exc.format_message(),
                         exc.exit_code)
        except (click.exceptions.Exit, click.exceptions.Abort, SystemExit, KeyboardInterrupt):
            raise
        except Exception as exc:  # a bug: the traceback on stderr, and still one JSON object
            if not _AS_JSON.get():
                raise
            traceback.print_exc(file=sys.stderr)
            report_error(INTERNAL[0], f"{type(exc).__name__}: {exc}", INTERNAL[1])


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
@click.option("--home", type=click.Path(path_type=Path), default=None, metavar="DIR",
              help="The locft home (default: $LOCFT_HOME, else the user data dir).")
@click.version_option(package_name="locft")
def cli(verbose: int, home: Path | None) -> None:
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
      locft setup                       after `pip install`: the embedded model and offline data
      locft config check                what a round and the daemon need, checked without running

    Under --json a command prints one JSON document on stdout: its result, or
    {"error": {"code": ..., "message": ...}}; exit statuses per error class: README.
    """
    if home is not None:
        # Through the environment, so every command, and the processes they start (the daemon,
        # round workers), resolve the same home.
        from locft.config import check_home_path

        os.environ["LOCFT_HOME"] = str(check_home_path(home.expanduser().resolve(), "--home"))
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main() -> None:
    cli(prog_name="locft")


if __name__ == "__main__":
    main()
