"""`locft ask` and `locft serve`: thin shells over locft.serving and locft.api. No torch at import."""

from __future__ import annotations

import signal
import threading
from typing import Any

import click

from locft.cli.common import echo_json, json_option, resolve_home


def _print_answer(answer: dict[str, Any], label: bool) -> None:
    text = answer["text"] or "(empty answer)"
    if label:
        click.echo(f"{answer['model']} ({answer['prompt_format']}): {text}")
    else:
        click.echo(text)


@click.command("ask", short_help="Answer a prompt with the promoted version (or --version).")
@click.argument("prompt")
@click.option("--version", "version_id", type=click.IntRange(min=0), default=None,
              help="Answer with this version instead of the promoted one (0: the base model).")
@click.option("--chat/--no-chat", default=None,
              help="Ask through the chat template or as raw text. Default: the way the version's facts "
                   "were trained (edit.prompt_format), so you see what its edits changed.")
@click.option("--max-tokens", type=click.IntRange(1, 4096), default=32, show_default=True,
              help="Generate at most this many tokens.")
@click.option("--compare", is_flag=True, help="Also show the base model's answer (version 0).")
@click.option("--local", is_flag=True, help="Load the model here even when a daemon or `locft serve` runs.")
@json_option
def ask(prompt: str, version_id: int | None, chat: bool | None, max_tokens: int, compare: bool, local: bool,
        as_json: bool) -> None:
    """Answer PROMPT with the promoted version (greedy).

    When a daemon (or `locft serve`) runs for this home, it answers: nothing is loaded here.
    Otherwise the base model and the version's snapshot are loaded in this process (seconds).

    \b
    Examples:
      locft ask "The capital of Wakanda is"
      locft ask "The capital of Wakanda is" --compare
      locft ask "Who wrote Hamlet?" --version 3 --max-tokens 16
    """
    from locft.api.client import call, discover_api
    from locft.config import load_config
    from locft.errors import DaemonError

    home = resolve_home()
    config = load_config(home.root)
    body = {"prompt": prompt, "version": version_id, "chat": chat, "max_tokens": max_tokens, "compare": compare}
    url = None if local else discover_api(home)
    result: dict[str, Any] | None = None
    if url is not None:
        try:
            result = call(url, "/locft/ask", body, token=config.serve.api_token)
        except DaemonError as exc:
            click.echo(f"warning: {exc}; loading the model here instead", err=True)
    if result is None:
        result = _ask_locally(prompt, version_id, chat, max_tokens, compare, quiet=as_json)
    if as_json:
        echo_json(result)
        return
    _print_answer(result, label=compare)
    if compare:
        _print_answer(result["base"], label=True)


def _ask_locally(prompt: str, version_id: int | None, chat: bool | None, max_tokens: int, compare: bool,
                 quiet: bool) -> dict[str, Any]:
    from locft.cli.common import open_store
    from locft.config import load_config
    from locft.serving.model_server import load_server

    home = resolve_home()
    config = load_config(home.root)
    if not quiet:
        click.echo("(no server running for this home: loading the model here)", err=True)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the answer is the output; no weight-loading bars
    with open_store() as store:
        server = load_server(store=store, config=config, version_id=version_id)
        try:
            answer = server.ask(prompt, version_id=version_id, chat=chat, max_tokens=max_tokens)
            out = answer.to_dict()
            if compare:
                base = server.ask(prompt, version_id=0, chat=answer.prompt_format == "chat", max_tokens=max_tokens)
                out["base"] = base.to_dict()
        finally:
            server.close()
    return out


@click.command("serve", short_help="Run the OpenAI-compatible HTTP API in the foreground.")
@click.option("--host", default=None, help="Address to listen on (default: [serve] host, 127.0.0.1). "
                                           "A non-loopback address needs serve.api_token.")
@click.option("--port", type=click.IntRange(0, 65535), default=None,
              help="Port (default: [serve] port, 8765; 0 picks a free one).")
@click.option("--poll", type=click.FloatRange(min=0.1), default=1.0, show_default=True,
              help="Seconds between checks of the promoted version (hot swap).")
@click.option("--access-log/--no-access-log", default=True, show_default=True,
              help="Print one line per request on stderr (the `locft.api.access` logger, INFO).")
def serve(host: str | None, port: int | None, poll: float, access_log: bool) -> None:
    """Serve the promoted version over HTTP until Ctrl-C (without the daemon).

    OpenAI-compatible: point any client at http://HOST:PORT/v1 with model "locft" (the promoted
    version) or "locft-v<N>". A promotion or rollback is picked up within a second, without a
    restart and without failing a request. `locft ask` uses this server while it runs. The
    dashboard is at http://HOST:PORT/, the API's description at /openapi.json, Prometheus
    metrics at /metrics.

    \b
    Examples:
      locft serve
      locft serve --port 9000
      OPENAI_BASE_URL=http://127.0.0.1:8765/v1 OPENAI_API_KEY=x python my_client.py
    """
    import logging

    from locft.api import start_api_server
    from locft.api.client import remove_api_info, write_api_info
    from locft.config import load_config

    home = resolve_home()
    config = load_config(home.root)
    access = logging.getLogger("locft.api.access")
    if access_log and not access.isEnabledFor(logging.INFO):
        access.setLevel(logging.INFO)  # a foreground server shows its requests, as web servers do
    click.echo("loading the base model...", err=True)
    api = start_api_server(home, config, host=host, port=port, poll_s=poll)
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        write_api_info(home, api.url)
        click.echo(f"serving {api.model_server.active.name} at {api.url} (OpenAI base URL {api.openai_base_url}, "
                   f"dashboard {api.url}/); Ctrl-C stops")
        try:
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        remove_api_info(home)
        api.shutdown()
    click.echo("stopped", err=True)
