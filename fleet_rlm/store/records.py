"""What the store hands back and takes in: small frozen dataclasses, never ORM rows.

Records are plain values, so they pickle across Ray actors and HTTP replicas
and stay valid after the database session that read them has closed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

TurnStatus = Literal["running", "completed", "error", "cancelled"]
FinishedStatus = Literal["completed", "error", "cancelled"]
Channel = Literal["chat", "execution"]


@dataclass(frozen=True, slots=True)
class SessionRecord:
    id: int
    workspace_id: str
    user_id: str
    session_id: str
    title: str | None
    created_at: datetime
    updated_at: datetime
    turn_count: int
    last_seq: int


@dataclass(frozen=True, slots=True)
class TurnRecord:
    turn_index: int
    status: TurnStatus
    content: str
    client_message_id: str | None
    answer: str | None
    error_code: str | None
    trace_id: str | None
    started_at: datetime
    ended_at: datetime | None


class EventLike(Protocol):
    """Anything ``Store.append_events`` can write: ``NewEvent``, ``EventRecord`` or a look-alike."""

    @property
    def seq(self) -> int: ...
    @property
    def turn_index(self) -> int | None: ...
    @property
    def channel(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def frame(self) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event to append; ``seq`` is chosen by the session that owns the stream."""

    seq: int
    channel: Channel
    kind: str
    frame: dict[str, Any] = field(default_factory=dict)
    turn_index: int | None = None


@dataclass(frozen=True, slots=True)
class EventRecord:
    seq: int
    turn_index: int | None
    channel: Channel
    kind: str
    frame: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True, slots=True)
class DocumentRecord:
    """A stored document; ``text`` is ``None`` in listings and set by ``get_document``."""

    id: int
    document_id: str
    name: str
    chars: int
    created_at: datetime
    text: str | None = None
