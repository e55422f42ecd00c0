"""Events: appended in one transaction with rising seqs, read back in order."""

from __future__ import annotations

from datetime import UTC

import pytest

from fleet_rlm.identity import SessionKey
from fleet_rlm.store import EventRecord, NewEvent, Store, StoreConflictError


def test_events_round_trip(store: Store, key: SessionKey) -> None:
    frame = {"type": "answer", "text": "héllo ✓", "nested": {"n": [1, 2.5, None, True]}}
    store.append_events(key, [NewEvent(1, "chat", "answer", frame, turn_index=1)])

    [event] = store.events_after(key, 0)

    assert (event.seq, event.turn_index, event.channel, event.kind) == (1, 1, "chat", "answer")
    assert event.frame == frame
    assert event.created_at.tzinfo is UTC


def test_events_after_filters_and_limits(store: Store, key: SessionKey) -> None:
    store.append_events(
        key,
        [NewEvent(seq, "chat" if seq % 2 else "execution", f"k{seq}") for seq in range(1, 11)],
    )

    assert [e.seq for e in store.events_after(key, 0)] == list(range(1, 11))
    assert [e.seq for e in store.events_after(key, 7)] == [8, 9, 10]
    assert [e.seq for e in store.events_after(key, 2, limit=3)] == [3, 4, 5]
    assert [e.seq for e in store.events_after(key, 0, channel="execution")] == [2, 4, 6, 8, 10]
    assert [e.seq for e in store.events_after(key, 3, limit=2, channel="chat")] == [5, 7]
    assert store.last_seq(key) == 10


def test_last_seq_is_zero_without_events(store: Store, key: SessionKey) -> None:
    assert store.last_seq(key) == 0
    store.append_events(key, [])
    assert store.last_seq(key) == 0


def test_records_read_back_can_be_appended_elsewhere(store: Store, key: SessionKey) -> None:
    store.append_events(key, [NewEvent(1, "chat", "a", {"v": 1})])
    copied: list[EventRecord] = store.events_after(key, 0)
    elsewhere = SessionKey(key.workspace_id, key.user_id, "copy")

    store.append_events(elsewhere, copied)

    assert [e.frame for e in store.events_after(elsewhere, 0)] == [{"v": 1}]


def test_a_duplicate_seq_is_rejected(store: Store, key: SessionKey) -> None:
    store.append_events(key, [NewEvent(1, "chat", "a"), NewEvent(2, "chat", "b")])

    with pytest.raises(StoreConflictError) as raised:
        store.append_events(key, [NewEvent(2, "chat", "again"), NewEvent(3, "chat", "c")])

    assert raised.value.code == "duplicate_event_seq"
    assert [e.kind for e in store.events_after(key, 0)] == ["a", "b"]


def test_a_seq_behind_the_stored_ones_is_rejected(store: Store, key: SessionKey) -> None:
    store.append_events(key, [NewEvent(5, "chat", "a")])

    with pytest.raises(StoreConflictError):
        store.append_events(key, [NewEvent(3, "chat", "old")])

    assert store.last_seq(key) == 5


def test_a_batch_must_rise(store: Store, key: SessionKey) -> None:
    with pytest.raises(ValueError, match="strictly increasing"):
        store.append_events(key, [NewEvent(2, "chat", "a"), NewEvent(2, "chat", "b")])
    with pytest.raises(ValueError, match="strictly increasing"):
        store.append_events(key, [NewEvent(0, "chat", "a")])
    with pytest.raises(ValueError, match="channel"):
        store.append_events(key, [NewEvent(1, "debug", "a")])  # type: ignore[arg-type]

    assert store.last_seq(key) == 0


def test_sessions_keep_separate_seqs(store: Store, key: SessionKey) -> None:
    other = SessionKey(key.workspace_id, key.user_id, "other")
    store.append_events(key, [NewEvent(1, "chat", "a")])
    store.append_events(other, [NewEvent(1, "chat", "b")])

    assert [e.kind for e in store.events_after(key, 0)] == ["a"]
    assert [e.kind for e in store.events_after(other, 0)] == ["b"]
