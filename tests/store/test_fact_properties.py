"""Random sequences of add / replace / edit / retract against a dictionary model of the rules."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from locft.errors import ConflictError, StoreError
from locft.facts import EditFact
from locft.store import Store
from locft.text import normalize_answer, normalize_prompt
from tests.store.conftest import backend_home

# few distinct questions and answers, spelled in ways that normalize alike, so that
# duplicates and conflicts happen often
PROMPTS = ["Who is it?", "who is it", "WHO IS IT?!", "Where is it?", "where  is it ."]
ANSWERS = ["Paris", "paris.", "The Paris", "Rome", "rome"]

op = st.one_of(
    st.tuples(st.just("add"), st.sampled_from(PROMPTS), st.sampled_from(ANSWERS), st.booleans()),
    st.tuples(st.just("edit"), st.integers(1, 4), st.sampled_from(ANSWERS), st.just(False)),
    st.tuples(st.just("retract"), st.integers(1, 4), st.just(""), st.just(False)),
)


# `backend` is only the parameter's name (sqlite or postgresql): nothing in it to reset between examples
@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(op, min_size=1, max_size=12))
def test_store_follows_the_fact_rules(backend: str, ops: list[tuple[str, object, str, bool]]) -> None:
    with tempfile.TemporaryDirectory() as tmp, backend_home(Path(tmp), backend) as home:
        with Store.open(home, create=True) as store:
            model: dict[int, tuple[str, str] | None] = {}  # fact id -> (prompt key, answer key) | retracted
            revisions: dict[int, int] = {}

            def active_with(key: str) -> list[int]:
                return [f for f, v in model.items() if v is not None and v[0] == key]

            for kind, target, answer, replace in ops:
                if kind == "add":
                    prompt = str(target)
                    key, akey = normalize_prompt(prompt), normalize_answer(answer)
                    hits = active_with(key)
                    same = [f for f in hits if model[f][1] == akey]  # type: ignore[index]
                    try:
                        result = store.add_fact(EditFact(prompt, answer), replace=replace)
                    except ConflictError:
                        assert hits and not same and not replace
                        continue
                    if same:
                        assert (result.status, result.fact_id) == ("duplicate", same[0])
                    elif hits:
                        assert replace and (result.status, result.fact_id) == ("revised", hits[0])
                        model[hits[0]] = (key, akey)
                        revisions[hits[0]] += 1
                    else:
                        assert result.status == "added" and result.fact_id not in model
                        model[result.fact_id] = (key, akey)
                        revisions[result.fact_id] = 1
                else:
                    fid = int(target)  # type: ignore[call-overload]
                    try:
                        if kind == "edit":
                            changed = store.revise_fact(fid, answer=answer).changed
                        else:
                            store.retract_fact(fid)
                            changed = True
                    except StoreError:  # unknown, or already retracted
                        assert model.get(fid) is None
                        continue
                    state = model[fid]
                    assert state is not None
                    if changed:
                        revisions[fid] += 1
                    model[fid] = None if kind == "retract" else (state[0], normalize_answer(answer))

            active = store.active_facts()
            assert {e.fact_id: (normalize_prompt(e.fact.prompt), normalize_answer(e.fact.answer)) for e in active} == {
                f: v for f, v in model.items() if v is not None
            }
            keys = [normalize_prompt(e.fact.prompt) for e in active]
            assert len(keys) == len(set(keys)), "two active facts ask the same question"
            for fid, n in revisions.items():
                assert store.get_fact(fid).fact.revisions == n
