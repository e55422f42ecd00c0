"""Store fixtures: every store test runs on a fresh SQLite file and on PostgreSQL.

PostgreSQL tests get a schema of their own, made for the test and dropped
after it, reached through ``search_path``, so they never meet other data in
the ``test`` database. If nothing answers at 127.0.0.1:5432 they skip.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import Engine, create_engine, exc
from sqlalchemy.pool import NullPool

from fleet_rlm.identity import SessionKey
from fleet_rlm.store import Store

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
RUN_PREFIX = f"fleet_rlm_test_{uuid.uuid4().hex[:8]}_"

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@pytest.fixture(scope="session")
def postgres_admin() -> Iterator[Engine]:
    """A connection to the ``test`` database for making and dropping schemas."""
    engine = create_engine(PG_URL, connect_args={"connect_timeout": 2}, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")
    except exc.OperationalError as error:
        engine.dispose()
        reason = str(error.orig).strip().splitlines()[0] if error.orig else str(error)
        pytest.skip(f"PostgreSQL not reachable at 127.0.0.1:5432: {reason}")
    yield engine
    with engine.begin() as connection:
        leftovers = connection.exec_driver_sql(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE %(prefix)s",
            {"prefix": RUN_PREFIX + "%"},
        ).scalars()
        for schema in list(leftovers):
            connection.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
    engine.dispose()


@pytest.fixture(params=BACKENDS)
def database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The URL of an empty database on the backend under test."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('store') / 'data' / 'fleet_rlm.sqlite3'}"
        return

    admin: Engine = request.getfixturevalue("postgres_admin")
    schema = RUN_PREFIX + uuid.uuid4().hex[:12]
    with admin.begin() as connection:
        connection.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    with admin.begin() as connection:
        connection.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture
def make_store(database_url: str) -> Iterator[Callable[[], Store]]:
    """Open more stores on the test database, as other processes would; all disposed after."""
    stores: list[Store] = []

    def make() -> Store:
        store = Store(database_url)
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.dispose()


@pytest.fixture
def store(make_store: Callable[[], Store]) -> Store:
    """A migrated store on an empty database."""
    store = make_store()
    store.migrate()
    return store


@pytest.fixture
def key() -> SessionKey:
    return SessionKey("ws-1", "user-1", "session-1")


@pytest.fixture
def other_user_key(key: SessionKey) -> SessionKey:
    """Same workspace and session id as ``key``, another user."""
    return SessionKey(key.workspace_id, "user-2", key.session_id)
