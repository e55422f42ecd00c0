"""Building the SQLAlchemy engine for a database URL, with the per-backend settings.

Only SQLite and PostgreSQL are supported. SQLite is shared by several
processes (Ray actors and HTTP replicas), so every connection turns on WAL,
foreign keys (for ``ON DELETE CASCADE``) and a busy timeout, and SQLAlchemy,
not the ``sqlite3`` driver, emits ``BEGIN``: ``BEGIN IMMEDIATE`` for writes,
so that two writers queue on the busy timeout instead of failing when one
upgrades a read lock (SQLite reports ``SQLITE_BUSY`` at once in that case),
and a plain deferred ``BEGIN`` for reads.

A connection that will write says so with the execution option ``WRITE_OPTION``.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, exc, make_url
from sqlalchemy.engine import URL, Connection
from sqlalchemy.pool import ConnectionPoolEntry

from fleet_rlm.errors import StoreError

logger = logging.getLogger(__name__)

WRITE_OPTION = "fleet_rlm_write"
SQLITE_BUSY_TIMEOUT_MS = 10_000
PG_CONNECT_TIMEOUT_S = 5
SUPPORTED_BACKENDS = ("sqlite", "postgresql")


def safe_url(url: str | URL) -> str:
    """``url`` with any password masked, fit for logs and error messages."""
    return make_url(url).render_as_string(hide_password=True)


def normalize_url(url: str | URL) -> URL:
    """Parse ``url``; a bare ``postgresql://`` or ``postgres://`` gets the psycopg driver."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def build_engine(url: str) -> Engine:
    """An engine for ``url``, configured for concurrent use by several processes."""
    parsed = normalize_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return _sqlite_engine(parsed)
    if backend == "postgresql":
        return _postgres_engine(parsed)
    raise StoreError(
        f"fleet-rlm stores its data in SQLite or PostgreSQL; got a {backend!r} URL"
        f" ({safe_url(parsed)}). Set DATABASE_URL to a postgresql+psycopg:// URL, or unset it"
        " to use the SQLite file under DATA_DIR",
        code="database_unsupported",
    )


def _sqlite_engine(url: URL) -> Engine:
    if url.database and url.database != ":memory:" and not url.database.startswith("file:"):
        # Owner-only: sandboxes run as other users and must not read the database.
        Path(url.database).expanduser().parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    engine = create_engine(url)
    event.listen(engine, "connect", _sqlite_on_connect)
    event.listen(engine, "begin", _sqlite_on_begin)
    return engine


def _sqlite_on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
    # The driver must not emit BEGIN itself; _sqlite_on_begin does it.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        _enable_wal(cursor)
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA synchronous = NORMAL")
    finally:
        cursor.close()


def _enable_wal(cursor: sqlite3.Cursor) -> None:
    """Switch the file to WAL (a persistent setting), retrying while another opener holds it.

    SQLite does not call the busy handler for this switch: a second process
    opening a fresh file at the same moment gets "database is locked" at once.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            if cursor.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal":
                return
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _sqlite_on_begin(connection: Connection) -> None:
    write = connection.get_execution_options().get(WRITE_OPTION, False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def _postgres_engine(url: URL) -> Engine:
    connect_args: dict[str, Any] = {}
    if "connect_timeout" not in url.query:
        connect_args["connect_timeout"] = PG_CONNECT_TIMEOUT_S
    return create_engine(url, connect_args=connect_args, pool_pre_ping=True)


@contextmanager
def database_errors(url: str, action: str) -> Iterator[None]:
    """Turn driver failures into ``StoreError`` naming the database and what to check."""
    try:
        yield
    except (exc.DBAPIError, exc.TimeoutError) as error:
        orig = getattr(error, "orig", None)
        reason = str(orig or error).strip().splitlines()[0]
        raise StoreError(
            f"could not {action}: the database at {url} answered {reason!r}. Check that it is"
            " running, that DATABASE_URL points at it and that fleet-rlm has migrated it"
        ) from error
