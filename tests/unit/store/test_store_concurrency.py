"""Several stores (standing in for processes) reading and writing one database at once."""

from __future__ import annotations

import threading
from collections.abc import Callable

from fleet_rlm.identity import SessionKey
from fleet_rlm.store import NewEvent, Store


def test_concurrent_writers_and_readers_do_not_fail(
    make_store: Callable[[], Store], store: Store
) -> None:
    workers = 4
    turns = 15
    stores = [make_store() for _ in range(workers)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(workers)

    def work(n: int) -> None:
        worker_store = stores[n]
        key = SessionKey("ws", "user", f"worker-{n}")
        shared = SessionKey("ws", "user", "shared")
        try:
            barrier.wait(timeout=30)
            for index in range(1, turns + 1):
                worker_store.create_turn(key, index, f"turn {index}")
                worker_store.append_events(
                    key,
                    [NewEvent(2 * index - 1, "chat", "start"), NewEvent(2 * index, "chat", "end")],
                )
                worker_store.finish_turn(key, index, "completed", answer="ok")
                worker_store.put_document(shared, f"doc-{n}", f"v{index}")
                worker_store.events_after(key, 0)
                worker_store.list_sessions("ws", "user")
        except BaseException as error:  # re-raised below, in the test's thread
            errors.append(error)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert errors == []
    for n in range(workers):
        key = SessionKey("ws", "user", f"worker-{n}")
        assert store.last_seq(key) == 2 * turns
        assert store.unfinished_turns(key) == []
    assert len(store.document_names(SessionKey("ws", "user", "shared"))) == workers
