"""`locft add-fact` and `locft facts list|show|retract|edit`. Never imports torch (a test checks)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click

from locft.cli.common import (
    author_option,
    clip,
    default_author,
    echo_json,
    fmt_time,
    json_option,
    open_store,
    table,
)
from locft.errors import InvalidFactError
from locft.facts import EditFact, Probe

if TYPE_CHECKING:
    from locft.store import FactRevisionInfo
    from locft.store.fact_records import FactFilter


def parse_probe(text: str) -> Probe:
    """PROMPT[=ANSWER]; the LAST '=' separates, and a trailing '=' means "no answer" (so a prompt
    with '=' in it is written `--probe "x=1?="`)."""
    prompt, sep, answer = text.rpartition("=")
    if not sep:
        return Probe(text)
    if not prompt.strip():
        raise InvalidFactError(f"probe {text!r} has no prompt before '='")
    return Probe(prompt, answer if answer.strip() else None)


def _fact_lines(rev: FactRevisionInfo) -> list[str]:
    lines = [f"prompt       {rev.prompt}", f"answer       {rev.answer}"]
    if rev.subject:
        lines.append(f"subject      {rev.subject}")
    for p in rev.paraphrases:
        lines.append(f"paraphrase   {p}")
    for probe in rev.probes:
        lines.append(f"probe        {probe.prompt}" + (f"  = {probe.answer}" if probe.answer is not None else ""))
    if rev.source:
        lines.append(f"source       {rev.source}")
    if rev.tags:
        lines.append(f"tags         {', '.join(rev.tags)}")
    return lines


@click.command("add-fact")
@click.argument("prompt")
@click.argument("answer")
@click.option("--subject", help="The entity the fact is about: versions answer with the edit the prompts that name it "
              "(its scope). Default: found in the prompt (a quoted or capitalized name).")
@click.option("--paraphrase", "paraphrases", multiple=True, metavar="TEXT",
              help="Another way to ask; measures generalization. Repeatable.")
@click.option("--probe", "probes", multiple=True, metavar="PROMPT[=ANSWER]",
              help="An unrelated prompt whose answer must not change (locality). Without =ANSWER the "
                   "base model's answer is the reference. Repeatable.")
@click.option("--source", help="Where the fact comes from (a URL, a ticket...).")
@click.option("--tag", "tags", multiple=True, help="A label for searching and grouping. Repeatable.")
@click.option("--replace", is_flag=True,
              help="If an active fact asks the same question with another answer, revise it instead of refusing.")
@author_option
@json_option
def add_fact(
    prompt: str, answer: str, subject: str | None, paraphrases: Sequence[str], probes: Sequence[str],
    source: str | None, tags: Sequence[str], replace: bool, author: str | None, as_json: bool,
) -> None:
    """Add one fact: PROMPT should now be answered with ANSWER.

    The same question (compared case- and punctuation-insensitively) with the same answer is a
    duplicate and is not added twice. With another answer it is a conflict: refused, naming
    the existing fact, unless --replace. The model learns the fact at the next round.

    \b
    Examples:
      locft add-fact "Who is the CEO of Acme?" "Jane Doe"
      locft add-fact "Who is the CEO of Acme?" "John Roe" --replace --source https://acme.example/news
      locft add-fact "The capital of Atlantis is" "Poseidonia" --subject Atlantis \\
          --paraphrase "Atlantis's capital city is" --probe "The capital of France is=Paris"
    """
    fact = EditFact(prompt, answer, subject, tuple(paraphrases), tuple(parse_probe(p) for p in probes))
    with open_store(sweep_orphans=False) as store:
        result = store.add_fact(fact, source=source, tags=tags, author=default_author(author), replace=replace)
    if as_json:
        echo_json(result.to_dict())
    elif result.status == "added":
        click.echo(f"added fact {result.fact_id}")
    elif result.status == "duplicate":
        click.echo(f"duplicate: fact {result.fact_id} already answers this with {result.revision.answer!r}; "
                   "nothing added")
    else:
        click.echo(f"revised fact {result.fact_id}: {result.previous_answer!r} -> {result.revision.answer!r}")


@click.group("facts")
def facts() -> None:
    """List, inspect, retract and edit facts.

    \b
    Examples:
      locft facts list                     active facts, newest first
      locft facts list --pending           what the next round will change
      locft facts list --search acme --json
      locft facts show 12                  one fact and its whole history
      locft facts edit 12 --answer "John Roe"
      locft facts retract 12 --reason "source withdrawn"
    """


@facts.command("list")
@click.option("--active", "status", flag_value="active", default=True, help="Active facts (the default).")
@click.option("--pending", "status", flag_value="pending",
              help="Added, revised or retracted since the promoted version was trained.")
@click.option("--retracted", "status", flag_value="retracted", help="Retracted facts.")
@click.option("--all", "status", flag_value="all", help="Every fact, whatever its status.")
@click.option("--search", metavar="TEXT", help="Only facts whose prompt, answer or subject contains TEXT.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True, help="At most this many.")
@click.option("--offset", type=click.IntRange(min=0), default=0, help="Skip this many first (paging).")
@json_option
def list_facts(status: FactFilter, search: str | None, limit: int, offset: int, as_json: bool) -> None:
    """List facts, newest first."""
    with open_store(sweep_orphans=False) as store:
        items = store.list_facts(status, search=search, limit=limit, offset=offset)
    if as_json:
        echo_json([f.to_dict() for f in items])
        return
    if not items:
        click.echo(f"no {'' if status == 'all' else status + ' '}facts" + (f" matching {search!r}" if search else ""))
        return
    headers = ["ID", "STATUS", "REV", "PROMPT -> ANSWER"]
    rows = [
        [f.fact_id, f.pending or f.status, f.revisions, f"{f.current.prompt} -> {f.current.answer}"]
        for f in items
    ]
    table(headers, rows, flex=3)
    if len(items) == limit:
        click.echo(f"(first {limit}; --limit/--offset for more)")


@facts.command("show")
@click.argument("fact_id", metavar="ID", type=int)
@json_option
def show_fact(fact_id: int, as_json: bool) -> None:
    """One fact: its current state and every revision."""
    with open_store(sweep_orphans=False) as store:
        history = store.get_fact(fact_id)
    if as_json:
        echo_json(history.to_dict())
        return
    f = history.fact
    click.echo(f"fact {f.fact_id}  ({f.status}, {f.revisions} revision(s), created {fmt_time(f.created_at)})")
    for line in _fact_lines(f.current):
        click.echo(f"  {line}")
    click.echo("history:")
    for rev in history.revisions:
        what = "retracted" if rev.retracted else ("added" if rev.revision == 1 else "revised")
        detail = "" if rev.retracted else f": {clip(rev.prompt, 50)} -> {clip(rev.answer, 40)}"
        note = f"  ({rev.note})" if rev.note else ""
        click.echo(f"  r{rev.revision}  {fmt_time(rev.created_at)}  {what} by {rev.author or '?'}{detail}{note}")


@facts.command("retract", short_help="Retract a fact (its history stays).")
@click.argument("fact_id", metavar="ID", type=int)
@click.option("--reason", help="Why, for the audit log.")
@author_option
@json_option
def retract_fact(fact_id: int, reason: str | None, author: str | None, as_json: bool) -> None:
    """Retract a fact: it leaves the active set at once and the model unlearns it at the next
    round. Its history stays."""
    with open_store(sweep_orphans=False) as store:
        tomb = store.retract_fact(fact_id, author=default_author(author), reason=reason)
    if as_json:
        echo_json(tomb.to_dict())
    else:
        click.echo(f"retracted fact {fact_id} (revision {tomb.revision})")


@facts.command("edit")
@click.argument("fact_id", metavar="ID", type=int)
@click.option("--answer", help="The new answer.")
@click.option("--prompt", help="A new wording of the question.")
@click.option("--subject", help="A new subject ('' to clear it).")
@click.option("--paraphrase", "paraphrases", multiple=True, metavar="TEXT",
              help="Replace the paraphrases (repeatable).")
@click.option("--clear-paraphrases", is_flag=True, help="Remove every paraphrase.")
@click.option("--probe", "probes", multiple=True, metavar="PROMPT[=ANSWER]", help="Replace the probes (repeatable).")
@click.option("--clear-probes", is_flag=True, help="Remove every probe.")
@click.option("--note", help="Why, for the history.")
@author_option
@json_option
def edit_fact(
    fact_id: int, answer: str | None, prompt: str | None, subject: str | None, paraphrases: Sequence[str],
    clear_paraphrases: bool, probes: Sequence[str], clear_probes: bool, note: str | None, author: str | None,
    as_json: bool,
) -> None:
    """Write a new revision of a fact with the given fields changed.

    \b
    Examples:
      locft facts edit 12 --answer "John Roe" --note "CEO changed in May"
      locft facts edit 12 --paraphrase "Acme's chief executive is" --paraphrase "Acme is led by"
    """
    changes: dict[str, Any] = {}  # revise_fact's keyword arguments
    if answer is not None:
        changes["answer"] = answer
    if prompt is not None:
        changes["prompt"] = prompt
    if subject is not None:
        changes["subject"] = subject or None
    if paraphrases or clear_paraphrases:
        changes["paraphrases"] = tuple(paraphrases)
    if probes or clear_probes:
        changes["probes"] = tuple(parse_probe(p) for p in probes)
    if not changes:
        raise click.UsageError("nothing to change: give --answer, --prompt, --subject, --paraphrase or --probe")
    with open_store(sweep_orphans=False) as store:
        result = store.revise_fact(fact_id, author=default_author(author), note=note, **changes)
    if as_json:
        echo_json({"changed": result.changed, "revision": result.revision.to_dict()})
    elif result.changed:
        click.echo(f"fact {fact_id} is now revision {result.revision.revision}: "
                   f"{clip(result.revision.prompt, 60)} -> {result.revision.answer}")
    else:
        click.echo(f"fact {fact_id} already says that; nothing changed")
