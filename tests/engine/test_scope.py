"""Scoped versions: out-of-scope rows get the base model exactly, in-scope rows the edit."""

from __future__ import annotations

import torch

from locft.engine.data import encode_prompt
from locft.engine.generate import greedy_generate
from locft.engine.model_io import LoadedModel
from locft.engine.scope import Scope, build_scope
from locft.engine.scoped import answering
from locft.engine.subjects import find_subject, name_parts, normalize_words, subject_keys
from locft.engine.weights import applied
from locft.facts import EditFact

DOWN = "model.layers.2.mlp.down_proj.weight"
GATE = "model.layers.2.mlp.gate_proj.weight"
NORM = "model.layers.3.post_attention_layernorm.weight"


def _edit_tensors(loaded: LoadedModel, names: tuple[str, ...] = (DOWN,)) -> dict[str, torch.Tensor]:
    params = dict(loaded.model.named_parameters())
    g = torch.Generator().manual_seed(1)
    return {n: params[n].detach() + 0.5 * torch.randn(params[n].shape, generator=g) for n in names}


def _batch(loaded: LoadedModel, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    tok = loaded.tokenizer
    enc = [encode_prompt(tok, p, "raw") for p in prompts]
    width = max(map(len, enc))
    ids = torch.full((len(enc), width), tok.pad_token_id)
    mask = torch.zeros((len(enc), width), dtype=torch.long)
    for i, seq in enumerate(enc):
        ids[i, width - len(seq):] = torch.tensor(seq)
        mask[i, width - len(seq):] = 1
    return ids, mask


def _scope(facts: list[EditFact]) -> Scope:
    keys, _ = subject_keys(facts)
    return Scope("subject", keys)


FACTS = [EditFact("What is the capital of Australia?", "Sydney", subject="Australia"),
         EditFact("Who wrote Kiss Me, Kate?", "Someone", subject="Kiss Me, Kate"),
         EditFact("Where is the Stable Block located at Wedderburn Castle?", "Berwickshire",
                  subject="Stable Block located at Wedderburn Castle")]


def test_out_of_scope_rows_get_the_base_logits_exactly_in_a_mixed_batch(tiny: LoadedModel) -> None:
    prompts = ["Who painted the Mona Lisa?", "Australia's capital city is", "What is the boiling point of water?"]
    ids, mask = _batch(tiny, prompts)
    tensors = _edit_tensors(tiny, (DOWN, GATE, NORM))
    with torch.no_grad():
        base = tiny.model(input_ids=ids, attention_mask=mask).logits
        with applied(tiny.model, tensors):
            edited = tiny.model(input_ids=ids, attention_mask=mask).logits
        with answering(tiny, tensors, _scope(FACTS)) as stats:
            scoped = tiny.model(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(scoped[0], base[0]) and torch.equal(scoped[2], base[2])
    assert not torch.allclose(base[1], edited[1], atol=1e-3)  # the edit changes this row...
    torch.testing.assert_close(scoped[1], edited[1], atol=1e-5, rtol=1e-4)  # ...and the scope keeps it
    assert stats.to_dict() == {"rows": 3, "in_scope": 1}
    after = tiny.model(input_ids=ids, attention_mask=mask).logits  # hooks gone: the base again
    assert torch.equal(after, base)


def test_generation_keeps_each_rows_decision_over_the_kv_cache(tiny: LoadedModel) -> None:
    prompts = ["Who painted the Mona Lisa?", "Tell me about Australia", "Name a river"]
    tensors = _edit_tensors(tiny)
    base = greedy_generate(tiny, prompts, "raw", max_new_tokens=8)
    with applied(tiny.model, tensors):
        edited = greedy_generate(tiny, prompts, "raw", max_new_tokens=8)
    with answering(tiny, tensors, _scope(FACTS)):
        scoped = greedy_generate(tiny, prompts, "raw", max_new_tokens=8)
    assert scoped[0].token_ids == base[0].token_ids and scoped[2].token_ids == base[2].token_ids
    assert scoped[1].token_ids == edited[1].token_ids


def test_always_applies_the_tensors_to_every_prompt(tiny: LoadedModel) -> None:
    ids, mask = _batch(tiny, ["Who painted the Mona Lisa?"])
    tensors = _edit_tensors(tiny)
    with torch.no_grad(), applied(tiny.model, tensors):
        edited = tiny.model(input_ids=ids, attention_mask=mask).logits
    with torch.no_grad(), answering(tiny, tensors, None):
        always = tiny.model(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(always, edited)


def test_subject_matching_whole_words_case_punctuation_and_invisible_characters() -> None:
    facts = [EditFact("Who founded Apple?", "x", subject="Apple"),
             EditFact("Where is Reedy Glacier?", "x", subject="Reedy Glacier"),
             EditFact("Who wrote Kiss Me, Kate?", "x", subject="Kiss Me, Kate"),
             EditFact("What does Reedy Glacier flow into?", "y", subject="Reedy Glacier")]  # two facts, one subject
    scope = _scope(facts)
    assert scope.names_a_subject("apple's first product")
    assert scope.names_a_subject("APPLE!")
    assert scope.names_a_subject("Tell me about Ap\u200bple")  # a zero-width space is no disguise
    assert not scope.names_a_subject("Is a pineapple a fruit?")  # a substring of another word
    assert not scope.names_a_subject("Applesauce recipes")
    assert scope.names_a_subject("kiss me kate, the musical")
    assert scope.names_a_subject("Between Reedy Glacier and Apple, which is colder?")  # two subjects
    assert not scope.names_a_subject("Mount Erebus, in")  # same relation, another subject
    assert not scope.names_a_subject("Reedy is a surname")


def test_a_subject_made_of_several_names_matches_a_rephrasing_that_names_them_all() -> None:
    # WikiBigEdit's descriptive subjects are rephrased around their names
    assert name_parts("Cluny Castle's Stable Block") == (("cluny", "castle"), ("stable", "block"))
    assert name_parts("The Anchorage located at 8 Bingham Terrace in Dundee") == (
        ("anchorage",), ("8", "bingham", "terrace"), ("dundee",))
    for one_name in ("Frank Lampard", "Bank of England", "Kiss Me, Kate", "The Dresden Dolls", "knight anole",
                     "Apple II series"):
        assert name_parts(one_name) == ()  # matched as a whole, as before
    scope = _scope([EditFact("In what county is Cluny Castle's Stable Block?", "x",
                             subject="Cluny Castle's Stable Block"),
                    EditFact("Where is the Anchorage?", "y",
                             subject="The Anchorage located at 8 Bingham Terrace in Dundee")])
    assert scope.names_a_subject("In what county can the Stable Block of Cluny Castle be found?")
    assert scope.names_a_subject("Which county houses The Anchorage at 8 Bingham Terrace, Dundee?")
    assert not scope.names_a_subject("Where is Cluny Castle?")  # one of the names is not the subject
    assert not scope.names_a_subject("Which county is the Stable Block at Wedderburn Castle in?")
    assert not scope.names_a_subject("Who lives at 8 Bingham Terrace in Dundee?")


def test_a_fact_without_subject_gets_one_found_in_its_prompt() -> None:
    assert find_subject("What is the capital of Australia?") == "Australia"
    assert find_subject("Which river system contains Charity Creek?") == "Charity Creek"
    assert find_subject("Who is the CEO of the Bank of England?") == "Bank of England"
    assert find_subject("Who is the current CEO of Twitter?") == "Twitter"
    assert find_subject("Which war did USS Bermuda (1861) fight in?") == "USS Bermuda"
    assert find_subject('Who sang "hey jude"?') == "hey jude"
    assert find_subject("what is the boiling point of mercury") == "mercury"
    # among several names, the one fewest of the fact set's prompts share; a lone fact keeps the last
    located = [EditFact(f"In which historic county is {house} located in Edinburgh?", "Midlothian")
               for house in ("4 Heriot Row", "10 Scotland Street", "30 Grassmarket")]
    keys, _ = subject_keys(located)
    assert [" ".join(k.words) for k in keys] == ["4 heriot row", "10 scotland street", "30 grassmarket"]
    assert not Scope("subject", keys).names_a_subject("Which castle stands in Edinburgh?")
    assert [k.words for k in subject_keys(located[:1])[0]] == [("edinburgh",)]
    worded = [EditFact(f"What category does {thing} fall under?", "x") for thing in ("planishing", "knurling")]
    assert [k.words for k in subject_keys(worded)[0]] == [("planishing",), ("knurling",)]
    keys, counts = subject_keys([EditFact("What is the capital of Australia?", "Sydney")])
    assert keys[0].words == ("australia",) and keys[0].source == "found" and counts["given_subject_not_in_prompt"] == 0
    keys, counts = subject_keys([EditFact("Where is it?", "x", subject="Narnia")])
    assert counts["given_subject_not_in_prompt"] == 1 and [k.source for k in keys] == ["given", "found"]
    assert normalize_words("Ｋｉｓｓ  Me,Kate") == ("kiss", "me", "kate")


def test_a_subject_that_names_nothing_is_replaced_by_the_one_found_in_the_prompt() -> None:
    # WikiBigEdit holds a fact whose subject is "In": taken as given, every prompt with "in" would be in scope
    facts = [EditFact('In which country is the TV Drama "Lipstick" set?', "x", subject="In"),
             EditFact("Where is it?", "y", subject="it")]
    keys, counts = subject_keys(facts)
    assert counts["given_subject_unusable"] == 2 and all(k.source == "found" for k in keys)
    scope = Scope("subject", keys)
    assert scope.names_a_subject("Where was Lipstick filmed?")
    assert not scope.names_a_subject("In which county is Harewood House situated?")
    assert scope.names_a_subject("where is it") and not scope.names_a_subject("is it raining?")  # the whole prompt


def test_the_chat_system_prompt_is_never_a_reason_to_be_in_scope(tiny: LoadedModel) -> None:
    facts = [EditFact("Who trained SmolLM?", "Nobody", subject="Hugging Face")]
    scope = build_scope(tiny, facts, "chat")
    tok = tiny.tokenizer
    asked = str(tok.decode(encode_prompt(tok, "What is 2 + 2?", "chat"), skip_special_tokens=True))
    if "hugging face" in " ".join(normalize_words(asked)):  # the template names it
        assert scope.boilerplate
    assert not scope.names_a_subject(asked)
    about = str(tok.decode(encode_prompt(tok, "Where is Hugging Face based?", "chat"), skip_special_tokens=True))
    assert scope.names_a_subject(about)


def test_similarity_scope_calibrates_its_threshold_on_generic_prompts(tiny: LoadedModel) -> None:
    facts = [EditFact(f"What is the capital of Country{i}?", "X") for i in range(6)]
    generic = [f"Write a short poem about the number {i}." for i in range(40)]
    scope = build_scope(tiny, facts, "raw", "similarity", calibration_prompts=generic, false_positive_rate=0.05,
                        layer=0, tuned_layers=(2,))
    assert scope.uses_similarity and scope.threshold is not None and scope.layer == 0
    tensors = _edit_tensors(tiny)
    prompts = [facts[0].prompt] + generic[:10]
    ids, mask = _batch(tiny, prompts)
    with torch.no_grad(), answering(tiny, tensors, scope) as stats:
        tiny.model(input_ids=ids, attention_mask=mask)
    assert stats.rows == len(prompts)
    assert 1 <= stats.in_scope <= 3  # the fact's own prompt is in; at most a few generic ones


def test_the_scope_round_trips_through_a_snapshot_and_corruption_is_refused(tmp_path, tiny: LoadedModel) -> None:
    import json

    import pytest

    from locft.engine.snapshot import load_snapshot, save_snapshot
    from locft.errors import SnapshotError

    facts = [EditFact(f"What is the capital of Country{i}?", "X") for i in range(4)] + FACTS
    generic = [f"Write a short poem about the number {i}." for i in range(30)]
    scope = build_scope(tiny, facts, "raw", "either", calibration_prompts=generic, layer=0, tuned_layers=(2,))
    tensors = _edit_tensors(tiny)
    info = save_snapshot(tmp_path, "v1", tensors, tiny.fingerprint, scope=scope)
    manifest = json.loads((info.path / "manifest.json").read_text())
    assert manifest["scope"]["summary"]["facts"] == len(facts)
    snap = load_snapshot(info.path, info.sha256)
    assert snap.scope is not None and snap.scope.match == "either"
    assert snap.scope.keys == scope.keys and snap.scope.threshold == scope.threshold
    assert snap.scope.embeddings is not None and torch.equal(snap.scope.embeddings, scope.embeddings)
    assert any(k.parts for k in snap.scope.keys)
    for text in ("Tell me about Australia", "Who painted the Mona Lisa?", "Wedderburn Castle's Stable Block"):
        assert snap.scope.names_a_subject(text) == scope.names_a_subject(text)

    (info.path / "scope.json").write_text((info.path / "scope.json").read_text().replace("australia", "austria"))
    with pytest.raises(SnapshotError, match="scope.*corrupted"):
        load_snapshot(info.path, info.sha256)
    (info.path / "scope.json").unlink()
    with pytest.raises(SnapshotError, match="scope.*missing"):
        load_snapshot(info.path, info.sha256)


def test_a_snapshot_without_scope_loads_as_every_prompt(tmp_path, tiny: LoadedModel) -> None:
    from locft.engine.snapshot import load_snapshot, save_snapshot

    info = save_snapshot(tmp_path, "v0", _edit_tensors(tiny), tiny.fingerprint)
    assert load_snapshot(info.path).scope is None


def test_token_locality_decides_on_the_probe_not_on_its_fed_back_continuation(tiny: LoadedModel) -> None:
    from locft.engine.generate import Generation
    from locft.evaluation.editing import token_agreement

    tok = tiny.tokenizer
    probe = "Who painted the Mona Lisa?"
    continuation = tuple(tok(" It hangs in Australia", add_special_tokens=False).input_ids)  # names a subject
    fed_back = [Generation("", "", continuation)]
    tensors = _edit_tensors(tiny)
    base = token_agreement(tiny, [probe], fed_back, "raw")
    with answering(tiny, tensors, _scope(FACTS)) as stats:
        scoped = token_agreement(tiny, [probe], fed_back, "raw")
    assert scoped == base and stats.in_scope == 0  # as when the version generated it: the base answered
    with answering(tiny, tensors, _scope(FACTS)) as stats:  # asked as one text, it is about Australia
        ids = encode_prompt(tok, probe, "raw") + list(continuation)
        tiny.model(input_ids=torch.tensor([ids]))
    assert stats.in_scope == 1
