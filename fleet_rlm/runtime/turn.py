"""One turn's state, shared between the session actor's loop and the turn's worker thread.

The agent runs synchronously in a worker thread (DSPy is synchronous); it reports
through ``TurnEmitter``, whose calls hop onto the actor's loop, where the event log
lives. Once the turn is closed (its terminal event is in the log) the emitter drops
whatever the thread still says, and ``check()`` raises ``TurnCancelled`` so the thread
starts nothing new.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fleet_rlm.config import Settings
from fleet_rlm.errors import TurnCancelled
from fleet_rlm.identity import SessionKey
from fleet_rlm.runtime.budget import TurnBudget
from fleet_rlm.store import Store

ChatSink = Callable[["TurnState", str, str, dict[str, Any]], None]
StepSink = Callable[["TurnState", dict[str, Any]], None]


@dataclass
class TurnState:
    key: SessionKey
    turn_index: int
    content: str
    started: float = field(default_factory=time.monotonic)
    cancel_requested: threading.Event = field(default_factory=threading.Event)
    closed: bool = False
    trace_id: str | None = None
    trace_url: str | None = None
    budget: TurnBudget | None = None

    def check(self) -> None:
        """Raise ``TurnCancelled`` if the turn was cancelled or has already ended."""
        if self.cancel_requested.is_set() or self.closed:
            raise TurnCancelled("the turn was cancelled")

    @property
    def duration_ms(self) -> int:
        return int((time.monotonic() - self.started) * 1000)


class TurnEmitter:
    """Thread-safe reporting from a turn's worker thread to the session actor's loop."""

    def __init__(
        self,
        turn: TurnState,
        loop: asyncio.AbstractEventLoop,
        chat_sink: ChatSink,
        step_sink: StepSink,
    ) -> None:
        self._turn = turn
        self._loop = loop
        self._chat_sink = chat_sink
        self._step_sink = step_sink
        self._ids = itertools.count(1)

    def chat(self, kind: str, text: str = "", payload: dict[str, Any] | None = None) -> None:
        self._loop.call_soon_threadsafe(self._chat_sink, self._turn, kind, text, payload or {})

    def step(
        self,
        type_: str,
        label: str,
        *,
        parent_id: str | None = None,
        depth: int = 0,
        input: dict[str, Any] | None = None,
        output: dict[str, Any] | None = None,
        span_id: str | None = None,
    ) -> str:
        step_id = f"{self._turn.turn_index}.{next(self._ids)}"
        step = {
            "id": step_id,
            "parent_id": parent_id,
            "type": type_,
            "label": label,
            "depth": depth,
            "input": input or {},
            "output": output or {},
            "timestamp": time.time(),
            "span_id": span_id,
        }
        self._loop.call_soon_threadsafe(self._step_sink, self._turn, step)
        return step_id

    def set_trace(self, trace_id: str | None, trace_url: str | None) -> None:
        self._turn.trace_id = trace_id
        self._turn.trace_url = trace_url


@dataclass
class TurnContext:
    """What the agent's turn function receives, in its worker thread."""

    turn: TurnState
    settings: Settings
    store: Store
    emitter: TurnEmitter
    session: Any = None  # this session's actor handle, for child runs in other processes

    def check(self) -> None:
        self.turn.check()


@dataclass
class TurnOutcome:
    answer: str
    trace_id: str | None = None
    trace_url: str | None = None
