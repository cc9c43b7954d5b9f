"""`locft versions list|show|diff`, `locft promote`, `locft rollback`, `locft export`."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
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
    resolve_home,
    table,
)

if TYPE_CHECKING:
    from locft.store import FactRevisionInfo, PointerMove, VersionInfo


def _gate(v: VersionInfo) -> str:
    if v.is_base:
        return "-"
    if v.gate is None:
        return "not gated"
    return "passed" if v.gate.passed else "FAILED"


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    size: float = n
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(size)


@click.group("versions", short_help="List, inspect and compare model versions.")
def versions() -> None:
    """Model versions: each one the base model plus one tuned weight, trained on an exact fact set.

    A version never changes once recorded. Its state is derived: promoted (being served),
    retired (was promoted), rejected (failed its gates), candidate (anything else).

    \b
    Examples:
      locft versions list
      locft versions show 3             config, facts, metrics, gate report
      locft versions diff 2 3           facts added / removed / changed between them
      locft promote 3                   serve version 3
      locft rollback                    serve the previously promoted version again
    """


@versions.command("list")
@json_option
def list_versions(as_json: bool) -> None:
    """Every version, newest first, with its state."""
    with open_store() as store:
        items = store.list_versions()
    if as_json:
        echo_json([v.to_dict() for v in items])
        return
    rows = [
        [v.id, v.state, v.fact_count, _gate(v), fmt_time(v.created_at), "-" if v.parent_id is None else v.parent_id,
         "base model" if v.is_base else (_size(v.snapshot_size) if v.snapshot_present else "deleted")]
        for v in items
    ]
    table(["ID", "STATE", "FACTS", "GATES", "CREATED", "PARENT", "SNAPSHOT"], rows)


def _metric(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else json.dumps(value, default=str)


@versions.command("show")
@click.argument("version_id", metavar="V", type=int)
@click.option("--facts-limit", type=click.IntRange(min=0), default=50, show_default=True,
              help="List at most this many of its facts (0: none; --json lists them all).")
@json_option
def show_version(version_id: int, facts_limit: int, as_json: bool) -> None:
    """One version: its config, facts (and which it answers correctly), metrics and gate report.

    Whether a fact is answered correctly comes from the version's gate report: greedy
    generation on the fact's prompt, exact match after normalization. Above
    gates.reliability_sample facts only a sample is asked; the others show as not measured.
    """
    from locft.api.views import version_facts

    with open_store() as store:
        v = store.get_version(version_id)
        gates = store.gate_results(version_id)
        moves = [p for p in store.promotion_history() if p.version_id == version_id]
        trained = version_facts(store, version_id)
    if as_json:
        echo_json({**v.to_dict(), "gate_results": [g.to_dict() for g in gates],
                   "promotions": [p.to_dict() for p in moves], "facts": trained["facts"]})
        return
    click.echo(f"version {v.id}  {v.state}" + ("  (the base model)" if v.is_base else ""))
    click.echo(f"  created      {fmt_time(v.created_at)}" + (f" by round {v.round_id}" if v.round_id else ""))
    click.echo(f"  parent       {'-' if v.parent_id is None else v.parent_id}")
    click.echo(f"  base model   {v.base_fingerprint or 'not recorded yet'}")
    click.echo(f"  facts        {v.fact_count} (digest {v.fact_set_digest[:16]}...)")
    if v.snapshot_path:
        present = "" if v.snapshot_present else "  (DELETED)"
        click.echo(f"  snapshot     {v.snapshot_path}  {_size(v.snapshot_size)}  sha256 "
                   f"{(v.snapshot_sha256 or '')[:16]}...{present}")
    if v.note:
        click.echo(f"  note         {v.note}")
    if not v.is_base:
        click.echo(f"  scope        {_scope_line(v.edit_config or {}, gates[-1].report if gates else {})}")
    if v.edit_config:
        click.echo("  edit config")
        for key, value in sorted(v.edit_config.items()):
            click.echo(f"    {key:<20} {json.dumps(value, default=str)}")
    for move in moves:
        forced = " (forced)" if move.forced else ""
        click.echo(f"  {move.action:<12} {fmt_time(move.created_at)} by {move.actor or '?'}{forced}"
                   + (f": {move.reason}" if move.reason else ""))
    if not gates:
        click.echo("  gates        " + ("-" if v.is_base else "not gated"))
    for g in gates:
        click.echo(f"  gates        {'passed' if g.passed else 'FAILED'} at {fmt_time(g.created_at)}")
        for line in _gate_lines(g.metrics, g.report):
            click.echo(f"    {line}")
    if gates:
        click.echo(f"  (the full gate report: locft versions show {v.id} --json)")
    _print_facts(trained, facts_limit)


def _print_facts(trained: dict[str, Any], limit: int) -> None:
    facts = trained["facts"]
    if not facts or limit == 0:
        return
    if trained["measured"]:
        sampled = " (a sample was asked)" if trained["sampled"] else ""
        head = f"{trained['correct']} of {len(facts)} answered correctly{sampled}"
    else:
        head = "correctness not measured (no per-fact gate report)"
    shown = facts[:limit]
    more = f"; the first {len(shown)} shown (--facts-limit)" if len(shown) < len(facts) else ""
    click.echo(f"\nfacts trained on: {len(facts)}, {head}{more}")
    mark = {True: "yes", False: "NO", None: "-"}
    table(["ID", "CORRECT", "PROMPT -> ANSWER"],
          [[f["fact_id"], mark[f["correct"]], f"{f['prompt']} -> {f['answer']}"] for f in shown], flex=2)


def _scope_line(edit_config: dict[str, Any], report: dict[str, Any]) -> str:
    """Which prompts the version answers with its edits (engine.scope), and how the gates saw it."""
    scope = edit_config.get("scope")
    if not isinstance(scope, dict):
        return "none: the tuned tensors answer every prompt"
    line = (f"{scope.get('match')} match over {scope.get('facts')} fact(s) ({scope.get('subjects_given')} subject(s) "
            f"given, {scope.get('subjects_found')} found in the prompt); other prompts get the base model")
    seen = (report.get("evaluation") or {}).get("scope") if isinstance(report, dict) else None
    if isinstance(seen, dict) and seen.get("recall") is not None:
        fp = seen.get("false_positive_rate")
        line += (f"; paraphrases in scope {seen['recall']:.2f}"
                 + (f", probes in scope {fp:.2f}" if isinstance(fp, (int, float)) else ""))
    return line


def _gate_lines(metrics: dict[str, Any], report: dict[str, Any]) -> list[str]:
    """Metrics that have a value, then the verdict's checks (or its reasons). The report's
    schema belongs to the gating policy, so anything unexpected is simply not shown here."""
    lines = [f"{key:<20} {_metric(value)}" for key, value in sorted(metrics.items()) if value not in (None, {}, [])]
    verdict = report.get("verdict")
    checks = verdict.get("checks") if isinstance(verdict, dict) else None
    if isinstance(checks, list) and all(isinstance(c, dict) for c in checks):
        for c in checks:
            mark = ("ok  " if c.get("passed") else "FAIL") if c.get("gated", True) else "info"
            lines.append(f"{mark} {c.get('detail') or c.get('name')}")
    elif isinstance(report.get("reasons"), list):
        lines.extend(f"- {reason}" for reason in report["reasons"])
    return lines


def _fact_row(r: FactRevisionInfo) -> list[Any]:
    return [r.fact_id, f"r{r.revision}", f"{r.prompt} -> {r.answer}"]


@versions.command("diff")
@click.argument("old", metavar="V1", type=int)
@click.argument("new", metavar="V2", type=int)
@json_option
def diff_versions(old: int, new: int, as_json: bool) -> None:
    """Facts added, removed and changed from version V1 to version V2."""
    with open_store() as store:
        diff = store.diff_versions(old, new)
    if as_json:
        echo_json(diff.to_dict())
        return
    click.echo(f"version {old} -> {new}: {len(diff.added)} added, {len(diff.removed)} removed, "
               f"{len(diff.changed)} changed")
    if diff.added:
        click.echo("\nadded:")
        table(["ID", "REV", "PROMPT -> ANSWER"], [_fact_row(r) for r in diff.added], flex=2)
    if diff.removed:
        click.echo("\nremoved:")
        table(["ID", "REV", "PROMPT -> ANSWER"], [_fact_row(r) for r in diff.removed], flex=2)
    if diff.changed:
        click.echo("\nchanged:")
        table(
            ["ID", "REVS", "PROMPT", "ANSWER"],
            [[c.fact_id, f"r{c.before.revision}->r{c.after.revision}", clip(c.after.prompt, 50),
              f"{c.before.answer} -> {c.after.answer}"] for c in diff.changed],
            flex=3,
        )


def _moved(move: PointerMove, as_json: bool) -> None:
    if as_json:
        echo_json(move.to_dict())
    elif not move.changed:
        click.echo(f"version {move.version_id} is already promoted; nothing changed")
    else:
        verb = "promoted" if move.action == "promote" else "rolled back to"
        forced = " (forced past its gates)" if move.forced else ""
        click.echo(f"{verb} version {move.version_id}{forced}; was version {move.previous_version_id}")


@click.command("promote", short_help="Serve version V from now on.")
@click.argument("version_id", metavar="V", type=int)
@click.option("--force", is_flag=True, help="Promote even though its gates failed or never ran (logged).")
@click.option("--reason", help="Why, for the audit log.")
@author_option
@json_option
def promote(version_id: int, force: bool, reason: str | None, author: str | None, as_json: bool) -> None:
    """Serve version V from now on (a running daemon and API pick it up).

    \b
    Examples:
      locft promote 3
      locft promote 4 --force --reason "locality gate too strict for this batch"
      locft promote 0                   back to the base model
    """
    with open_store() as store:
        move = store.promote(version_id, force=force, actor=default_author(author), reason=reason)
    _moved(move, as_json)


@click.command("rollback", short_help="Serve the previously promoted version again.")
@click.option("--to", "to", type=int, metavar="V",
              help="A version that was promoted before (default: the previous one).")
@click.option("--reason", help="Why, for the audit log.")
@author_option
@json_option
def rollback(to: int | None, reason: str | None, author: str | None, as_json: bool) -> None:
    """Serve the previously promoted version again (repeat to go further back).

    \b
    Examples:
      locft rollback
      locft rollback --to 2 --reason "v3 answers the Acme facts wrong"
    """
    with open_store() as store:
        move = store.rollback(to, actor=default_author(author), reason=reason)
    _moved(move, as_json)


@click.command("export", short_help="Write version V as a full Hugging Face checkpoint.")
@click.argument("version_id", metavar="V", type=int)
@click.argument("out_dir", metavar="DIR", type=click.Path(path_type=Path, file_okay=False))
def export(version_id: int, out_dir: Path) -> None:
    """Write version V as a full Hugging Face checkpoint in DIR (a new directory).

    The snapshot is checked against its recorded sha256 first. Version 0 exports the base model.
    A checkpoint is one set of weights, so it cannot carry the version's scope: the exported
    model answers EVERY prompt with the edit (as serve.scope = "always" does), unrelated ones too.

    \b
    Examples:
      locft export 3 ./acme-kb-v3
      python -c "import transformers as t; t.AutoModelForCausalLM.from_pretrained('./acme-kb-v3')"
    """
    from locft.config import load_config

    home = resolve_home()
    config = load_config(home.root)
    with open_store() as store:
        info = store.get_version(version_id)  # NotFoundError first, before any heavy import
        store.verify_version_snapshot(version_id)
        snapshot_dir = store.snapshot_dir(version_id)
    from locft.engine.snapshot import export_checkpoint  # torch: only here

    click.echo(f"exporting version {version_id} to {out_dir} (loading the base model)...", err=True)
    written = export_checkpoint(home.root, config.model, snapshot_dir, out_dir)
    click.echo(f"exported version {version_id} to {written}")
    if isinstance(info.edit_config, dict) and info.edit_config.get("scope"):
        click.echo("note: the checkpoint has the edit merged into its weights and cannot carry the version's "
                   "scope: it answers every prompt with the edit, unrelated ones too (serve.scope = \"always\"). "
                   "`locft serve` keeps unrelated prompts on the base model.", err=True)


@versions.command("at")
@click.argument("when", metavar="WHEN",
                type=click.DateTime(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M"]))
@json_option
def version_at(when: datetime, as_json: bool) -> None:
    """Which version was served at WHEN (local time), since when, and who promoted it.

    \b
    Examples:
      locft versions at 2026-03-01
      locft versions at "2026-03-01 14:30:00" --json
    """
    moment = when.astimezone()  # naive input: the local time zone
    with open_store() as store:
        move = store.promotion_at(moment)
        v = store.get_version(move.version_id)
    if as_json:
        echo_json({"at": moment.isoformat(), "promotion": move.to_dict(), "version": v.to_dict()})
        return
    forced = " (forced)" if move.forced else ""
    click.echo(f"at {fmt_time(moment)} the served version was {v.id}" + (" (the base model)" if v.is_base else
                                                                    f", trained on {v.fact_count} facts"))
    click.echo(f"  since {fmt_time(move.created_at)}: {move.action}{forced} by {move.actor or '?'}"
               + (f": {move.reason}" if move.reason else ""))
    click.echo(f"  its facts: locft versions show {v.id}; what changed since: locft versions diff {v.id} <V>")
