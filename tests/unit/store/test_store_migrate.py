"""Migrations: applied from code, idempotent, race-safe, equal to the ORM; newer ones refused."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text

from fleet_rlm.config import Settings
from fleet_rlm.errors import SchemaTooNewError, StoreError
from fleet_rlm.store import Store, head_revision
from fleet_rlm.store.migrate import current_revisions
from fleet_rlm.store.schema import Base


def test_migrate_is_idempotent(make_store: Callable[[], Store]) -> None:
    store = make_store()

    assert store.migrate() == head_revision()
    assert store.migrate() == head_revision()

    with store.engine.connect() as connection:
        assert current_revisions(connection) == (head_revision(),)


def test_migrate_does_not_depend_on_the_working_directory(
    make_store: Callable[[], Store], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    assert make_store().migrate() == head_revision()


def test_migrations_build_exactly_the_orm_schema(store: Store) -> None:
    with store.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        diff = compare_metadata(context, Base.metadata)

    assert diff == []


def test_concurrent_migrate_calls_both_succeed(make_store: Callable[[], Store]) -> None:
    stores = [make_store() for _ in range(3)]
    barrier = threading.Barrier(len(stores))
    results: list[str] = []
    errors: list[BaseException] = []

    def run(store: Store) -> None:
        barrier.wait()
        try:
            results.append(store.migrate())
        except BaseException as error:  # collected and re-raised in the test thread
            errors.append(error)

    threads = [threading.Thread(target=run, args=(store,)) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert errors == []
    assert results == [head_revision()] * len(stores)


def test_a_schema_from_a_newer_release_is_refused(store: Store) -> None:
    with store.engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '9999_future'"))

    with pytest.raises(SchemaTooNewError) as raised:
        store.migrate()

    assert raised.value.message.startswith(
        "this database was migrated by a newer fleet-rlm (revision 9999_future);"
        " upgrade fleet-rlm or point DATABASE_URL at another database"
    )
    assert raised.value.code == "database_schema_too_new"


def test_ping_answers(store: Store) -> None:
    store.ping()


def test_ping_names_an_unreachable_database() -> None:
    store = Store("postgresql+psycopg://postgres@127.0.0.1:1/test?connect_timeout=2")
    try:
        with pytest.raises(StoreError, match="127.0.0.1:1/test"):
            store.ping()
    finally:
        store.dispose()


def test_an_unsupported_backend_is_refused() -> None:
    with pytest.raises(StoreError, match="SQLite or PostgreSQL"):
        Store("mysql://root@127.0.0.1/fleet")


def test_from_settings_creates_the_data_folder(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "nested" / "data", database_url=None)
    store = Store.from_settings(settings)
    try:
        store.migrate()
    finally:
        store.dispose()

    assert (tmp_path / "nested" / "data" / "fleet_rlm.sqlite3").is_file()


def test_sqlite_connections_use_wal_foreign_keys_and_a_busy_timeout(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite3'}")
    try:
        with store.engine.connect() as connection:
            pragma = connection.exec_driver_sql
            assert pragma("PRAGMA journal_mode").scalar() == "wal"
            assert pragma("PRAGMA foreign_keys").scalar() == 1
            assert pragma("PRAGMA busy_timeout").scalar() == 10_000
    finally:
        store.dispose()


def test_a_store_pickles_as_its_url(store: Store) -> None:
    import pickle

    copy = pickle.loads(pickle.dumps(store))
    try:
        assert copy.url == store.url
        copy.ping()
    finally:
        copy.dispose()
