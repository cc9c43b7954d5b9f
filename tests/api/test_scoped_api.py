"""A scoped version over the HTTP API, driven by the real `openai` client: prompts about its facts
get the edit, every other prompt the base model's answer, in completions, streaming and logprobs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from locft.api import ApiServer, start_api_server
from locft.engine.model_io import LoadedModel
from tests.round_helpers import FACTS
from tests.serving_helpers import make_served_home

UNRELATED = ["The first month of the year is", "Water boils at"]


@pytest.fixture(scope="module")
def scoped_api(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path,
               loaded: LoadedModel) -> Iterator[ApiServer]:
    home = make_served_home(tmp_path_factory.mktemp("scoped-api") / "home", tiny_model_dir, loaded, scoped=True)
    server = start_api_server(home, port=0, loaded=loaded, poll_s=0.2)
    yield server
    server.shutdown()


def test_in_scope_prompts_get_the_edit_and_others_the_base_through_the_openai_client(scoped_api: ApiServer) -> None:
    c = openai.OpenAI(base_url=scoped_api.openai_base_url, api_key="unused", max_retries=0, timeout=60)
    for prompt, answer in FACTS:
        r = c.completions.create(model="locft", prompt=prompt, max_tokens=8)
        assert r.choices[0].text.strip() == answer and r.model == "locft-v1"
    for prompt in UNRELATED:
        edited = c.completions.create(model="locft", prompt=prompt, max_tokens=8, logprobs=2)
        base = c.completions.create(model="locft-v0", prompt=prompt, max_tokens=8, logprobs=2)
        assert edited.model == "locft-v1"
        assert edited.choices[0].text == base.choices[0].text
        assert edited.choices[0].logprobs.token_logprobs == base.choices[0].logprobs.token_logprobs
    stream = c.completions.create(model="locft", prompt=FACTS[1][0], max_tokens=8, stream=True)
    assert "".join(chunk.choices[0].text for chunk in stream).strip() == FACTS[1][1]
    # echo + logprobs (what lm-eval's local-completions sends) of an unrelated text: the base's numbers
    echoed = [c.completions.create(model=m, prompt=UNRELATED[0], max_tokens=1, echo=True, logprobs=1)
              for m in ("locft", "locft-v0")]
    assert echoed[0].choices[0].logprobs.token_logprobs == echoed[1].choices[0].logprobs.token_logprobs
