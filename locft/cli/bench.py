"""`locft bench`: measure editing quality and speed on a benchmark file."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from locft.config import EditConfig, ModelConfig, default_home, load_config, parse_setting, with_settings
from locft.readers import FORMATS


def _table(record: dict[str, Any]) -> str:
    m, t = record["metrics"], record["training"]

    def f(x: Any) -> str:
        return "-" if x is None else f"{x:.3f}" if isinstance(x, float) else str(x)

    rows = [
        ("facts", record["n"]),
        ("pipeline", record["pipeline"]),
        ("location", record["config"]["location"]),
        ("prompt format / lr", f"{record['config']['prompt_format']} / {record['config']['lr']}"),
        ("reliability", m["reliability"]),
        ("generalization", m["generalization"]),
        ("locality (token)", m["locality_token"]),
        ("locality (exact)", m["locality_exact"]),
    ]
    u, scope = record.get("metrics_unscoped"), record.get("scope")
    if u is not None:
        rows.append(("unscoped rel / gen / tok / exact",
                     " / ".join(f(u[k]) for k in ("reliability", "generalization", "locality_token",
                                                  "locality_exact"))))
    if scope is not None:
        rows.append((f"scope ({scope['match']}, subjects {record.get('scope_subjects')})",
                     f"recall {f(scope['recall'])}, false positives {f(scope['false_positive_rate'])}"))
    rows += [
        ("epochs / converged", f"{t['epochs']} / {t['converged']}"),
        ("train seconds", t["train_seconds"]),
        ("seconds per epoch", t["seconds_per_epoch"]),
        ("edits x epochs / s", t["edits_x_epochs_per_second"]),
        ("peak memory (GiB)", record["peak_memory_bytes"] / 2**30),
    ]
    capability: dict[str, Any] = record.get("capability") or {}
    for task in capability["tasks"] if capability else ():
        base, edited = capability["base"][task], capability["edited"][task]
        pair = (capability.get("paired") or {}).get(task)
        moved = (f"; {pair['lost']} lost, {pair['gained']} gained of {pair['n_items']}, p {pair['p_worse']:.3g}"
                 if pair else "")
        rows.append((f"{task} (base -> edited)", f"{base:.3f} -> {edited:.3f} ({edited - base:+.3f}{moved})"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {f(v)}" for k, v in rows)


@click.command()
@click.option("--data", "data", type=click.Path(path_type=Path), required=True,
              help="Fact file: ZsRE / COUNTERFACT / WikiBigEdit JSON, or plain JSONL/JSON/CSV.")
@click.option("--n", "n", type=click.IntRange(min=1), default=100, show_default=True, help="Edit the first N facts.")
@click.option("--offset", type=click.IntRange(min=0), default=0, show_default=True, help="Skip this many facts first.")
@click.option("--format", "data_format", type=click.Choice(FORMATS), default="auto", show_default=True)
@click.option("--pipeline", type=click.Choice(["breadth-first", "depth-first"]), default=None,
              help="breadth-first is LocFT-BF; depth-first (each fact alone, in turn) is the baseline.")
@click.option("--location", default=None, help="Parameter template, e.g. 'model.layers.{L}.mlp.down_proj.weight'.")
@click.option("--layer", "layers", type=int, multiple=True,
              help="Layer(s) for {L}; repeat for several (default: measured per model and fact count).")
@click.option("--lr", type=float, default=None, help="Learning rate (default: measured per model).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None)
@click.option("--epochs", "max_epochs", type=click.IntRange(min=1), default=None, help="Maximum epochs.")
@click.option("--prompt-format", type=click.Choice(["auto", "chat", "raw"]), default=None)
@click.option("--forward-mode", type=click.Choice(["cached", "full", "reference"]), default=None,
              help="cached (fast, exact) | full | reference (the paper's loop).")
@click.option("--replay-ratio", type=click.FloatRange(min=0), default=None,
              help="Replay prompts (base model's own answers) per fact in each batch; 0 = off.")
@click.option("--replay-weight", type=click.FloatRange(min=0), default=None,
              help="Weight of the replay loss (default 1; the embedded model: 2 with its default "
                   "location from 1,000 facts on).")
@click.option("--compute-dtype", type=click.Choice(["auto", "float32", "bfloat16"]), default=None,
              help="Training matmuls: float32 (the paper) | bfloat16 (autocast) | auto (bf16 where native).")
@click.option("--seed", type=int, default=None)
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="Any [edit] key of locft.toml for this run, e.g. --set replay_pool_size=1000; repeatable. "
                   "The options above win over it.")
@click.option("--eval-sample", type=click.IntRange(min=1), default=None,
              help="Measure generalization and locality on a seeded sample of this many facts "
                   "(reliability always covers all N); generation dominates evaluation on a CPU.")
@click.option("--capability", "capability", default=None, metavar="TASKS",
              help="Also score general capability, base and edited, on these lm-eval tasks "
                   "(comma-separated, e.g. arc_easy,piqa: the gate's suite; all offline).")
@click.option("--capability-limit", type=click.IntRange(min=1), default=200, show_default=True,
              help="First N items of each capability task (quick; the gate scores 2000: "
                   "ARC-Easy and PIQA whole).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch CPU threads (default: all cores).")
@click.option("--scope", "scope", type=click.Choice(["gated", "always"]), default=None,
              help="gated: metrics through the version's scope (out-of-scope prompts get the base model) and "
                   "metrics_unscoped for the same tensors on every prompt; always: every prompt, no scope. "
                   "Default: [serve] scope.")
@click.option("--scope-subjects", type=click.Choice(["given", "found"]), default="given", show_default=True,
              help="found: ignore the data's subjects and find each fact's in its prompt, as for facts added "
                   "without one. The match itself: --set scope_match=subject|similarity|either.")
@click.option("--save-snapshot", type=click.Path(path_type=Path), default=None, metavar="DIR",
              help="Keep the trained tensors as a snapshot in this new directory (to ask, serve, export or "
                   "compare them later, e.g. with bench/snapshot_capability.py --paired).")
@click.option("--random-init", "random_init", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              default=None, metavar="CONFIG_JSON",
              help="Speed only: random weights of this Hugging Face config.json's shape on the configured device "
                   "(no weights needed; the embedded model's tokenizer). Epochs default to 3, the first is warm-up.")
@click.option("--compare-reference", is_flag=True, default=False,
              help="Speed only: the cached loop and the reference loop (the paper's) in one run; seconds per "
                   "edit-epoch of each, their ratio and peak memory (speed.* in the JSON).")
@click.option("--tokenizer", "tokenizer_dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="With --random-init: an HF tokenizer directory instead of the embedded model's.")
@click.option("--time-generation", "generate_prompts", type=click.IntRange(min=1), default=None, metavar="N",
              help="Speed only: also time warm greedy generation of N prompts at the device's default batch and at 32.")
@click.option("--profile-steps", "profile_steps", type=click.IntRange(min=1), default=None, metavar="N",
              help="Speed only: also profile N steps of each loop in a separate run: per step the wall time, "
                   "operators, host syncs and, on CUDA, kernels, host-to-device copies and the device's busy "
                   "share, and the costliest operators (speed.loops.*.profile in the JSON).")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Write the result record as JSON here.")
def bench(data: Path, n: int, offset: int, data_format: str, pipeline: str | None, location: str | None,
          layers: tuple[int, ...], lr: float | None, batch_size: int | None, max_epochs: int | None,
          prompt_format: str | None, forward_mode: str | None, replay_ratio: float | None,
          replay_weight: float | None, compute_dtype: str | None, seed: int | None, settings: tuple[str, ...],
          eval_sample: int | None, capability: str | None, capability_limit: int,
          threads: int | None, save_snapshot: Path | None, out: Path | None, scope: str | None = None,
          scope_subjects: str = "given", random_init: Path | None = None,
          compare_reference: bool = False, tokenizer_dir: Path | None = None,
          generate_prompts: int | None = None, profile_steps: int | None = None) -> None:
    """Edit N facts of a benchmark file into the base model and measure the result.

    Prints reliability, generalization and locality (by greedy generation and normalized exact
    match), training time and speed; --out writes the full record (metrics, loss per epoch,
    config, versions, peak memory) as JSON. Options left out come from locft.toml's [edit].

    \b
    Examples:
      locft bench --data examples/facts.jsonl --n 10
      locft bench --data examples/facts.jsonl --n 10 --pipeline depth-first
      locft bench --data examples/facts.jsonl --n 10 --layer 8 --lr 5e-3 --out results.json
      locft bench --data zsre_dev.json --n 1000 --scope always       # a ZsRE file of yours
      locft bench --data zsre_dev.json --n 1000 --scope-subjects found --set replay_pool_size=1000
      locft bench --data zsre_dev.json --n 200 --capability arc_easy,piqa
      locft bench --data zsre_dev.json --n 2000 --random-init bench/configs/llama3_8b.json --compare-reference
    """
    import dataclasses

    from tqdm import tqdm

    from locft.benchmark import BenchSpec, run_benchmark

    home = default_home()
    config = load_config(home)
    overrides: dict[str, Any] = {
        k: v for k, v in {
            "pipeline": pipeline, "location": location, "layers": tuple(layers) or None, "lr": lr,
            "batch_size": batch_size, "max_epochs": max_epochs, "prompt_format": prompt_format,
            "forward_mode": forward_mode, "seed": seed, "replay_ratio": replay_ratio,
            "replay_weight": replay_weight, "compute_dtype": compute_dtype,
        }.items() if v is not None
    }
    base_edit = with_settings(config.edit, dict(map(parse_setting, settings)), "edit") if settings else config.edit
    edit_cfg: EditConfig = dataclasses.replace(base_edit, **overrides)
    if threads:
        import torch

        torch.set_num_threads(threads)
    if random_init is not None or compare_reference or generate_prompts or profile_steps:
        _speed(data, n, offset, data_format, edit_cfg, config.model, home, random_init, compare_reference,
               tokenizer_dir, generate_prompts, profile_steps, max_epochs, out)
        return
    bar: tqdm | None = None

    def on_event(kind: str, payload: Any) -> None:
        nonlocal bar
        if kind == "phase":
            if bar is not None:
                bar.close()
                bar = None
            click.echo(f"- {payload}", err=True)
        elif kind == "train" and payload.phase == "train":
            total = payload.max_epochs if edit_cfg.pipeline == "breadth-first" else payload.max_epochs
            if bar is None:
                bar = tqdm(total=total, unit="epoch" if edit_cfg.pipeline == "breadth-first" else "fact",
                           file=sys.stderr, leave=False)
            bar.n = payload.epoch - (0 if payload.step == payload.steps_per_epoch else 1)
            bar.set_postfix(loss=f"{payload.loss:.4f}", edits_per_s=f"{payload.edits_per_second:.1f}")
            bar.refresh()
        elif kind in ("eval", "capability"):
            label, done, total = payload
            if bar is None or bar.desc != label:
                if bar is not None:
                    bar.close()
                bar = tqdm(total=total, desc=label, unit="choice" if kind == "capability" else "prompt",
                           file=sys.stderr, leave=False)
            bar.n = done
            bar.refresh()

    spec = BenchSpec(data=data, n=n, edit=edit_cfg, model=config.model, home=home,
                     data_format=data_format, offset=offset, eval_sample=eval_sample,
                     capability_tasks=tuple(t.strip() for t in (capability or "").split(",") if t.strip()),
                     capability_limit=capability_limit, save_snapshot=save_snapshot,
                     scope=scope or config.serve.scope, scope_subjects=scope_subjects)
    record = run_benchmark(spec, on_event)
    if bar is not None:
        bar.close()
    click.echo(_table(record))
    if out is not None:
        from locft.atomic import atomic_write_text

        atomic_write_text(out, json.dumps(record, indent=2) + "\n")
        click.echo(f"wrote {out}", err=True)


def _speed(data: Path, n: int, offset: int, data_format: str, edit_cfg: EditConfig, model: ModelConfig, home: Path,
           random_init: Path | None, compare_reference: bool, tokenizer_dir: Path | None,
           generate_prompts: int | None, profile_steps: int | None, max_epochs: int | None,
           out: Path | None) -> None:
    """The speed-only run (locft.speed): no evaluation; 3 epochs unless --epochs says otherwise."""
    import dataclasses

    from locft.speed import DEFAULT_SPEED_EPOCHS, SpeedSpec, run_speed, speed_table

    spec = SpeedSpec(data=data, n=n, offset=offset, data_format=data_format, model=model, home=home,
                     edit=dataclasses.replace(edit_cfg, max_epochs=max_epochs or DEFAULT_SPEED_EPOCHS),
                     random_init=random_init, tokenizer=tokenizer_dir, compare_reference=compare_reference,
                     generate_prompts=generate_prompts, profile_steps=profile_steps, seed=edit_cfg.seed)
    record = run_speed(spec, lambda kind, payload: click.echo(f"- {payload}", err=True) if kind == "phase" else None)
    click.echo(speed_table(record))
    if out is not None:
        from locft.atomic import atomic_write_text

        atomic_write_text(out, json.dumps(record, indent=2) + "\n")
        click.echo(f"wrote {out}", err=True)
