"""`locft locate`: a short sweep that picks the edit location, and records it in locft.toml."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from locft.cli.common import table
from locft.readers import FORMATS

if TYPE_CHECKING:
    from locft.locate.sweep import LocateProgress


def _int_list(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, ...]:
    if value is None:
        return ()
    try:
        items = tuple(int(x) for x in value.replace(" ", "").split(",") if x != "")
    except ValueError:
        raise click.BadParameter(f"expected comma-separated layer numbers like 4,8,12, got {value!r}") from None
    if not items or any(x < 0 for x in items):
        raise click.BadParameter(f"expected non-negative layer numbers like 4,8,12, got {value!r}")
    return items


def _task_list(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    return tuple(t.strip() for t in value.split(",") if t.strip())


class _LocateBar:
    """Renders the sweep's LocateProgress: one bar over the candidates on stderr; its label says
    what the current one is doing."""

    def __init__(self) -> None:
        self.bar: Any = None

    def __call__(self, p: LocateProgress) -> None:
        from tqdm import tqdm

        if p.candidate is None:
            click.echo(f"- {p.detail}", err=True)
            return
        if self.bar is None:
            self.bar = tqdm(total=p.n_candidates, unit="location", file=sys.stderr, dynamic_ncols=True)
        self.bar.n = p.candidate
        self.bar.set_description(f"[{p.candidate + 1}/{p.n_candidates}] {p.detail}", refresh=False)
        self.bar.set_postfix({"loss": f"{p.loss:.4f}"} if p.loss is not None else {}, refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.n = self.bar.total
            self.bar.set_description("done", refresh=False)
            self.bar.set_postfix({}, refresh=False)
            self.bar.close()
            self.bar = None


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _drop(x: float | None) -> str:
    return "-" if x is None else f"{x:+.4f}"


def _short(status: str) -> str:
    """The table's verdict: the priority level that decided ("chosen", "out: capability", ...)."""
    if status == "chosen":
        return status
    if status.startswith("tied"):
        return "tied, lost"  # generalization, locality and the level above all equal
    return "out: " + status.split(":")[0]


def print_report(report: Any) -> None:
    rows = []
    for i, c in enumerate(report.candidates):
        mark = "*" if i == report.selection.winner else ""
        name = c.location + (" (current)" if c.current else "")
        rows.append([
            mark, name, _drop(c.capability_drop), _f(c.locality), _f(c.locality_exact), _f(c.generalization),
            _f(c.reliability), f"{c.epochs}{'' if c.converged else '+'}",
            f"{c.train_seconds:.0f}/{c.eval_seconds:.0f}", _short(report.selection.status[i]),
        ])
    tasks = ", ".join(report.base_capability) or "not measured"
    click.echo(f"\n{report.n_sample} of {report.n_facts} facts, up to {report.settings['epochs']} epochs per location, "
               f"lr {report.edit['lr']}, batch {report.edit['batch_size']}, {report.edit['prompt_format']} prompts, "
               f"{report.n_probes} locality probes; capability: {tasks}"
               + (f" (base {', '.join(f'{k} {v:.4f}' for k, v in report.base_capability.items())})"
                  if report.base_capability else ""))
    table(["", "location", "cap drop", "locality", "loc exact", "general.", "reliab.", "epochs", "train/eval s",
           "verdict"], rows)
    click.echo("\ncapability drop: worst task, vs the base model (+ = worse); epochs 'N+': stopped at the budget, "
               "not converged; train/eval s: seconds per location")
    click.echo("priority (the paper's):")
    for step in report.selection.steps:
        click.echo(f"  {step}")
    click.echo("why:")
    width = max(len(c.location) for c in report.candidates)
    for c, status in zip(report.candidates, report.selection.status):
        click.echo(f"  {c.location:<{width}}  {status}")
    for w in report.warnings:
        click.echo(f"warning: {w}", err=True)


@click.command("locate", short_help="Sweep edit locations on a sample of facts; pick one for locft.toml.")
@click.option("--facts", "facts_file", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Sample from this fact file (JSONL/JSON/CSV, ZsRE/COUNTERFACT/WikiBigEdit) instead of "
                   "the store's active facts.")
@click.option("--format", "data_format", type=click.Choice(FORMATS), default="auto", show_default=True,
              help="Format of --facts.")
@click.option("--sample", type=click.IntRange(min=1), default=50, show_default=True,
              help="Facts each location is trained on (a seeded sample when there are more).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the sample.")
@click.option("--layers", callback=_int_list, default=None, metavar="4,8,12",
              help="Layers to try. Default: six depths spread over the model, plus the current location.")
@click.option("--template", "templates", multiple=True, metavar="TEMPLATE",
              help="Parameter template ({L} = layer) or module name to try; repeat for several. "
                   "Default: the model's MLP output projection (e.g. model.layers.{L}.mlp.down_proj.weight).")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="Epoch budget per location [default: edit.max_epochs, 25 unless set].")
@click.option("--capability-tasks", callback=_task_list, default="wiki_bpb", show_default=True,
              metavar="T1,T2",
              help="lm-eval tasks for the capability level (see gates.capability_tasks); '' skips it.")
@click.option("--capability-limit", type=click.IntRange(min=1), default=50, show_default=True,
              help="Items per capability task.")
@click.option("--probes", "probe_set_size", type=click.IntRange(min=0), default=100, show_default=True,
              help="Fixed locality probe prompts (plus the sampled facts' own probes).")
@click.option("--capability-tolerance", type=click.FloatRange(0, 1), default=None,
              help="Capability drop counted as equal to the best's [default: 0.01].")
@click.option("--locality-tolerance", type=click.FloatRange(0, 1), default=None,
              help="Locality counted as equal to the best's [default: 0.02].")
@click.option("--reliability-tolerance", type=click.FloatRange(0, 1), default=None,
              help="How far below the best reliability a location may learn the sample [default: 0.1].")
@click.option("--exact-locality", is_flag=True,
              help="Also measure exact locality (a generation per probe prompt: slower; reported only).")
@click.option("--write/--no-write", "write", default=None,
              help="Record the pick in $LOCFT_HOME/locft.toml ([edit] location, layers). "
                   "Default: ask when run in a terminal, else only print.")
@click.option("--json", "as_json", is_flag=True, help="Print the full report as JSON on stdout.")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Also write the full report as JSON to this file.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch CPU threads (default: all cores).")
def locate_cmd(facts_file: Path | None, data_format: str, sample: int, seed: int, layers: tuple[int, ...],
               templates: tuple[str, ...], epochs: int | None, capability_tasks: tuple[str, ...] | None,
               capability_limit: int, probe_set_size: int, capability_tolerance: float | None,
               locality_tolerance: float | None, reliability_tolerance: float | None, exact_locality: bool,
               write: bool | None,
               as_json: bool, out: Path | None, threads: int | None) -> None:
    """Find where to edit a model: sweep locations on a sample of facts, pick by the paper's priority.

    For models without a measured default location (locft knows the paper's Llama-3-8B,
    Qwen2.5-7B, Mistral-7B and the embedded SmolLM2; any other model starts at the MLP output
    projection at ~69% depth, a guess). Each candidate location is trained with LocFT-BF on the
    same sample (the [edit] recipe of locft.toml: lr, prompt format, replay; the batch shrunk
    to give at least 4 steps per epoch on the small sample), from the base weights, for up to
    --epochs epochs, and measured:

    \b
      capability      lm-eval (default wiki_bpb: bits per byte on 50 Wikipedia passages, the
                      most sensitive offline task) vs the base model; the worst task's drop
      locality        token-level agreement with the base model on the fixed probe prompts
      generalization  greedy answers to the facts' paraphrases (exact match)
      reliability     greedy answers to the facts' prompts (exact match)

    \b
    The pick, in the paper's order of priority:
      1. locations that learned the sample (reliability within 0.1 of the best);
      2. of those, the ones whose capability drop is within 0.01 of the smallest;
      3. of those, the ones whose locality is within 0.02 of the best;
      4. of those, the best generalization.

    Cost: one short training and evaluation per location (the embedded 135M model, one CPU
    thread, a busy 2-core machine: 4 layers x 30 facts x 15 epochs took 13 minutes, 35-150 s
    training and 75-110 s measuring per location; the defaults train about 3x longer);
    nothing goes into the store.
    With --write the pick is written to locft.toml's [edit] table (other lines kept, a
    `# locft locate` note above it), and the next round uses it; --no-write only prints.

    \b
    Examples:
      locft locate                                     # sample the store's active facts
      locft locate --facts examples/facts.jsonl --layers 3,8,15,22
      locft locate --template 'model.layers.{L}.mlp.up_proj.weight' --layers 4,8 --no-write
      locft locate --capability-tasks arc_easy,piqa --capability-limit 200 --write
    """
    import dataclasses

    from locft.cli.common import resolve_home
    from locft.config import load_config
    from locft.locate.record import record_location
    from locft.locate.report import note_for
    from locft.locate.sweep import LocateSettings
    from locft.policies.location import LocateTolerances

    home = resolve_home()
    config = load_config(home.root)
    tol_defaults = LocateTolerances()
    settings = LocateSettings(
        sample=sample, seed=seed, epochs=epochs,
        capability_tasks=capability_tasks if capability_tasks is not None else ("wiki_bpb",),
        capability_limit=capability_limit, probe_set_size=probe_set_size, exact_locality=exact_locality,
        tolerances=dataclasses.replace(
            tol_defaults,
            **{k: v for k, v in {"capability": capability_tolerance, "locality": locality_tolerance,
                                 "reliability": reliability_tolerance}.items() if v is not None},
        ),
        min_locality=config.gates.min_locality,
        scope=config.serve.scope,
    )
    facts = _load_facts(home, config, facts_file, data_format)

    from locft.engine.model_io import load_base
    from locft.engine.targets import choose_edit_location
    from locft.evaluation.capability import resolve_tasks
    from locft.locate.candidates import build_candidates
    from locft.locate.sweep import locate

    resolve_tasks(settings.capability_tasks)  # a typo is an error before the model loads
    if threads:
        import torch

        torch.set_num_threads(threads)
    click.echo(f"- loading the base model (home: {home.root})", err=True)
    loaded = load_base(config.model, home.root)
    current = choose_edit_location(loaded.model, config.edit, len(facts))
    candidates = build_candidates(loaded.model, current, templates, layers)
    click.echo(f"- {len(candidates)} candidate location(s); {min(sample, len(facts))} of {len(facts)} facts, "
               f"up to {epochs or config.edit.max_epochs} epochs each", err=True)
    bar = _LocateBar()
    try:
        report = locate(loaded, facts, candidates, config.edit, settings, cache_dir=home.cache_dir,
                        current=current, progress=bar)
    finally:
        bar.close()

    data = report.to_dict()
    if out is not None:
        from locft.atomic import atomic_write_text

        atomic_write_text(out, json.dumps(data, indent=2) + "\n")
        click.echo(f"wrote {out}", err=True)
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        print_report(report)
    from locft.errors import LocftError
    from locft.locate.record import location_lines

    winner = report.winner
    if winner is None:
        raise LocftError("no location qualified (every candidate failed); nothing to record")
    lines = location_lines(winner.template, winner.layers)
    out_stream = sys.stderr if as_json else sys.stdout
    click.echo(f"\nchosen: {winner.location}" + (" (the current location)" if winner.current else ""),
               file=out_stream)
    problem = report.why_not_recordable()
    if problem:
        if write:
            raise LocftError(f"not recorded: {problem}")
        click.echo(f"not recordable: {problem}", file=out_stream)
        return
    if write is None:
        write = sys.stdin.isatty() and sys.stdout.isatty() and not as_json and click.confirm(
            f"Write it to {home.config_path}?", default=False, err=True)
    if not write:
        click.echo(f"not written. To use it, put in [edit] of {home.config_path}:\n  " + "\n  ".join(lines)
                   + "\nor run again with --write.", file=out_stream)
        return
    changed = record_location(home.config_path, winner.template, winner.layers, note_for(report))
    if changed:
        click.echo(f"recorded in {home.config_path}: " + "; ".join(lines)
                   + " (applies from the next round; a running daemon picks it up then)", file=out_stream)
    else:
        click.echo(f"{home.config_path} already names this location; unchanged", file=out_stream)


def _load_facts(home: Any, config: Any, facts_file: Path | None, data_format: str) -> list[Any]:
    from locft.errors import InputFormatError, LocftError

    if facts_file is not None:
        from locft.readers import load_edit_facts

        if not facts_file.exists():
            raise InputFormatError(f"{facts_file}: no such file")
        facts = load_edit_facts(facts_file, data_format)
        if not facts:
            raise InputFormatError(f"{facts_file}: no facts in it")
        return facts
    from locft.store import Store

    if not home.db_path.exists() and config.store.database_url is None:
        raise LocftError(f"no store in {home.root}: pass --facts FILE, or `locft init` and add facts first")
    with Store.open(home, config.store, sweep_orphans=False) as store:
        facts = [e.fact for e in store.active_facts()]
    if not facts:
        raise LocftError("the store has no active facts to sample: add some, or pass --facts FILE")
    return facts
