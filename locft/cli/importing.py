"""`locft import FILE`: many facts at once, all-or-nothing by default."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click

from locft.cli.common import author_option, default_author, echo_json, json_option, open_store
from locft.errors import InputFormatError
from locft.readers import FORMATS, read_facts, read_facts_stream

if TYPE_CHECKING:
    from locft.store import ImportIssue

SHOW_AT_MOST = 20


def _list(title: str, issues: Sequence[ImportIssue]) -> None:
    if not issues:
        return
    click.echo(f"{title}:", err=True)
    for issue in issues[:SHOW_AT_MOST]:
        click.echo(f"  {issue}", err=True)
    if len(issues) > SHOW_AT_MOST:
        click.echo(f"  ... and {len(issues) - SHOW_AT_MOST} more (--json lists them all)", err=True)


@click.command("import", short_help="Add the facts of a JSONL/JSON/CSV/benchmark file, all or none.")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False, allow_dash=True))
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="auto", show_default=True,
              help="File format; auto: by extension, then by the keys of the first record.")
@click.option("--skip-invalid", is_flag=True,
              help="Import the valid rows even when others are invalid or conflicting (default: all or nothing).")
@click.option("--replace", is_flag=True,
              help="A row that asks an active fact's question with another answer revises that fact.")
@author_option
@json_option
def import_facts(fmt: str, file: Path, skip_invalid: bool, replace: bool, author: str | None, as_json: bool) -> None:
    """Add the facts of FILE (`-`: standard input) in one transaction: all of them, or none.

    \b
    Formats (auto-detected):
      jsonl / json   {"prompt": ..., "answer": ..., "subject", "paraphrases", "probes",
                      "locality", "source", "tags"} per line / in an array
      csv            a header with those names; list fields separated by "|"
      zsre, counterfact, wikibigedit   the benchmark files' own formats

    Duplicates (same question, same answer as an active fact or an earlier row) are reported
    and skipped. Invalid rows and conflicts (same question, another answer) stop the import:
    nothing is written, and each problem is listed with its line number.

    \b
    Examples:
      locft import facts.jsonl
      locft import zsre_dev.json --format zsre
      locft import sheet.csv --skip-invalid --json > report.json
      jq -c '.[]' facts.json | locft import -                  # stdin: JSON, JSONL, benchmarks
      cut -d, -f1-2 sheet.csv | locft import - --format csv   # stdin CSV needs --format
    """
    stdin = str(file) == "-"
    result = read_facts_stream(sys.stdin.buffer, fmt) if stdin else read_facts(file, fmt)
    origin = "<stdin>" if stdin else str(file.resolve())
    author = default_author(author)
    total = len(result.records)
    with open_store() as store:
        # The bar goes to stderr so that --json output stays clean on stdout.
        with click.progressbar(length=max(total, 1), label=f"importing {total} facts", file=sys.stderr,
                               show_pos=True) as bar:
            done = [0]

            def progress(n: int) -> None:
                bar.update(n - done[0])
                done[0] = n

            summary = store.import_facts(result.records, result.errors, replace=replace, skip_invalid=skip_invalid,
                                         author=author, origin=origin, progress=progress)
    report = {"file": str(file), "format": result.format, **summary.to_dict()}
    if as_json and summary.written:
        echo_json(report)
    elif not as_json:
        _list("invalid", summary.invalid)
        _list("conflicting", summary.conflicts)
        _list("duplicates (skipped)", summary.duplicates)
        verb = "imported" if summary.written else "NOT imported"
        click.echo(
            f"{verb} {file} ({result.format}): {len(summary.added)} added, {len(summary.revised)} revised, "
            f"{len(summary.duplicates)} duplicate, {len(summary.conflicts)} conflicting, "
            f"{len(summary.invalid)} invalid" + (" (skipped)" if summary.written and summary.refused else "")
        )
    if not summary.written:
        first = min(summary.invalid + summary.conflicts, key=lambda issue: issue.line)
        importable = summary.total - summary.refused - len(summary.duplicates)
        raise InputFormatError(
            f"nothing imported: {len(summary.invalid)} invalid and {len(summary.conflicts)} conflicting row(s), "
            f"first {first}; fix them, or --skip-invalid to import the {importable} other row(s)"
            + (", or --replace to revise the conflicting facts" if summary.conflicts else "")
        ).with_details(report)  # under --json the error object carries the per-row report
