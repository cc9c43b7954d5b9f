from __future__ import annotations

import pytest

from locft.errors import ConflictError, InvalidFactError, NotFoundError, StoreError
from locft.facts import MAX_ANSWER_CHARS, MAX_PROMPT_CHARS, EditFact, Probe
from locft.readers import FactRecord, RowError
from locft.store import Store
from tests.store.helpers import new_version


def snapshot_of(store: Store) -> tuple[object, ...]:
    """Everything a failed write must leave unchanged."""
    return (
        [(f.revision_id, f.fact) for f in store.active_facts()],
        [f.fact_id for f in store.list_facts("all", limit=None)],
        [e.id for e in store.list_events(limit=None)],
    )


def test_add_fact_gets_a_stable_id_and_a_first_revision(store: Store) -> None:
    fact = EditFact("Who is the CEO of Acme?", "Jane Doe", subject="Acme", paraphrases=("Acme's CEO is",),
                    probes=(Probe("The capital of France is", "Paris"), Probe("2+2=")))
    result = store.add_fact(fact, source="https://acme.example", tags=("corp", "ceo"), author="ann")
    assert result.status == "added"
    history = store.get_fact(result.fact_id)
    assert history.fact.status == "active" and history.fact.revisions == 1
    rev = history.revisions[0]
    assert (rev.prompt, rev.answer, rev.subject) == ("Who is the CEO of Acme?", "Jane Doe", "Acme")
    assert rev.paraphrases == ("Acme's CEO is",)
    assert rev.probes == (Probe("The capital of France is", "Paris"), Probe("2+2="))
    assert (rev.source, rev.tags, rev.author, rev.revision) == ("https://acme.example", ("corp", "ceo"), "ann", 1)
    assert rev.created_at.tzinfo is not None
    [entry] = store.active_facts()
    assert entry.fact_id == result.fact_id and entry.revision_id == rev.revision_id
    assert entry.fact == fact and entry.fact.fact_id == str(result.fact_id)


def test_whitespace_is_stripped_at_the_edge(store: Store) -> None:
    result = store.add_fact(EditFact("  Who?\n", " Me "))
    assert (result.revision.prompt, result.revision.answer) == ("Who?", "Me")


def test_exact_duplicate_is_reported_and_not_added(store: Store) -> None:
    first = store.add_fact(EditFact("Who is the CEO of Acme?", "Jane Doe"))
    again = store.add_fact(EditFact("who is the  CEO of acme", "jane doe."))  # normalized: the same
    assert again.status == "duplicate" and again.fact_id == first.fact_id
    assert len(store.active_facts()) == 1
    assert store.get_fact(first.fact_id).fact.revisions == 1


def test_conflict_is_refused_naming_the_existing_fact(store: Store) -> None:
    first = store.add_fact(EditFact("Who is the CEO of Acme?", "Jane Doe"))
    before = snapshot_of(store)
    with pytest.raises(ConflictError, match=rf"fact {first.fact_id}\b.*'Jane Doe'.*--replace"):
        store.add_fact(EditFact("Who is the CEO of Acme", "John Roe"))
    assert snapshot_of(store) == before


def test_replace_writes_a_revision_of_the_conflicting_fact(store: Store) -> None:
    first = store.add_fact(EditFact("Who is the CEO of Acme?", "Jane Doe"))
    result = store.add_fact(EditFact("Who is the CEO of Acme?", "John Roe"), replace=True, author="bob")
    assert result.status == "revised" and result.fact_id == first.fact_id
    assert result.previous_answer == "Jane Doe"
    history = store.get_fact(first.fact_id)
    assert [r.answer for r in history.revisions] == ["Jane Doe", "John Roe"]
    assert [r.revision for r in history.revisions] == [1, 2]
    assert [f.fact.answer for f in store.active_facts()] == ["John Roe"]


def test_revise_writes_a_new_revision_and_keeps_the_old(store: Store) -> None:
    fid = store.add_fact(EditFact("Q?", "A", paraphrases=("Q again?",))).fact_id
    result = store.revise_fact(fid, answer="B", author="ann", note="changed")
    assert result.changed and result.revision.revision == 2
    assert result.revision.paraphrases == ("Q again?",)  # carried over
    assert store.revise_fact(fid, answer="B").changed is False  # same content: nothing written
    history = store.get_fact(fid)
    assert [(r.answer, r.note) for r in history.revisions] == [("A", None), ("B", "changed")]


def test_revise_refuses_a_prompt_that_another_fact_has(store: Store) -> None:
    store.add_fact(EditFact("Q1?", "A"))
    second = store.add_fact(EditFact("Q2?", "B")).fact_id
    with pytest.raises(ConflictError, match="already fact 1"):
        store.revise_fact(second, prompt="q1")


def test_retract_writes_a_tombstone(store: Store) -> None:
    fid = store.add_fact(EditFact("Q?", "A")).fact_id
    tomb = store.retract_fact(fid, author="ann", reason="wrong")
    assert tomb.retracted and tomb.revision == 2 and tomb.note == "wrong"
    assert store.active_facts() == []
    assert store.get_fact(fid).fact.status == "retracted"
    assert [f.fact_id for f in store.list_facts("retracted")] == [fid]
    with pytest.raises(StoreError, match="already retracted"):
        store.retract_fact(fid)
    with pytest.raises(StoreError, match="retracted"):
        store.revise_fact(fid, answer="B")
    # the question is free again: a new fact, not a conflict
    assert store.add_fact(EditFact("Q?", "C")).fact_id != fid


def test_unknown_fact_ids_are_not_found(store: Store) -> None:
    for call in (lambda: store.get_fact(99), lambda: store.retract_fact(99), lambda: store.revise_fact(99, answer="x")):
        with pytest.raises(NotFoundError, match="no fact with id 99"):
            call()


@pytest.mark.parametrize(
    "fact, message",
    [
        (EditFact("", "A"), "prompt is empty"),
        (EditFact("   \n", "A"), "prompt is empty"),
        (EditFact("Q?", "  "), "answer is empty"),
        (EditFact("Q" * (MAX_PROMPT_CHARS + 1), "A"), "limit is"),
        (EditFact("Q?", "A" * (MAX_ANSWER_CHARS + 1)), "limit is"),
        (EditFact("Q\x00?", "A"), "control character"),
        (EditFact("Q?", "A\x1b[31m"), "control character"),
        (EditFact("Q\ud800?", "A"), "not valid UTF-8"),
        (EditFact("Q?", "A", probes=(Probe(""),)), "probe 1 prompt is empty"),
    ],
)
def test_bad_facts_are_refused_and_nothing_changes(store: Store, fact: EditFact, message: str) -> None:
    store.add_fact(EditFact("existing?", "yes"))
    before = snapshot_of(store)
    with pytest.raises(InvalidFactError, match=message):
        store.add_fact(fact)
    assert snapshot_of(store) == before


def test_bad_tags_are_refused(store: Store) -> None:
    with pytest.raises(InvalidFactError, match="tag"):
        store.add_fact(EditFact("Q?", "A"), tags=("ok", "bad\x07"))
    assert store.active_facts() == []


def test_pending_is_active_minus_promoted_plus_retractions(store: Store) -> None:
    keep, revise, retract = (store.add_fact(EditFact(f"Q{i}?", f"A{i}")).fact_id for i in range(3))
    assert {p.kind for p in store.pending_facts()} == {"added"}
    v1 = new_version(store, "v1", passed=True)
    store.promote(v1.id)
    assert store.pending_facts() == []
    store.revise_fact(revise, answer="new")
    store.retract_fact(retract)
    added = store.add_fact(EditFact("Q9?", "A9")).fact_id
    pending = {p.fact_id: p.kind for p in store.pending_facts()}
    assert pending == {revise: "revised", retract: "retracted", added: "added"}
    assert keep not in pending
    counts = store.count_facts()
    assert (counts.active, counts.retracted, counts.pending) == (3, 1, 3)
    assert {f.fact_id for f in store.list_facts("pending")} == {revise, retract, added}
    newest_first = sorted(pending, reverse=True)
    page = store.list_facts("pending", limit=2)
    assert [f.fact_id for f in page] == newest_first[:2]
    assert [f.pending for f in page] == [pending[f.fact_id] for f in page]
    assert [f.fact_id for f in store.list_facts("pending", limit=1, offset=1)] == [newest_first[1]]
    assert [f.fact_id for f in store.list_facts("pending", search="q9")] == [added]
    assert store.list_facts("pending", search="q9", offset=1) == []


def test_list_and_search(store: Store) -> None:
    store.add_fact(EditFact("Who leads Acme?", "Jane"), tags=("x",))
    store.add_fact(EditFact("Capital of Atlantis?", "Poseidonia", subject="Atlantis"))
    store.add_fact(EditFact("100% sure?", "yes"))
    assert [f.current.answer for f in store.list_facts()] == ["yes", "Poseidonia", "Jane"]  # newest first
    assert [f.current.answer for f in store.list_facts(search="ACME")] == ["Jane"]
    assert [f.current.answer for f in store.list_facts(search="atlantis")] == ["Poseidonia"]
    assert [f.current.answer for f in store.list_facts(search="100%")] == ["yes"]  # % is literal
    assert [f.current.answer for f in store.list_facts(search="0%s")] == []
    assert len(store.list_facts(limit=2)) == 2
    assert [f.current.answer for f in store.list_facts(limit=1, offset=1)] == ["Poseidonia"]


def test_fact_events_form_the_audit_log(store: Store) -> None:
    fid = store.add_fact(EditFact("Q?", "A"), author="ann").fact_id
    store.revise_fact(fid, answer="B", author="bob")
    store.retract_fact(fid, author="cat", reason="gone")
    events = store.list_events(fact_id=fid)
    assert [(e.kind, e.actor) for e in events] == [
        ("fact.retracted", "cat"), ("fact.revised", "bob"), ("fact.added", "ann"),
    ]
    assert events[1].payload["previous_answer"] == "A" and events[0].payload["reason"] == "gone"
    assert [e.kind for e in store.list_events(kind="fact.")] == ["fact.retracted", "fact.revised", "fact.added"]


def test_revisions_and_events_are_append_only_in_the_database(store: Store) -> None:
    from sqlalchemy import text

    store.add_fact(EditFact("Q?", "A"))
    for sql in ("UPDATE fact_revision SET answer = 'B'", "DELETE FROM fact_revision", "DELETE FROM event"):
        with pytest.raises(Exception, match="append-only"):
            with store._engine.begin() as conn:
                conn.execute(text(sql))
    assert store.active_facts()[0].fact.answer == "A"


# ---- import ---------------------------------------------------------------------------------


def rec(line: int, prompt: str, answer: str) -> FactRecord:
    return FactRecord(line, EditFact(prompt, answer))


def test_import_adds_in_one_go_and_reports_duplicates(store: Store) -> None:
    store.add_fact(EditFact("Existing?", "yes"))
    seen: list[int] = []
    summary = store.import_facts(
        [rec(1, "A?", "a"), rec(2, "B?", "b"), rec(3, "existing", "Yes."), rec(4, "a", "A")],
        author="imp", origin="f.jsonl", progress=seen.append,
    )
    assert summary.written
    assert [i.line for i in summary.added] == [1, 2]
    assert [(i.line, i.fact_id) for i in summary.duplicates] == [(3, 1), (4, summary.added[0].fact_id)]
    assert seen and seen[-1] == 2
    assert len(store.active_facts()) == 3
    assert store.list_events(kind="facts.imported")[0].payload["added"] == 2


def test_import_is_all_or_nothing(store: Store) -> None:
    store.add_fact(EditFact("Existing?", "yes"))
    before = snapshot_of(store)
    summary = store.import_facts(
        [rec(1, "A?", "a"), rec(3, "Existing?", "no"), rec(4, "B?", ""), rec(5, "A", "other")],
        [RowError(2, "malformed JSON: Expecting value")],
    )
    assert not summary.written
    assert [i.line for i in summary.invalid] == [2, 4]
    assert [(i.line, i.fact_id) for i in summary.conflicts] == [(3, 1), (5, None)]
    assert "line 1 of this file" in summary.conflicts[1].message
    assert summary.added == [] and snapshot_of(store) == before


def test_import_skip_invalid_keeps_the_valid_rows(store: Store) -> None:
    summary = store.import_facts([rec(1, "A?", "a"), rec(2, "B?", "\x01"), rec(3, "A?", "z")], skip_invalid=True)
    assert summary.written and [i.line for i in summary.added] == [1]
    assert [i.line for i in summary.invalid] == [2] and [i.line for i in summary.conflicts] == [3]
    assert [f.fact.answer for f in store.active_facts()] == ["a"]


def test_import_replace_revises_existing_and_earlier_rows(store: Store) -> None:
    fid = store.add_fact(EditFact("Existing?", "yes")).fact_id
    summary = store.import_facts(
        [rec(1, "existing", "no"), rec(2, "New?", "one"), rec(3, "new", "two")], replace=True
    )
    assert summary.written and summary.conflicts == []
    assert [i.line for i in summary.added] == [2] and [i.line for i in summary.revised] == [1, 3]
    assert [r.answer for r in store.get_fact(fid).revisions] == ["yes", "no"]
    new_id = summary.added[0].fact_id
    assert new_id is not None
    assert [r.answer for r in store.get_fact(new_id).revisions] == ["one", "two"]
    assert sorted(f.fact.answer for f in store.active_facts()) == ["no", "two"]
