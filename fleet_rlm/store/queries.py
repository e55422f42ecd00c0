"""The query pieces ``Store`` is built from: identity filters, session upsert, row-to-record.

Every function that reads a session's rows starts from ``is_key``, the filter
on all three parts of the identity tuple; nothing here selects by a bare
session row id that the caller did not get through that filter.
"""

from __future__ import annotations

import json
import logging
from typing import Any, cast

from sqlalchemy import ColumnElement, Select, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from fleet_rlm.identity import SessionKey
from fleet_rlm.store.records import (
    Channel,
    DocumentRecord,
    EventRecord,
    SessionRecord,
    TurnRecord,
    TurnStatus,
)
from fleet_rlm.store.schema import DocumentRow, EventRow, SessionRow, TurnRow, utcnow

logger = logging.getLogger(__name__)


def is_key(key: SessionKey) -> ColumnElement[bool]:
    """The session row of ``key``: all three parts must match."""
    return (
        (SessionRow.workspace_id == key.workspace_id)
        & (SessionRow.user_id == key.user_id)
        & (SessionRow.session_id == key.session_id)
    )


def upsert(db: Session, entity: type[SessionRow] | type[DocumentRow]) -> Any:
    """The dialect's ``INSERT`` for ``entity``, which knows ``ON CONFLICT``."""
    if db.get_bind().dialect.name == "postgresql":
        return postgresql.insert(entity)
    return sqlite.insert(entity)


def ensure_session_pk(db: Session, key: SessionKey) -> int:
    """The row id of ``key``'s session, inserting it if missing; racing callers agree."""
    pk = db.scalar(select(SessionRow.id).where(is_key(key)))
    if pk is not None:
        return pk

    now = utcnow()
    insert = upsert(db, SessionRow).values(
        workspace_id=key.workspace_id,
        user_id=key.user_id,
        session_id=key.session_id,
        created_at=now,
        updated_at=now,
    )
    conflict_free = insert.on_conflict_do_nothing(
        index_elements=["workspace_id", "user_id", "session_id"]
    )
    if db.execute(conflict_free).rowcount:
        logger.info("session %s created", key.actor_name)
    return db.scalars(select(SessionRow.id).where(is_key(key))).one()


def session_records(
    db: Session, where: ColumnElement[bool], limit: int | None = None
) -> list[SessionRecord]:
    """Sessions matching ``where`` by ascending id, with their turn count and last seq."""
    turn_count = (
        select(func.count(TurnRow.id)).where(TurnRow.session_pk == SessionRow.id).scalar_subquery()
    )
    last_seq = (
        select(func.coalesce(func.max(EventRow.seq), 0))
        .where(EventRow.session_pk == SessionRow.id)
        .scalar_subquery()
    )
    query = select(SessionRow, turn_count, last_seq).where(where).order_by(SessionRow.id)
    if limit is not None:
        query = query.limit(limit)
    return [
        SessionRecord(
            id=row.id,
            workspace_id=row.workspace_id,
            user_id=row.user_id,
            session_id=row.session_id,
            title=row.title,
            created_at=row.created_at,
            updated_at=row.updated_at,
            turn_count=int(turns),
            last_seq=int(seq),
        )
        for row, turns, seq in db.execute(query)
    ]


def touch(db: Session, session_pk: int) -> None:
    """Mark the session as just used."""
    db.execute(update(SessionRow).where(SessionRow.id == session_pk).values(updated_at=utcnow()))


def turns_of(key: SessionKey) -> Select[TurnRow]:
    return select(TurnRow).join(SessionRow, TurnRow.session_pk == SessionRow.id).where(is_key(key))


def turn_of(key: SessionKey, turn_index: int) -> Select[TurnRow]:
    return turns_of(key).where(TurnRow.turn_index == turn_index)


def max_turn_index(key: SessionKey) -> Select[int]:
    return (
        select(func.coalesce(func.max(TurnRow.turn_index), 0))
        .join(SessionRow, TurnRow.session_pk == SessionRow.id)
        .where(is_key(key))
    )


def events_of(key: SessionKey) -> Select[EventRow]:
    return (
        select(EventRow).join(SessionRow, EventRow.session_pk == SessionRow.id).where(is_key(key))
    )


def max_seq(key: SessionKey) -> Select[int]:
    return (
        select(func.coalesce(func.max(EventRow.seq), 0))
        .join(SessionRow, EventRow.session_pk == SessionRow.id)
        .where(is_key(key))
    )


def documents_of(key: SessionKey) -> Select[DocumentRow]:
    return (
        select(DocumentRow)
        .join(SessionRow, DocumentRow.session_pk == SessionRow.id)
        .where(is_key(key))
    )


def turn_record(row: TurnRow) -> TurnRecord:
    return TurnRecord(
        turn_index=row.turn_index,
        status=cast(TurnStatus, row.status),
        content=row.content,
        client_message_id=row.client_message_id,
        answer=row.answer,
        error_code=row.error_code,
        trace_id=row.trace_id,
        started_at=row.started_at,
        ended_at=row.ended_at,
    )


def encode_frame(frame: dict[str, Any]) -> str:
    return json.dumps(frame, ensure_ascii=False, separators=(",", ":"))


def event_record(row: EventRow) -> EventRecord:
    return EventRecord(
        seq=row.seq,
        turn_index=row.turn_index,
        channel=cast(Channel, row.channel),
        kind=row.kind,
        frame=json.loads(row.frame),
        created_at=row.created_at,
    )


def document_record(row: DocumentRow, *, with_text: bool) -> DocumentRecord:
    return DocumentRecord(
        id=row.id,
        document_id=row.document_id,
        name=row.name,
        chars=row.chars,
        created_at=row.created_at,
        text=row.text if with_text else None,
    )
