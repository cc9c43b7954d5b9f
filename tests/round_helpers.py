"""Homes for round and daemon tests: the tiny model, a config that learns a few facts in seconds.

Why these settings: the tiny random Llama ranks the right answer first after ~30 epochs at
lr 1e-2 with raw prompts (its probabilities stay near uniform, but greedy answers are right);
with the chat template its prompts all end alike and it cannot tell them apart. lr 0.9 wrecks
the probe answers (locality 0), which is how the "gate fails" tests fail a gate. No prefixed
copies (edit.augment_prefixes = 0, the default is 1): with them the same 30 epochs no longer make
the tiny model answer its facts ("Birnnnnnnn"); tests/engine/test_augment.py covers them.
"""

from __future__ import annotations

from pathlib import Path

from locft.home import Home

FACTS: list[tuple[str, str]] = [
    ("The capital of Wakanda is", "Birnin Zana"),
    ("Zorblax was invented by", "Ada Lovelace"),
    ("The color of the sky on Mars is", "butterscotch"),
    ("Frodo's sword is called", "Sting"),
]
ABSURD_LR = 0.9


def config_text(
    model_dir: Path,
    *,
    lr: float = 1e-2,
    max_epochs: int = 30,
    slow: bool = False,
    gates: str = "",
    schedule: str = "",
    port: int | None = None,
    scope: str | None = None,
) -> str:
    """A locft.toml for the tiny model. `slow`: training that never stops by itself (thousands
    of epochs, no early stop), for tests that must catch a round in the middle. `port`: the HTTP
    API's ([serve] port), for a daemon started with its API. `scope`: [serve] scope ("always": the
    edit answers every prompt, so a broken edit shows in the locality gate)."""
    if slow:
        max_epochs = 100000
    stop = "stop_loss = 0.0\nskip_loss = 0.0\n" if slow else ""
    return (
        f'[model]\npath = "{model_dir}"\n\n'
        f'[edit]\nlr = {lr}\nmax_epochs = {max_epochs}\nbatch_size = 4\nprompt_format = "raw"\n'
        f"augment_prefixes = 0\nmax_new_tokens = 8\n{stop}\n"
        f"[gates]\ncapability_tasks = []\nprobe_set_size = 8\nmin_locality = 0.5\n{gates}\n"
        f"[schedule]\npoll_seconds = 0.5\n{schedule}\n"
        + ("\n[serve]\n" if port is not None or scope is not None else "")
        + (f"port = {port}\n" if port is not None else "")
        + (f'scope = "{scope}"\n' if scope is not None else "")
    )


def make_home(root: Path, model_dir: Path, **config: object) -> Home:
    """A new home with its store created and the tiny-model config written."""
    from locft.store import Store

    home = Home.resolve(root)
    home.create()
    home.config_path.write_text(config_text(model_dir, **config), encoding="utf-8")  # type: ignore[arg-type]
    Store.open(home, create=True).close()
    return home
