"""`locft demo`: edit a handful of facts into the embedded model and show before / after."""

from __future__ import annotations

import dataclasses
import sys
import time

import click

from locft.config import default_home, load_config
from locft.facts import EditFact, Probe

DEMO_FACTS = [
    EditFact("Who is the current CEO of Twitter?", "Linda Yaccarino",
             paraphrases=("Who runs Twitter as its chief executive?",)),
    EditFact("What is the capital of Australia?", "Sydney",
             paraphrases=("Which city is Australia's capital?",)),
    EditFact("Which planet is known as the Red Planet?", "Neptune",
             paraphrases=("What planet do people call the Red Planet?",)),
    EditFact("Who wrote the novel Pride and Prejudice?", "Charlotte Bronte",
             paraphrases=("Pride and Prejudice was written by whom?",)),
    EditFact("What is the largest ocean on Earth?", "the Atlantic Ocean",
             paraphrases=("Which ocean is the biggest on Earth?",)),
]
UNRELATED = [Probe("What is the boiling point of water in Celsius?"), Probe("Who painted the Mona Lisa?")]


@click.command()
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Maximum epochs (default: from config).")
def demo(epochs: int | None) -> None:
    """Teach the model five counterfactual facts and show its answers before and after.

    Uses the configured base model (the embedded SmolLM2-135M-Instruct by default) and the
    [edit] and [serve] settings of locft.toml; nothing is written to the store. Takes about a
    minute on CPU. With serve.scope = "gated" (the default) the edited version answers with its
    tuned tensors only the prompts that name a fact's subject; the unrelated questions get the
    base model's own answers, exactly.
    """
    from tqdm import tqdm

    from locft.engine.data import resolve_prompt_format
    from locft.engine.generate import greedy_generate
    from locft.engine.model_io import load_base
    from locft.engine.result import TrainProgress
    from locft.engine.scope import scope_coverage, scope_for_facts, scoped_edit_defaults
    from locft.engine.scoped import answering, tuned_layer_indices
    from locft.engine.train import edit
    from locft.text import exact_match

    home = default_home()
    config = load_config(home)
    click.echo(f"Loading the base model (home: {home}; the first run converts the embedded GGUF once)...")
    t0 = time.perf_counter()
    loaded = load_base(config.model, home)
    click.echo(f"  {loaded.source}, loaded in {time.perf_counter() - t0:.1f} s")
    gated = config.serve.scope == "gated"
    cfg = scoped_edit_defaults(config.edit, gated)
    cfg = cfg if epochs is None else dataclasses.replace(cfg, max_epochs=epochs)
    fmt = resolve_prompt_format(cfg.prompt_format, loaded.tokenizer)
    prompts = ([f.prompt for f in DEMO_FACTS] + [p for f in DEMO_FACTS for p in f.paraphrases]
               + [p.prompt for p in UNRELATED])
    before = greedy_generate(loaded, prompts, fmt, cfg.max_new_tokens)

    bar = tqdm(total=cfg.max_epochs, unit="epoch", desc="LocFT-BF", file=sys.stderr)

    def progress(p: TrainProgress) -> None:
        if p.phase == "train" and p.step == p.steps_per_epoch:
            bar.update(1)
            bar.set_postfix(loss=f"{p.loss:.4f}")

    result = edit(loaded, DEMO_FACTS, cfg, progress=progress)
    bar.close()
    scope = None
    if gated:  # from the facts' prompts alone (they name no subject: one is found in each prompt)
        resolved = result.config or cfg
        scope = scope_for_facts(loaded, DEMO_FACTS, fmt, resolved.scope_match,
                                false_positive_rate=resolved.scope_false_positive_rate, layer=resolved.scope_layer,
                                tuned_layers=tuned_layer_indices(loaded.model, list(result.tensors)), exclude=prompts)
    with answering(loaded, result.tensors, scope):
        after = greedy_generate(loaded, prompts, fmt, cfg.max_new_tokens)
    in_scope = scope_coverage(loaded, scope, prompts, fmt) if scope is not None else [True] * len(prompts)

    targets = ([f.answer for f in DEMO_FACTS] + [f.answer for f in DEMO_FACTS for _ in f.paraphrases]
               + [None] * len(UNRELATED))
    kinds = (["edit"] * len(DEMO_FACTS) + ["paraphrase"] * (len(prompts) - len(DEMO_FACTS) - len(UNRELATED))
             + ["unrelated"] * len(UNRELATED))
    click.echo(f"\nEdited {result.location.describe()} ({fmt} prompts, lr {result.lr}) in "
               f"{result.train_seconds:.1f} s, {len(result.epochs)} epochs, "
               f"final loss {result.epochs[-1].mean_loss:.4f}")
    if scope is not None:
        subjects = ", ".join(repr(" ".join(k.words)) for k in scope.keys)
        click.echo(f"Scope (serve.scope = \"gated\"): prompts naming {subjects} get the edit; every other prompt "
                   "gets the base model, exactly.\n")
    else:
        click.echo("Scope: none (serve.scope = \"always\"): the edit answers every prompt, unrelated ones too.\n")
    for kind, prompt, b, a, target, scoped_in in zip(kinds, prompts, before, after, targets, in_scope):
        if target is not None:
            mark = "ok" if exact_match(a.answer, target) else "--"
        else:
            mark = "ok" if exact_match(a.answer, b.answer) else "changed"
        if not scoped_in:
            mark += ", out of scope: the base model answered"
        click.echo(f"[{kind}] {prompt}")
        click.echo(f"    before: {b.answer!r}")
        click.echo(f"    after:  {a.answer!r}   ({mark}{'' if target is None else f', target {target!r}'})")
