"""Conversation history: encrypted at rest, owner-only, feedback linked to question ids."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from appliance.conversations import ConversationStore, Turn
from appliance.errors import InvalidInput, NotFound
from secure.errors import TamperedError
from tests.secure.helpers import make_home

NOW = 1_900_000_000
SECRET = "The merger code name is BLUEHERON"


@pytest.fixture
def store(tmp_path: Path) -> ConversationStore:
    home = make_home(tmp_path / "home", now=NOW)
    return ConversationStore.open(tmp_path, home)


def _turn(qid: str, text: str = SECRET) -> Turn:
    source = {"n": 1, "chunk_id": "doc-1:1:0", "doc_id": "doc-1", "title": "Plan"}
    return Turn(question=f"What about {qid}?", answer=text, question_id=qid, sources=(source,))


def test_round_trip_and_nothing_in_clear(store: ConversationStore, tmp_path: Path) -> None:
    conv = store.start("ann", "What about BLUEHERON?", now=NOW)
    store.add_turn("ann", conv, _turn("q1"), now=NOW + 1)
    store.add_turn("ann", conv, _turn("q2", "second"), now=NOW + 2)
    got = store.read("ann", conv)
    assert got.title == "What about BLUEHERON?" and [t.answer for t in got.turns] == [
        SECRET,
        "second",
    ]
    assert got.turns[0].sources[0]["chunk_id"] == "doc-1:1:0"
    assert [c.id for c in store.history("ann")] == [conv]
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("conversations.db*"))
    assert b"BLUEHERON" not in raw and b"merger" not in raw


def test_other_users_cannot_list_read_rate_or_delete(store: ConversationStore) -> None:
    conv = store.start("ann", "mine", now=NOW)
    store.add_turn("ann", conv, _turn("q1"), now=NOW)
    assert store.history("ben") == []
    for call in (
        lambda: store.read("ben", conv),
        lambda: store.add_turn("ben", conv, _turn("q9"), now=NOW),
        lambda: store.rate("ben", "q1", 1, now=NOW),
        lambda: store.delete("ben", conv),
        lambda: store.read("ann", "c-" + "0" * 24),
        lambda: store.read("ann", "../../etc"),
    ):
        with pytest.raises(NotFound):
            call()
    assert store.read("ANN", conv).turns[0].answer == SECRET  # names are case-insensitive


def test_feedback_is_stored_replaced_and_exported_without_text(store: ConversationStore) -> None:
    conv = store.start("ann", "t", now=NOW)
    store.add_turn("ann", conv, _turn("q1"), now=NOW)
    store.rate("ann", "q1", -1, now=NOW + 1, comment="wrong figure")
    store.rate("ann", "q1", 1, now=NOW + 2)
    assert store.read("ann", conv).turns[0].rating == 1
    rows = store.feedback_rows()
    assert rows == [
        {"question_id": "q1", "rating": 1, "mode": "extractive", "model": "", "at": NOW + 2}
    ]
    with pytest.raises(InvalidInput):
        store.rate("ann", "q1", 5, now=NOW)


def test_a_row_moved_to_another_user_does_not_open(store: ConversationStore) -> None:
    a = store.start("ann", "a", now=NOW)
    b = store.start("ben", "b", now=NOW)
    store.add_turn("ann", a, _turn("q1"), now=NOW)
    store.add_turn("ben", b, _turn("q2", "ben's"), now=NOW)
    with sqlite3.connect(store.path) as db:
        payload = db.execute("SELECT payload FROM turns WHERE question_id='q1'").fetchone()[0]
        db.execute("UPDATE turns SET payload=? WHERE question_id='q2'", (payload,))
    with pytest.raises(TamperedError):
        store.read("ben", b)


def test_delete_removes_turns(store: ConversationStore) -> None:
    conv = store.start("ann", "t", now=NOW)
    store.add_turn("ann", conv, _turn("q1"), now=NOW)
    store.delete("ann", conv)
    assert store.history("ann") == []
    with pytest.raises(NotFound):
        store.rate("ann", "q1", 1, now=NOW)
