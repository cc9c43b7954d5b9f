"""locft.serving on the tiny model: versions, hot swap, batching, generation controls."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from locft.config import ModelConfig
from locft.engine.data import encode_prompt
from locft.engine.generate import greedy_generate
from locft.engine.model_io import LoadedModel, load_base
from locft.errors import NotFoundError, SnapshotError
from locft.home import Home
from locft.serving.generation import GenerationRequest, _holdback, encode_messages
from locft.serving.model_server import ModelServer
from locft.serving.served_version import ServingError, parse_model_name
from locft.store import Store
from tests.round_helpers import FACTS
from tests.serving_helpers import make_served_home


@pytest.fixture(scope="module")
def loaded(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    return load_base(ModelConfig(path=str(tiny_model_dir)), tmp_path_factory.mktemp("load-home"))


@pytest.fixture(scope="module")
def served_home(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, loaded: LoadedModel) -> Home:
    return make_served_home(tmp_path_factory.mktemp("serve") / "home", tiny_model_dir, loaded)


@pytest.fixture
def server(served_home: Home, loaded: LoadedModel) -> Iterator[ModelServer]:
    with Store.open(served_home) as store, ModelServer(loaded, store=store, prompt_format="raw") as srv:
        yield srv


def ids(loaded: LoadedModel, prompt: str) -> list[int]:
    return encode_prompt(loaded.tokenizer, prompt, "raw")


def test_hot_swap_serves_the_edit_and_restores_the_exact_base(server: ModelServer, loaded: LoadedModel) -> None:
    base_copy = {n: p.detach().clone() for n, p in loaded.model.named_parameters()}
    prompt, answer = FACTS[0]
    assert server.ask(prompt).version_id == 0
    base_answer = server.ask(prompt, max_tokens=8).text
    assert base_answer != answer
    server.activate(1)
    got = server.ask(prompt, max_tokens=8)
    assert (got.version_id, got.text, got.prompt_format, got.finish_reason) == (1, answer, "raw", "stop")
    assert all(server.ask(p, max_tokens=8).text == a for p, a in FACTS)
    # an explicit version answers regardless of the active one
    assert server.ask(prompt, version_id=0, max_tokens=8).text == base_answer
    server.activate(0)
    assert server.ask(prompt, max_tokens=8).text == base_answer
    server.close()
    # never written into: every parameter is bit-identical to before
    for n, p in loaded.model.named_parameters():
        assert torch.equal(p, base_copy[n]), n


def test_refuses_a_snapshot_of_another_base_or_corrupted_and_keeps_serving(served_home: Home,
                                                                            loaded: LoadedModel) -> None:
    import dataclasses

    with Store.open(served_home) as store:
        # the same weights under another fingerprint: what a home moved to another base model sees
        other_base = dataclasses.replace(loaded, fingerprint="f" * 64, source="another model")
        with ModelServer(other_base, store=store, prompt_format="raw") as srv:
            with pytest.raises(SnapshotError, match="was built on base model .* cannot be served on this base"):
                srv.activate(1)
            assert srv.active.id == 0
        with ModelServer(loaded, store=store, prompt_format="raw") as srv:
            srv.activate(1)
            with pytest.raises(NotFoundError):
                srv.activate(99)
            assert srv.active.id == 1 and srv.ask(FACTS[0][0]).text == FACTS[0][1]
            # a corrupted snapshot is refused (sha256 against the store's record)
            v1 = store.get_version(1)
            path = served_home.absolute(v1.snapshot_path or "") / "tensors.safetensors"
            saved = path.read_bytes()
            path.write_bytes(saved[:-1] + bytes([saved[-1] ^ 0xFF]))
            try:
                with pytest.raises(SnapshotError, match="corrupted"):
                    srv._load(1)
            finally:
                path.write_bytes(saved)
            assert srv.ask(FACTS[0][0]).text == FACTS[0][1]  # still serving the loaded copy


def test_batched_greedy_equals_one_by_one_and_the_engine(server: ModelServer, loaded: LoadedModel) -> None:
    server.activate(1)
    prompts = [p for p, _ in FACTS] + ["Hello there, how are", "The first month of the year is"]
    futures = [server.submit(GenerationRequest(ids(loaded, p), max_tokens=10)) for p in prompts]
    together = [f.result() for f in futures]
    assert server.max_batch_seen > 1  # they really ran batched
    alone = [server.generate(GenerationRequest(ids(loaded, p), max_tokens=10)) for p in prompts]
    assert [r.token_ids for r in together] == [r.token_ids for r in alone]
    for (_, answer), r in zip(FACTS, together):
        assert r.text.strip() == answer and r.finish_reason == "stop"


def test_matches_the_engine_generator_on_the_base(server: ModelServer, loaded: LoadedModel) -> None:
    prompts = [p for p, _ in FACTS]
    engine = greedy_generate(loaded, prompts, "raw", max_new_tokens=6)
    served = [server.generate(GenerationRequest(ids(loaded, p), max_tokens=6)) for p in prompts]
    for e, s in zip(engine, served):
        n = len(e.token_ids)
        assert list(s.token_ids[:n]) == list(e.token_ids)[: len(s.token_ids)]


def test_max_tokens_stop_strings_and_streaming(server: ModelServer, loaded: LoadedModel) -> None:
    prompt = ids(loaded, "Hello there, how are")
    full = server.generate(GenerationRequest(prompt, max_tokens=12))
    assert full.completion_tokens == 12 and full.finish_reason == "length"
    short = server.generate(GenerationRequest(prompt, max_tokens=3))
    assert short.completion_tokens == 3 and full.text.startswith(short.text)
    pieces: list[str] = []
    streamed = server.generate(GenerationRequest(prompt, max_tokens=12, on_delta=pieces.append))
    assert "".join(pieces) == streamed.text == full.text and len(pieces) > 1
    # stop strings: cut before the stop, never streamed, finish_reason "stop"
    server.activate(1)
    edited = ids(loaded, FACTS[0][0])
    assert server.generate(GenerationRequest(edited, max_tokens=12)).text == " Birnin Zana"
    pieces = []
    cut = server.generate(GenerationRequest(edited, max_tokens=12, stop=("Za", "nowhere"), on_delta=pieces.append))
    assert (cut.text, cut.finish_reason, "".join(pieces)) == (" Birnin ", "stop", " Birnin ")


def test_holdback_never_streams_a_partial_stop_string() -> None:
    assert _holdback("abc ST", ("STOP",)) == 2
    assert _holdback("abc", ("STOP",)) == 0
    assert _holdback("ab\ufffd", ()) == 1


def test_logprobs_of_prompt_and_completion_match_a_forward_pass(server: ModelServer, loaded: LoadedModel) -> None:
    prompt = ids(loaded, FACTS[1][0])
    r = server.generate(GenerationRequest(prompt, max_tokens=4, logprobs=2, echo_logprobs=True))
    assert r.prompt_logprobs is not None and r.logprobs is not None
    assert [t.token_id for t in r.prompt_logprobs] == prompt and r.prompt_logprobs[0].logprob is None
    full = prompt + r.token_ids
    with torch.no_grad():
        lp = torch.log_softmax(loaded.model(torch.tensor([full])).logits[0].float(), -1)
    expected = [float(lp[i - 1, full[i]]) for i in range(1, len(full))]
    got = [t.logprob for t in r.prompt_logprobs[1:]] + [t.logprob for t in r.logprobs]
    assert got == pytest.approx(expected, abs=1e-4)
    # greedy: the chosen token is the best of the top list
    assert all(t.top[0][0] == t.token_id for t in r.logprobs)


def test_chat_messages_encode_exactly_like_trained_chat_prompts(loaded: LoadedModel) -> None:
    prompt = "Who wrote Hamlet?"
    assert encode_messages(loaded.tokenizer, [{"role": "user", "content": prompt}]) == \
        encode_prompt(loaded.tokenizer, prompt, "chat")


def test_model_names_and_request_checks(server: ModelServer, loaded: LoadedModel) -> None:
    assert parse_model_name("locft") is None and parse_model_name("locft-v12") == 12
    for bad in ("gpt-4", "locft-v", "locft-vx", "locft-v-1"):
        with pytest.raises(ServingError):
            parse_model_name(bad)
    with pytest.raises(ServingError, match="outside the vocabulary"):
        server.generate(GenerationRequest([10**7], max_tokens=1))
    with pytest.raises(ServingError, match="context is 256 tokens"):
        server.generate(GenerationRequest([1] * 250, max_tokens=10))


def test_a_scoped_version_answers_its_facts_and_leaves_other_prompts_on_the_base(
        tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, loaded: LoadedModel) -> None:
    home = make_served_home(tmp_path_factory.mktemp("scoped") / "home", tiny_model_dir, loaded, scoped=True)
    unrelated = ["The first month of the year is", "Water boils at", "My favourite food is"]
    with Store.open(home) as store, ModelServer(loaded, store=store, prompt_format="raw") as srv:
        base = [srv.ask(p, max_tokens=8).text for p in unrelated]
        srv.activate(1)
        assert srv.active.scope is not None
        # submitted together, so in-scope and out-of-scope rows share batches
        futures = [srv.submit(GenerationRequest(ids(loaded, p), max_tokens=8))
                   for p in [f for f, _ in FACTS] + unrelated]
        texts = [f.result(60).text.strip() for f in futures]
        assert texts[:len(FACTS)] == [a for _, a in FACTS]
        assert texts[len(FACTS):] == base
        assert srv.max_batch_seen > 1
    with Store.open(home) as store, ModelServer(loaded, store=store, prompt_format="raw", scope="always") as srv:
        srv.activate(1)
        assert srv.active.scope is None  # serve.scope = "always": the tensors answer every prompt
        assert srv.ask(FACTS[0][0], max_tokens=8).text == FACTS[0][1]
