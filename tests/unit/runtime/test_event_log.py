"""``EventLog`` over a real SQLite ``Store``: numbering, the in-memory window, waiting, restart."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleet_rlm.identity import SessionKey
from fleet_rlm.runtime.event_log import EventLog
from fleet_rlm.runtime.frames import CHAT, EXECUTION
from fleet_rlm.store import Store, StoreConflictError

KEY = SessionKey("w1", "alice", "s1")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(f"sqlite:///{tmp_path / 'fleet_rlm.sqlite3'}")
    store.migrate()
    yield store
    store.dispose()


def new_log(store: Store, capacity: int = 100, key: SessionKey = KEY) -> EventLog:
    return EventLog(store, key, capacity, store.last_seq(key))


def add(log: EventLog, channel: str = CHAT, kind: str = "status", turn: int | None = 1) -> dict:
    return log.append(channel, kind, turn, lambda seq: {"type": "event", "n": seq})


def fill(log: EventLog, n: int) -> list[dict[str, Any]]:
    return [add(log, CHAT if i % 2 else EXECUTION) for i in range(n)]


def seqs(entries: list[dict[str, Any]]) -> list[int]:
    return [e["seq"] for e in entries]


# --- numbering and persistence -------------------------------------------------------


def test_seq_starts_at_one_and_has_no_gaps_across_channels(store: Store) -> None:
    log = new_log(store)
    entries = fill(log, 6)
    assert seqs(entries) == [1, 2, 3, 4, 5, 6]
    assert log.last_seq == 6
    assert [e.seq for e in store.events_after(KEY)] == [1, 2, 3, 4, 5, 6]


def test_build_gets_the_seq_of_its_entry(store: Store) -> None:
    log = new_log(store)
    entry = log.append(CHAT, "reasoning", 3, lambda seq: {"seq_in_frame": seq})
    assert entry == {
        "seq": 1,
        "channel": CHAT,
        "kind": "reasoning",
        "turn_index": 3,
        "frame": {"seq_in_frame": 1},
    }


def test_entry_is_in_the_store_when_append_returns(store: Store) -> None:
    log = new_log(store)
    add(log, EXECUTION, "execution_started", 2)
    [record] = store.events_after(KEY)
    assert (record.seq, record.channel, record.kind, record.turn_index) == (
        1,
        EXECUTION,
        "execution_started",
        2,
    )
    assert record.frame == {"type": "event", "n": 1}


def test_failed_store_write_publishes_nothing_and_uses_no_seq(store: Store) -> None:
    fill(new_log(store), 3)
    stale = EventLog(store, KEY, 100, last_seq=0)  # as if it had missed the store's rows
    with pytest.raises(StoreConflictError):
        add(stale)
    assert stale.last_seq == 0
    assert stale.read(0) == []  # nothing was published
    assert [e.seq for e in store.events_after(KEY)] == [1, 2, 3]


def test_sessions_have_sequences_of_their_own(store: Store) -> None:
    other = SessionKey("w1", "alice", "s2")
    fill(new_log(store), 3)
    assert seqs(fill(new_log(store, key=other), 2)) == [1, 2]


# --- reading -------------------------------------------------------------------------


def test_read_returns_entries_after_the_given_seq(store: Store) -> None:
    log = new_log(store)
    fill(log, 5)
    assert seqs(log.read(0)) == [1, 2, 3, 4, 5]
    assert seqs(log.read(3)) == [4, 5]
    assert log.read(5) == []
    assert log.read(99) == []


def test_read_honours_the_limit(store: Store) -> None:
    log = new_log(store, capacity=3)
    fill(log, 10)
    assert seqs(log.read(7, limit=2)) == [8, 9]  # from memory
    assert seqs(log.read(0, limit=4)) == [1, 2, 3, 4]  # from the store


def test_reads_older_than_the_window_come_from_the_store(store: Store) -> None:
    log = new_log(store, capacity=3)
    written = fill(log, 10)
    assert seqs(log.read(0)) == list(range(1, 11))
    assert seqs(log.read(4)) == list(range(5, 11))
    assert log.read(0) == written  # the same entries, whichever side served them


def test_window_edge_is_served_without_gaps(store: Store) -> None:
    log = new_log(store, capacity=3)  # holds 8, 9, 10
    fill(log, 10)
    assert seqs(log.read(6)) == [7, 8, 9, 10]
    assert seqs(log.read(7)) == [8, 9, 10]


def test_store_reads_are_really_from_the_store(store: Store) -> None:
    log = new_log(store, capacity=2)
    fill(log, 5)
    store.delete_session(KEY)  # only the store loses them; the window keeps 4 and 5
    assert seqs(log.read(3)) == [4, 5]
    assert log.read(0) == []


# --- waiting -------------------------------------------------------------------------


async def test_wait_returns_at_once_when_entries_exist(store: Store) -> None:
    log = new_log(store)
    fill(log, 2)
    got = await asyncio.wait_for(log.wait(0, timeout_s=30), 1)
    assert seqs(got) == [1, 2]


async def test_wait_wakes_on_append(store: Store) -> None:
    log = new_log(store)
    fill(log, 2)
    waiter = asyncio.create_task(log.wait(2, timeout_s=30))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    add(log, kind="final")
    got = await asyncio.wait_for(waiter, 2)
    assert [(e["seq"], e["kind"]) for e in got] == [(3, "final")]


async def test_wait_wakes_every_waiter(store: Store) -> None:
    log = new_log(store)
    waiters = [asyncio.create_task(log.wait(0, timeout_s=30)) for _ in range(3)]
    await asyncio.sleep(0.05)
    add(log)
    results = await asyncio.wait_for(asyncio.gather(*waiters), 2)
    assert [seqs(r) for r in results] == [[1], [1], [1]]


async def test_wait_times_out_with_nothing(store: Store) -> None:
    log = new_log(store)
    fill(log, 1)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await log.wait(1, timeout_s=0.2) == []
    assert 0.15 <= loop.time() - started < 2


async def test_wait_after_a_wake_keeps_waiting_for_the_next_entry(store: Store) -> None:
    log = new_log(store)
    first = asyncio.create_task(log.wait(0, timeout_s=30))
    await asyncio.sleep(0.01)
    add(log)
    await asyncio.wait_for(first, 2)
    assert await log.wait(1, timeout_s=0.1) == []


# --- a successor on the same store ----------------------------------------------------


def test_new_log_on_the_same_store_continues_the_sequence(store: Store) -> None:
    fill(new_log(store), 4)
    successor = new_log(store)
    assert successor.last_seq == 4
    assert seqs(fill(successor, 2)) == [5, 6]
    assert [e.seq for e in store.events_after(KEY)] == [1, 2, 3, 4, 5, 6]


def test_new_log_reads_its_predecessors_entries_from_the_store(store: Store) -> None:
    written = fill(new_log(store), 4)
    successor = new_log(store)
    assert successor.read(0) == written
    add(successor)
    assert seqs(successor.read(2)) == [3, 4, 5]


def test_new_log_on_a_second_store_of_the_same_file_continues(store: Store) -> None:
    fill(new_log(store), 3)
    second = Store(store.url)
    try:
        assert seqs(fill(new_log(second), 1)) == [4]
    finally:
        second.dispose()
