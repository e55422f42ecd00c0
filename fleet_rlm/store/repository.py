"""``Store``: every read and write of sessions, turns, events, documents and feedback.

Each method is one short transaction and returns frozen records from
``records.py``, never ORM rows. Every method that touches a session's rows
takes the full ``SessionKey`` and filters on all three of its parts
(``queries.is_key``), so no call can reach another identity's data. Writes
that need the session row (``ensure_session``, ``create_turn``,
``append_events``, ``put_document``) create it with ``INSERT ... ON CONFLICT
DO NOTHING``, so processes racing on one key end up with the same row.

Driver failures surface as ``StoreError``; a taken turn index or an event
``seq`` that does not follow the stored ones as ``StoreConflictError``.
Arguments the caller should have checked (a bad status, name or limit) raise
``ValueError``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, delete, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, defer

from fleet_rlm.config import Settings
from fleet_rlm.errors import StoreError
from fleet_rlm.identity import SessionKey
from fleet_rlm.store import migrate as migrations
from fleet_rlm.store import queries as q
from fleet_rlm.store.engine import WRITE_OPTION, build_engine, database_errors, safe_url
from fleet_rlm.store.records import (
    Channel,
    DocumentRecord,
    EventLike,
    EventRecord,
    FinishedStatus,
    SessionRecord,
    TurnRecord,
)
from fleet_rlm.store.schema import (
    CHANNELS,
    DOCUMENT_NAME_MAX,
    DocumentRow,
    EventRow,
    FeedbackRow,
    SessionRow,
    TurnRow,
    utcnow,
)

logger = logging.getLogger(__name__)

FINISHED_STATUSES = ("completed", "error", "cancelled")


class StoreConflictError(StoreError):
    """A write collides with stored rows: the turn index or event seq is taken."""

    code = "store_conflict"
    status = 409


class Store:
    """The database behind fleet-rlm. Safe to share between threads; one per process.

    A ``Store`` pickles as its URL, so it can be handed to a Ray actor, which
    then opens connections of its own.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._engine = build_engine(url)
        self._safe_url = safe_url(self._engine.url)

    @classmethod
    def from_settings(cls, settings: Settings) -> Store:
        return cls(settings.sqlalchemy_url)

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine, for tests and administration; product code uses methods."""
        return self._engine

    def __repr__(self) -> str:
        return f"Store({self._safe_url!r})"

    def __reduce__(self) -> tuple[type[Store], tuple[str]]:
        return (Store, (self.url,))

    # -- lifecycle -----------------------------------------------------------------------

    def migrate(self) -> str:
        """Apply pending migrations and return the revision; see ``fleet_rlm.store.migrate``."""
        with database_errors(self._safe_url, "migrate the database"):
            return migrations.migrate(self._engine)

    def ping(self) -> None:
        """Raise ``StoreError`` unless the database answers a trivial query."""
        with database_errors(self._safe_url, "reach the database"):
            with self._engine.connect() as connection:
                connection.exec_driver_sql("SELECT 1")

    def dispose(self) -> None:
        """Close pooled connections; the store reconnects if used again."""
        self._engine.dispose()
        logger.info("store %s disposed", self._safe_url)

    # -- sessions ------------------------------------------------------------------------

    def ensure_session(self, key: SessionKey) -> SessionRecord:
        """The session row for ``key``, created if missing."""
        with self._write("ensure a session") as db:
            pk = q.ensure_session_pk(db, key)
            return q.session_records(db, SessionRow.id == pk)[0]

    def get_session(self, key: SessionKey) -> SessionRecord | None:
        with self._read("read a session") as db:
            found = q.session_records(db, q.is_key(key))
            return found[0] if found else None

    def list_sessions(
        self, workspace_id: str, user_id: str, limit: int = 50, after_id: int | None = None
    ) -> list[SessionRecord]:
        """One user's sessions by ascending ``id``; pass the last ``id`` seen as ``after_id``."""
        _check_limit(limit)
        where = (SessionRow.workspace_id == workspace_id) & (SessionRow.user_id == user_id)
        if after_id is not None:
            where = where & (SessionRow.id > after_id)
        with self._read("list sessions") as db:
            return q.session_records(db, where, limit=limit)

    def delete_session(self, key: SessionKey) -> bool:
        """Delete the session with its turns, events and documents; False if there was none."""
        with self._write("delete a session") as db:
            deleted = db.execute(delete(SessionRow).where(q.is_key(key))).rowcount > 0
        if deleted:
            logger.info("session %s deleted", key.actor_name)
        return deleted

    # -- turns ---------------------------------------------------------------------------

    def create_turn(
        self, key: SessionKey, turn_index: int, content: str, client_message_id: str | None = None
    ) -> TurnRecord:
        """Record a running turn, creating the session if needed."""
        with self._write("start a turn") as db:
            pk = q.ensure_session_pk(db, key)
            row = TurnRow(
                session_pk=pk,
                turn_index=turn_index,
                status="running",
                content=content,
                client_message_id=client_message_id,
            )
            db.add(row)
            try:
                db.flush()
            except IntegrityError as error:
                raise StoreConflictError(
                    f"session {key.actor_name} already has turn {turn_index};"
                    " take the index from next_turn_index()",
                    code="duplicate_turn_index",
                ) from error
            q.touch(db, pk)
            logger.debug("session %s turn %d started", key.actor_name, turn_index)
            return q.turn_record(row)

    def finish_turn(
        self,
        key: SessionKey,
        turn_index: int,
        status: FinishedStatus,
        answer: str | None = None,
        error_code: str | None = None,
        trace_id: str | None = None,
    ) -> TurnRecord | None:
        """End a running turn; the first finish wins and later ones change nothing.

        Returns the turn as stored afterwards, or ``None`` if it does not exist.
        ``trace_id=None`` keeps a trace id set earlier.
        """
        if status not in FINISHED_STATUSES:
            raise ValueError(f"a turn finishes as one of {FINISHED_STATUSES}; got {status!r}")
        values: dict[str, Any] = {
            "status": status,
            "answer": answer,
            "error_code": error_code,
            "ended_at": utcnow(),
        }
        if trace_id is not None:
            values["trace_id"] = trace_id

        with self._write("finish a turn") as db:
            row = db.scalar(q.turn_of(key, turn_index))
            if row is None:
                return None
            # Conditional on "running" in the database, so concurrent finishes cannot both win.
            running = (TurnRow.id == row.id) & (TurnRow.status == "running")
            db.execute(update(TurnRow).where(running).values(**values))
            q.touch(db, row.session_pk)
            db.refresh(row)
            logger.debug("session %s turn %d is %s", key.actor_name, turn_index, row.status)
            return q.turn_record(row)

    def set_turn_trace(self, key: SessionKey, turn_index: int, trace_id: str) -> bool:
        """Attach a trace id to a turn; False if the turn does not exist."""
        with self._write("set a turn's trace") as db:
            row = db.scalar(q.turn_of(key, turn_index))
            if row is None:
                return False
            row.trace_id = trace_id
            return True

    def list_turns(self, key: SessionKey) -> list[TurnRecord]:
        query = q.turns_of(key).order_by(TurnRow.turn_index)
        with self._read("list turns") as db:
            return [q.turn_record(row) for row in db.scalars(query)]

    def unfinished_turns(self, key: SessionKey) -> list[TurnRecord]:
        """Turns still marked running, e.g. left behind by a process that died."""
        query = q.turns_of(key).where(TurnRow.status == "running").order_by(TurnRow.turn_index)
        with self._read("list unfinished turns") as db:
            return [q.turn_record(row) for row in db.scalars(query)]

    def next_turn_index(self, key: SessionKey) -> int:
        """One more than the highest turn index; 1 for a session without turns."""
        with self._read("read the next turn index") as db:
            return int(db.scalar(q.max_turn_index(key)) or 0) + 1

    # -- events --------------------------------------------------------------------------

    def append_events(self, key: SessionKey, events: Sequence[EventLike]) -> None:
        """Append events in one transaction; their ``seq`` must rise past the stored ones."""
        if not events:
            return
        _check_events(events)
        first = events[0].seq
        now = utcnow()

        with self._write("append events") as db:
            pk = q.ensure_session_pk(db, key)
            last = int(db.scalar(q.max_seq(key)) or 0)
            if first <= last:
                raise _seq_conflict(key, first, last)
            rows = [
                {
                    "session_pk": pk,
                    "seq": event.seq,
                    "turn_index": event.turn_index,
                    "channel": event.channel,
                    "kind": event.kind,
                    "frame": q.encode_frame(event.frame),
                    "created_at": now,
                }
                for event in events
            ]
            try:
                db.execute(EventRow.__table__.insert(), rows)
            except IntegrityError as error:
                raise _seq_conflict(key, first, last) from error
            q.touch(db, pk)
        logger.debug("session %s appended events %d..%d", key.actor_name, first, events[-1].seq)

    def events_after(
        self,
        key: SessionKey,
        after_seq: int = 0,
        limit: int | None = None,
        channel: Channel | None = None,
    ) -> list[EventRecord]:
        """Events with ``seq > after_seq`` by ascending seq, optionally of one channel."""
        query = q.events_of(key).where(EventRow.seq > after_seq).order_by(EventRow.seq)
        if channel is not None:
            query = query.where(EventRow.channel == channel)
        if limit is not None:
            _check_limit(limit)
            query = query.limit(limit)
        with self._read("read events") as db:
            return [q.event_record(row) for row in db.scalars(query)]

    def last_seq(self, key: SessionKey) -> int:
        """The highest stored event seq; 0 when there are none."""
        with self._read("read the last event seq") as db:
            return int(db.scalar(q.max_seq(key)) or 0)

    # -- documents -----------------------------------------------------------------------

    def put_document(self, key: SessionKey, name: str, text: str) -> DocumentRecord:
        """Store a document, replacing any of the same name with a new ``document_id``."""
        if not name or len(name) > DOCUMENT_NAME_MAX:
            raise ValueError(
                f"a document name is 1 to {DOCUMENT_NAME_MAX} characters; got {name!r}"
            )
        values = {
            "document_id": uuid.uuid4().hex,
            "text": text,
            "chars": len(text),
            "created_at": utcnow(),
        }

        with self._write("store a document") as db:
            pk = q.ensure_session_pk(db, key)
            insert = q.upsert(db, DocumentRow).values(session_pk=pk, name=name, **values)
            db.execute(
                insert.on_conflict_do_update(index_elements=["session_pk", "name"], set_=values)
            )
            q.touch(db, pk)
            row = db.scalars(q.documents_of(key).where(DocumentRow.name == name)).one()
            logger.debug(
                "session %s stored document %r (%d chars)", key.actor_name, name, row.chars
            )
            return q.document_record(row, with_text=True)

    def list_documents(
        self, key: SessionKey, limit: int = 50, after_id: int | None = None
    ) -> list[DocumentRecord]:
        """Documents by ascending ``id``, without text; pass the last ``id`` as ``after_id``."""
        _check_limit(limit)
        query = q.documents_of(key).options(defer(DocumentRow.text)).order_by(DocumentRow.id)
        if after_id is not None:
            query = query.where(DocumentRow.id > after_id)
        with self._read("list documents") as db:
            rows = db.scalars(query.limit(limit))
            return [q.document_record(row, with_text=False) for row in rows]

    def get_document(self, key: SessionKey, name: str) -> DocumentRecord | None:
        with self._read("read a document") as db:
            row = db.scalar(q.documents_of(key).where(DocumentRow.name == name))
            return q.document_record(row, with_text=True) if row is not None else None

    def document_names(self, key: SessionKey) -> list[str]:
        query = q.documents_of(key).with_only_columns(DocumentRow.name).order_by(DocumentRow.name)
        with self._read("list document names") as db:
            return list(db.scalars(query))

    # -- feedback ------------------------------------------------------------------------

    def add_feedback(
        self,
        *,
        workspace_id: str,
        user_id: str,
        trace_id: str,
        value: bool,
        session_id: str | None = None,
        comment: str | None = None,
        expected_response: str | None = None,
    ) -> int:
        """Record a thumbs-up or -down on a trace and return the new row's id."""
        row = FeedbackRow(
            workspace_id=workspace_id,
            user_id=user_id,
            trace_id=trace_id,
            value=value,
            session_id=session_id,
            comment=comment,
            expected_response=expected_response,
        )
        with self._write("record feedback") as db:
            db.add(row)
            db.flush()
            logger.debug(
                "feedback %d on trace %s by %s/%s", row.id, trace_id, workspace_id, user_id
            )
            return row.id

    # -- transactions --------------------------------------------------------------------

    @contextmanager
    def _read(self, action: str) -> Iterator[Session]:
        with self._transaction(action, write=False) as db:
            yield db

    @contextmanager
    def _write(self, action: str) -> Iterator[Session]:
        with self._transaction(action, write=True) as db:
            yield db

    @contextmanager
    def _transaction(self, action: str, *, write: bool) -> Iterator[Session]:
        """One transaction; ``write`` makes SQLite take its write lock at ``BEGIN``."""
        with (
            database_errors(self._safe_url, action),
            Session(self._engine, expire_on_commit=False) as db,
        ):
            db.connection(execution_options={WRITE_OPTION: write})
            yield db
            db.commit()


def _check_limit(limit: int) -> None:
    if limit < 1:
        raise ValueError(f"limit must be at least 1; got {limit}")


def _check_events(events: Sequence[EventLike]) -> None:
    previous = 0
    for event in events:
        if event.seq <= previous:
            raise ValueError(
                f"event seqs must be positive and strictly increasing; got {event.seq}"
                f" after {previous}"
            )
        if event.channel not in CHANNELS:
            raise ValueError(f"event channel must be one of {CHANNELS}; got {event.channel!r}")
        previous = event.seq


def _seq_conflict(key: SessionKey, seq: int, last: int) -> StoreConflictError:
    return StoreConflictError(
        f"session {key.actor_name} already has events up to seq {last}; cannot append seq {seq}."
        " Only the session's owner appends, with seqs after last_seq()",
        code="duplicate_event_seq",
    )
