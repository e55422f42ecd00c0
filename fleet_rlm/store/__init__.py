"""Persistence: sessions, turns, event streams, documents and feedback in SQL.

``Store`` is the one way in; ``Store(url).migrate()`` once at start-up, then
short synchronous calls that take a ``SessionKey`` and return frozen records.
SQLite (a file under ``DATA_DIR``) by default, PostgreSQL via ``DATABASE_URL``.

    schema.py       the tables (ORM), the source of truth for the migrations
    records.py      the frozen records the store returns and takes
    engine.py       engine per backend: SQLite WAL, busy timeout, BEGIN IMMEDIATE
    migrate.py      applies ``migrations/`` programmatically, refuses newer schemas
    repository.py   ``Store``
"""

from fleet_rlm.store.migrate import head_revision
from fleet_rlm.store.records import (
    Channel,
    DocumentRecord,
    EventLike,
    EventRecord,
    FinishedStatus,
    NewEvent,
    SessionRecord,
    TurnRecord,
    TurnStatus,
)
from fleet_rlm.store.repository import Store, StoreConflictError

__all__ = [
    "Channel",
    "DocumentRecord",
    "EventLike",
    "EventRecord",
    "FinishedStatus",
    "NewEvent",
    "SessionRecord",
    "Store",
    "StoreConflictError",
    "TurnRecord",
    "TurnStatus",
    "head_revision",
]
