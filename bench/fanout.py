"""Event latency from the session actor to N viewers, and the asyncio baseline beside it.

``product_fanout`` attaches N viewers (``/api/v1/ws/execution/events``) to one session
and runs turns through the chat socket, each viewer stamping every frame on arrival.
Two clocks start a frame, both wall clocks on this one machine: ``step.timestamp``
(``time.time()`` when the turn's worker thread made the step) and the event's
``created_at`` in the store, taken when the actor appends it to the event log (read
back after the run by ``append_times``). Latency is receipt minus append; made-to-append
is the hop from the worker thread onto the actor's loop. ``asyncio_fanout`` is the floor
for the fan-out: one producer handing timestamped items to N ``asyncio.Queue``s.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from bench.harness import App, ChatSocket, open_viewer
from fleet_rlm.config import Settings

TURN_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Receipt:
    """One viewer's receipt of one ``execution_step`` frame."""

    turn_index: int
    seq: int
    step_id: str
    step_type: str
    made: float
    received: float


@dataclass
class FanoutResult:
    viewers: int
    session_id: str
    receipts: list[Receipt]
    errors: list[dict[str, Any]] = field(default_factory=list)
    fewest: int = 0  # measured frames the least served viewer received
    appended: dict[int, float] = field(default_factory=dict)  # seq -> append time

    def latency(self, r: Receipt) -> float:
        return r.received - self.appended[r.seq]

    @property
    def latencies(self) -> list[float]:
        """Append to receipt, every viewer's every frame."""
        return [self.latency(r) for r in self.receipts]

    @property
    def made_latencies(self) -> list[float]:
        return [r.received - r.made for r in self.receipts]

    def hops(self) -> list[float]:
        """Per frame: the step made in the worker thread to its append on the actor's loop."""
        made = {r.seq: r.made for r in self.receipts}
        return [self.appended[seq] - t for seq, t in made.items()]

    @property
    def frames(self) -> int:
        return len({(r.turn_index, r.seq) for r in self.receipts})

    def spread(self) -> list[float]:
        """Per frame: last viewer's receipt minus the first's."""
        seen: dict[tuple[int, int], list[float]] = {}
        for r in self.receipts:
            seen.setdefault((r.turn_index, r.seq), []).append(r.received)
        return [max(t) - min(t) for t in seen.values() if len(t) > 1]

    def worst(self, count: int) -> list[Receipt]:
        return sorted(self.receipts, key=self.latency, reverse=True)[:count]


class Viewer:
    """Reads one viewer socket, stamping every frame on arrival before parsing it."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.receipts: list[Receipt] = []
        self.errors: list[dict[str, Any]] = []
        self.completed: set[int] = set()
        self._changed = asyncio.Event()

    async def read(self) -> None:
        try:
            async for raw in self.ws:
                received = time.time()
                self._take(json.loads(raw), received)
        except ConnectionClosed:
            pass

    def _take(self, frame: dict[str, Any], received: float) -> None:
        kind = frame.get("type")
        if kind == "execution_step":
            step = frame["step"]
            turn = _turn_of(frame["run_id"])
            self.receipts.append(
                Receipt(turn, frame["seq"], step["id"], step["type"], step["timestamp"], received)
            )
        elif kind == "execution_completed":
            self.completed.add(_turn_of(frame["run_id"]))
            self._changed.set()
        elif kind == "error":
            self.errors.append(frame)

    async def until_completed(self, turn_index: int) -> None:
        async with asyncio.timeout(TURN_TIMEOUT_S):
            while turn_index not in self.completed:
                self._changed.clear()
                await self._changed.wait()


def _turn_of(run_id: str) -> int:
    return int(run_id.rsplit(":", 1)[1])


async def product_fanout(
    app: App, chat: ChatSocket, session_id: str, viewers: int, turns: int
) -> FanoutResult:
    """Attach ``viewers`` sockets, run one unmeasured turn, then ``turns`` measured ones."""
    after = app.last_seq(session_id)
    sockets = await asyncio.gather(*(open_viewer(app, session_id, after) for _ in range(viewers)))
    readers = [Viewer(ws) for ws in sockets]
    tasks = [asyncio.create_task(v.read()) for v in readers]
    measured: set[int] = set()
    try:
        for i in range(turns + 1):
            timing = await chat.turn(session_id, f"fan-out turn {i}")
            await asyncio.gather(*(v.until_completed(timing.turn_index) for v in readers))
            if i > 0:  # the first turn only proves every subscription is live
                measured.add(timing.turn_index)
    finally:
        await asyncio.gather(*(ws.close() for ws in sockets))
        await asyncio.gather(*tasks, return_exceptions=True)
    kept = [[r for r in v.receipts if r.turn_index in measured] for v in readers]
    errors = [e for v in readers for e in v.errors]
    receipts = [r for mine in kept for r in mine]
    return FanoutResult(viewers, session_id, receipts, errors, min(len(k) for k in kept))


def append_times(settings: Settings, session_id: str) -> dict[int, float]:
    """``seq -> created_at`` (epoch seconds) of the session's events, read from the store."""
    from sqlalchemy import select

    from fleet_rlm.store import Store
    from fleet_rlm.store.schema import EventRow, SessionRow

    store = Store.from_settings(settings)
    query = (
        select(EventRow.seq, EventRow.created_at)
        .join(SessionRow, SessionRow.id == EventRow.session_pk)
        .where(SessionRow.session_id == session_id)
    )
    try:
        with store.engine.connect() as db:
            return {seq: created.timestamp() for seq, created in db.execute(query)}
    finally:
        store.dispose()


async def asyncio_fanout(consumers: int, items: int, spacing_s: float) -> list[float]:
    """Latencies of ``items`` timestamped items put into ``consumers`` queues, one task each."""
    queues: list[asyncio.Queue[float | None]] = [asyncio.Queue() for _ in range(consumers)]
    latencies: list[float] = []

    async def consume(queue: asyncio.Queue[float | None]) -> None:
        while (stamp := await queue.get()) is not None:
            latencies.append(time.time() - stamp)

    tasks = [asyncio.create_task(consume(q)) for q in queues]
    await asyncio.sleep(0)
    for _ in range(items):
        stamp = time.time()
        for queue in queues:
            queue.put_nowait(stamp)
        await asyncio.sleep(spacing_s)
    for queue in queues:
        queue.put_nowait(None)
    await asyncio.gather(*tasks)
    return latencies
