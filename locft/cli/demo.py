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
    [edit] settings of locft.toml; nothing is written to the store. Takes about a minute on CPU.
    """
    from tqdm import tqdm

    from locft.engine.data import resolve_prompt_format
    from locft.engine.generate import greedy_generate
    from locft.engine.model_io import load_base
    from locft.engine.train import edit
    from locft.engine.weights import applied
    from locft.text import exact_match

    home = default_home()
    config = load_config(home)
    click.echo(f"Loading the base model (home: {home}; the first run converts the embedded GGUF once)...")
    t0 = time.perf_counter()
    loaded = load_base(config.model, home)
    click.echo(f"  {loaded.source}, loaded in {time.perf_counter() - t0:.1f} s")
    cfg = config.edit if epochs is None else dataclasses.replace(config.edit, max_epochs=epochs)
    fmt = resolve_prompt_format(cfg.prompt_format, loaded.tokenizer)
    prompts = [f.prompt for f in DEMO_FACTS] + [p for f in DEMO_FACTS for p in f.paraphrases] + [p.prompt for p in UNRELATED]
    before = greedy_generate(loaded, prompts, fmt, cfg.max_new_tokens)

    bar = tqdm(total=cfg.max_epochs, unit="epoch", desc="LocFT-BF", file=sys.stderr)

    def progress(p) -> None:  # type: ignore[no-untyped-def]
        if p.phase == "train" and p.step == p.steps_per_epoch:
            bar.update(1)
            bar.set_postfix(loss=f"{p.loss:.4f}")

    result = edit(loaded, DEMO_FACTS, cfg, progress=progress)
    bar.close()
    with applied(loaded.model, result.tensors):
        after = greedy_generate(loaded, prompts, fmt, cfg.max_new_tokens)

    targets = [f.answer for f in DEMO_FACTS] + [f.answer for f in DEMO_FACTS for _ in f.paraphrases] + [None] * len(UNRELATED)
    kinds = ["edit"] * len(DEMO_FACTS) + ["paraphrase"] * (len(prompts) - len(DEMO_FACTS) - len(UNRELATED)) + ["unrelated"] * len(UNRELATED)
    click.echo(f"\nEdited {result.location.describe()} ({fmt} prompts, lr {result.lr}) in "
               f"{result.train_seconds:.1f} s, {len(result.epochs)} epochs, final loss {result.epochs[-1].mean_loss:.4f}\n")
    for kind, prompt, b, a, target in zip(kinds, prompts, before, after, targets):
        if target is not None:
            mark = "ok" if exact_match(a.answer, target) else "--"
        else:
            mark = "ok" if exact_match(a.answer, b.answer) else "changed"
        click.echo(f"[{kind}] {prompt}")
        click.echo(f"    before: {b.answer!r}")
        click.echo(f"    after:  {a.answer!r}   ({mark}{'' if target is None else f', target {target!r}'})")
