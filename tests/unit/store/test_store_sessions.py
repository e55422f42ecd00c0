"""Sessions: created once per identity tuple, even by racing processes; listed; deleted with all."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC

from sqlalchemy import func, select

from fleet_rlm.identity import SessionKey
from fleet_rlm.store import NewEvent, SessionRecord, Store
from fleet_rlm.store.schema import DocumentRow, EventRow, SessionRow, TurnRow


def test_ensure_session_creates_once(store: Store, key: SessionKey) -> None:
    first = store.ensure_session(key)
    second = store.ensure_session(key)

    assert first == second
    assert (first.workspace_id, first.user_id, first.session_id) == (
        key.workspace_id,
        key.user_id,
        key.session_id,
    )
    assert (first.turn_count, first.last_seq, first.title) == (0, 0, None)
    assert first.created_at.tzinfo is UTC and first.updated_at.tzinfo is UTC
    assert store.get_session(key) == first


def test_get_session_of_an_unknown_key_is_none(store: Store, key: SessionKey) -> None:
    assert store.get_session(key) is None


def test_racing_ensure_session_calls_get_one_row(
    make_store: Callable[[], Store], store: Store
) -> None:
    racers = [make_store(), make_store()]
    keys = [SessionKey("ws", "user", f"race-{n}") for n in range(10)]
    results: dict[int, list[SessionRecord]] = {n: [] for n in range(len(racers))}
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(racers))

    def run(n: int) -> None:
        try:
            for race_key in keys:
                barrier.wait(timeout=30)
                results[n].append(racers[n].ensure_session(race_key))
        except BaseException as error:  # re-raised below, in the test's thread
            errors.append(error)
            barrier.abort()

    threads = [threading.Thread(target=run, args=(n,)) for n in range(len(racers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert errors == []
    assert [record.id for record in results[0]] == [record.id for record in results[1]]
    with store.engine.connect() as connection:
        assert connection.scalar(select(func.count()).select_from(SessionRow)) == len(keys)


def test_session_record_counts_turns_and_events(store: Store, key: SessionKey) -> None:
    store.create_turn(key, 1, "hello")
    store.create_turn(key, 2, "again")
    store.append_events(key, [NewEvent(1, "chat", "a"), NewEvent(7, "chat", "b")])

    record = store.get_session(key)

    assert record is not None
    assert (record.turn_count, record.last_seq) == (2, 7)
    assert record.updated_at >= record.created_at


def test_list_sessions_pages_by_id(store: Store) -> None:
    keys = [SessionKey("ws", "user", f"s{n}") for n in range(5)]
    created = [store.ensure_session(k) for k in keys]
    store.ensure_session(SessionKey("ws", "someone-else", "s0"))
    store.ensure_session(SessionKey("other-ws", "user", "s0"))

    first = store.list_sessions("ws", "user", limit=2)
    second = store.list_sessions("ws", "user", limit=2, after_id=first[-1].id)
    third = store.list_sessions("ws", "user", limit=2, after_id=second[-1].id)
    rest = store.list_sessions("ws", "user", limit=2, after_id=third[-1].id)

    assert first + second + third == created
    assert [len(first), len(second), len(third), len(rest)] == [2, 2, 1, 0]


def test_delete_session_cascades(store: Store, key: SessionKey) -> None:
    store.create_turn(key, 1, "hello")
    store.append_events(key, [NewEvent(1, "chat", "a"), NewEvent(2, "execution", "b")])
    store.put_document(key, "notes.txt", "some text")
    keep = SessionKey(key.workspace_id, key.user_id, "keep-me")
    store.create_turn(keep, 1, "stay")
    store.append_events(keep, [NewEvent(1, "chat", "a")])
    store.put_document(keep, "notes.txt", "kept")

    assert store.delete_session(key) is True
    assert store.delete_session(key) is False

    assert store.get_session(key) is None
    assert store.list_turns(key) == []
    assert store.events_after(key, 0) == []
    assert store.document_names(key) == []
    with store.engine.connect() as connection:
        for table in (TurnRow, EventRow, DocumentRow):
            assert connection.scalar(select(func.count()).select_from(table)) == 1
    assert store.document_names(keep) == ["notes.txt"]


def test_another_identity_sees_and_touches_nothing(
    store: Store, key: SessionKey, other_user_key: SessionKey
) -> None:
    store.create_turn(key, 1, "mine", client_message_id="m-1")
    store.append_events(key, [NewEvent(1, "chat", "a", {"x": 1}, turn_index=1)])
    store.put_document(key, "secret.txt", "mine")
    other_workspace = SessionKey("ws-2", key.user_id, key.session_id)

    for stranger in (other_user_key, other_workspace):
        assert store.get_session(stranger) is None
        assert store.list_turns(stranger) == []
        assert store.unfinished_turns(stranger) == []
        assert store.next_turn_index(stranger) == 1
        assert store.events_after(stranger, 0) == []
        assert store.last_seq(stranger) == 0
        assert store.list_documents(stranger) == []
        assert store.get_document(stranger, "secret.txt") is None
        assert store.document_names(stranger) == []
        assert store.finish_turn(stranger, 1, "cancelled") is None
        assert store.set_turn_trace(stranger, 1, "tr-stolen") is False
        assert store.delete_session(stranger) is False
        assert store.list_sessions(stranger.workspace_id, stranger.user_id) == []

    turn = store.list_turns(key)[0]
    assert (turn.status, turn.trace_id) == ("running", None)
    assert store.get_document(key, "secret.txt") is not None
