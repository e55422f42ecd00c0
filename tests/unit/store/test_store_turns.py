"""Turns: started running, finished once, traced, listed, and numbered from 1."""

from __future__ import annotations

from datetime import UTC

import pytest

from fleet_rlm.identity import SessionKey
from fleet_rlm.store import Store, StoreConflictError


def test_create_turn_makes_the_session(store: Store, key: SessionKey) -> None:
    turn = store.create_turn(key, 1, "hello", client_message_id="msg-1")

    assert (turn.turn_index, turn.status, turn.content) == (1, "running", "hello")
    assert turn.client_message_id == "msg-1"
    assert (turn.answer, turn.error_code, turn.trace_id, turn.ended_at) == (None,) * 4
    assert turn.started_at.tzinfo is UTC
    assert store.get_session(key) is not None


def test_next_turn_index_starts_at_one(store: Store, key: SessionKey) -> None:
    assert store.next_turn_index(key) == 1
    store.create_turn(key, 1, "a")
    store.create_turn(key, 5, "b")

    assert store.next_turn_index(key) == 6


def test_a_turn_index_is_used_once(store: Store, key: SessionKey) -> None:
    store.create_turn(key, 1, "a")

    with pytest.raises(StoreConflictError) as raised:
        store.create_turn(key, 1, "b")

    assert raised.value.code == "duplicate_turn_index"
    assert [turn.content for turn in store.list_turns(key)] == ["a"]


def test_finish_turn_records_the_outcome(store: Store, key: SessionKey) -> None:
    store.create_turn(key, 1, "a")
    store.set_turn_trace(key, 1, "tr-1")

    finished = store.finish_turn(key, 1, "completed", answer="42")

    assert finished is not None
    assert (finished.status, finished.answer, finished.trace_id) == ("completed", "42", "tr-1")
    assert finished.ended_at is not None and finished.ended_at >= finished.started_at
    assert store.list_turns(key) == [finished]


def test_the_first_finish_wins(store: Store, key: SessionKey) -> None:
    store.create_turn(key, 1, "a")
    store.finish_turn(key, 1, "cancelled", error_code="cancelled", trace_id="tr-1")

    again = store.finish_turn(key, 1, "completed", answer="late")

    assert again is not None
    assert (again.status, again.answer, again.error_code) == ("cancelled", None, "cancelled")


def test_finish_turn_of_a_missing_turn_is_none(store: Store, key: SessionKey) -> None:
    assert store.finish_turn(key, 3, "error", error_code="model_error") is None
    assert store.set_turn_trace(key, 3, "tr") is False


def test_finish_turn_refuses_running(store: Store, key: SessionKey) -> None:
    store.create_turn(key, 1, "a")

    with pytest.raises(ValueError, match="completed"):
        store.finish_turn(key, 1, "running")  # type: ignore[arg-type]


def test_unfinished_turns_are_the_running_ones(store: Store, key: SessionKey) -> None:
    for index in (1, 2, 3):
        store.create_turn(key, index, f"t{index}")
    store.finish_turn(key, 2, "error", error_code="model_error")

    assert [turn.turn_index for turn in store.unfinished_turns(key)] == [1, 3]
    assert [turn.status for turn in store.list_turns(key)] == ["running", "error", "running"]
