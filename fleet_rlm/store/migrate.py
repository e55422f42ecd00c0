"""Applying the Alembic migrations in ``migrations/`` from code, at start-up.

No alembic CLI, no ``alembic.ini`` and no reliance on the working directory:
the migrations folder is found next to this module. ``migrate(engine)`` is
idempotent and safe when several processes call it at once: the whole check
and upgrade runs in one transaction that first takes a lock (``BEGIN
IMMEDIATE`` on SQLite, a transaction-scoped advisory lock on PostgreSQL), so
the second caller waits and then finds the schema current.

A database stamped with a revision this code does not know was migrated by a
newer fleet-rlm; ``migrate`` refuses it with ``SchemaTooNewError`` rather than
run old code against a schema it does not understand.
"""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, text

from fleet_rlm.errors import SchemaTooNewError
from fleet_rlm.store.engine import WRITE_OPTION, safe_url

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# Any fixed signed 64-bit number; every fleet-rlm process migrating one database agrees on it.
PG_MIGRATION_LOCK_KEY = 0x666C656574726C6D  # "fleetrlm"


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic config for the packaged migrations; ``env.py`` runs on ``connection``."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def script_directory() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head_revision(script: ScriptDirectory | None = None) -> str:
    """The newest revision this code knows."""
    head = (script or script_directory()).get_current_head()
    if head is None:
        raise RuntimeError(f"no migrations found in {MIGRATIONS_DIR}")
    return head


def current_revisions(connection: Connection) -> tuple[str, ...]:
    """The revisions the database is stamped with; empty for a fresh database."""
    return tuple(MigrationContext.configure(connection).get_current_heads())


def migrate(engine: Engine) -> str:
    """Bring the database up to the newest revision and return it."""
    url = safe_url(engine.url)
    script = script_directory()
    head = head_revision(script)
    known = {revision.revision for revision in script.walk_revisions()}

    with engine.connect() as connection:
        connection.execution_options(**{WRITE_OPTION: True})
        with connection.begin():
            _lock(connection)
            current = current_revisions(connection)
            unknown = [revision for revision in current if revision not in known]
            if unknown:
                raise SchemaTooNewError(
                    f"this database was migrated by a newer fleet-rlm (revision"
                    f" {', '.join(unknown)}); upgrade fleet-rlm or point DATABASE_URL at"
                    f" another database (database: {url})"
                )
            if current == (head,):
                logger.info("database schema is current at revision %s (%s)", head, url)
                return head

            logger.info(
                "migrating database %s from revision %s to %s",
                url,
                ", ".join(current) or "none",
                head,
            )
            command.upgrade(alembic_config(connection), "head")

    logger.info("database %s migrated to revision %s", url, head)
    return head


def _lock(connection: Connection) -> None:
    """Serialize migrators; on SQLite ``BEGIN IMMEDIATE`` already holds the write lock."""
    if connection.dialect.name == "postgresql":
        key = {"key": PG_MIGRATION_LOCK_KEY}
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), key)
