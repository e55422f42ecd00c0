"""A session's event log: seq-numbered from 1 with no gaps, bounded in memory, durable.

Every entry is written to the store before it is visible to any reader, so a
session actor that dies loses nothing a viewer has seen, and its successor
continues the sequence from the store's last ``seq``. Readers that ask for
entries older than the in-memory window are served from the store.

The log lives on one asyncio loop (the session actor's); ``append`` is called
only from that loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from fleet_rlm.identity import SessionKey
from fleet_rlm.store import NewEvent, Store

logger = logging.getLogger(__name__)

Entry = dict[str, Any]
READ_LIMIT = 500


class EventLog:
    def __init__(self, store: Store, key: SessionKey, capacity: int, last_seq: int) -> None:
        self._store = store
        self._key = key
        self._buffer: deque[Entry] = deque(maxlen=capacity)
        self._last_seq = last_seq
        self._tick = asyncio.Event()

    @property
    def last_seq(self) -> int:
        return self._last_seq

    def append(
        self,
        channel: str,
        kind: str,
        turn_index: int | None,
        build: Callable[[int], dict[str, Any]],
    ) -> Entry:
        """Give the next ``seq`` to ``build``, persist the frame it returns, then publish it."""
        seq = self._last_seq + 1
        frame = build(seq)
        entry: Entry = {
            "seq": seq,
            "channel": channel,
            "kind": kind,
            "turn_index": turn_index,
            "frame": frame,
        }
        record = NewEvent(seq=seq, turn_index=turn_index, channel=channel, kind=kind, frame=frame)
        self._store.append_events(self._key, [record])
        self._last_seq = seq
        self._buffer.append(entry)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("session %s: event seq=%d %s/%s", self._key.session_id, seq, channel, kind)
        self._tick.set()
        self._tick = asyncio.Event()
        return entry

    def read(self, after_seq: int, limit: int = READ_LIMIT) -> list[Entry]:
        """Entries with ``seq > after_seq``, oldest first, at most ``limit``."""
        if after_seq >= self._last_seq:
            return []
        if self._buffer and self._buffer[0]["seq"] <= after_seq + 1:
            start = after_seq + 1 - self._buffer[0]["seq"]
            return [self._buffer[i] for i in range(start, min(len(self._buffer), start + limit))]
        records = self._store.events_after(self._key, after_seq, limit=limit)
        return [
            {
                "seq": r.seq,
                "channel": r.channel,
                "kind": r.kind,
                "turn_index": r.turn_index,
                "frame": r.frame,
            }
            for r in records
        ]

    async def wait(self, after_seq: int, timeout_s: float) -> list[Entry]:
        """Like ``read``, but wait up to ``timeout_s`` for an entry when there is none yet."""
        if after_seq < self._last_seq:
            return self.read(after_seq)
        tick = self._tick
        try:
            await asyncio.wait_for(tick.wait(), timeout_s)
        except TimeoutError:
            return []
        return self.read(after_seq)
