"""Alembic's environment script for fleet-rlm: runs the migrations on a handed-over connection.

``fleet_rlm.store.migrate`` opens the connection, takes the migration lock,
begins the transaction and puts the connection in ``config.attributes``;
this script only runs the pending revisions inside that transaction.
Offline (``--sql``) mode and the alembic CLI are not supported.
"""

from __future__ import annotations

from alembic import context

from fleet_rlm.store.schema import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "fleet-rlm migrations run through fleet_rlm.store.migrate.migrate(engine)"
        " (or Store.migrate()), not the alembic command line"
    )

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
    # migrate() always runs us inside its own transaction, DDL included, on SQLite too.
    transactional_ddl=True,
)
with context.begin_transaction():
    context.run_migrations()
