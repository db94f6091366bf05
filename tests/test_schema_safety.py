"""Databases that are not (only) ours, and upgrades that were interrupted.

* threadstore never adds its tables to a database holding other tables unless
  ``threadstore db upgrade`` is run; it keeps its revision in its own version
  table, so a host application's Alembic can share the database; a 0.1 store
  (revision in ``alembic_version``) keeps opening; a newer schema is named as such.
* MySQL/MariaDB cannot roll DDL back: an upgrade killed half-way leaves part of
  it behind, and the next upgrade completes it. The migration lock is checked
  and released.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from click.testing import CliRunner, Result
from sqlalchemy import Engine, create_engine, insert, inspect, text
from sqlalchemy.engine import make_url

from threadstore import ThreadStore, db
from threadstore.cli import cli
from threadstore.errors import ConfigError
from threadstore.models import metadata, threads
from threadstore.testing import FakeRemote

WHEN = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = db.open_engine(db_url)
    try:
        yield eng
    finally:
        eng.dispose()


def _invoke(db_url: str, args: list[str]) -> Result:
    return CliRunner().invoke(cli, ["--db", db_url, *args])


def _tables(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names())


def _version(engine: Engine, table: str = db.VERSION_TABLE) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(text(f"SELECT version_num FROM {table}")).scalars())


def _ours(obj: object, name: str | None, type_: str, reflected: bool, other: object) -> bool:
    return not (type_ == "table" and reflected and other is None)  # the host's own tables


def _matches_the_models(engine: Engine) -> bool:
    """threadstore's tables are exactly the models' (other tables are not compared)."""
    exists_here = db.include_object(engine.dialect.name)

    def ours(obj: object, name: str | None, type_: str, reflected: bool, other: object) -> bool:
        return _ours(obj, name, type_, reflected, other) and exists_here(
            obj, name, type_, reflected, other
        )

    with engine.connect() as conn:
        ctx = MigrationContext.configure(
            conn,
            opts={
                "compare_type": True,
                "compare_server_default": db.compare_server_default,
                "version_table": db.VERSION_TABLE,
                "include_object": ours,
            },
        )
        return compare_metadata(ctx, metadata) == []


# ------------------------------------------------------------------ not ours


def test_a_foreign_database_gets_tables_only_from_db_upgrade(db_url: str, engine: Engine) -> None:
    """Opening another application's database refuses with its URL and adds nothing."""
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE customers (id INTEGER PRIMARY KEY)"))
    with pytest.raises(ConfigError, match="not a threadstore store") as info:
        ThreadStore(db_url, remote=FakeRemote())
    assert str(make_url(db_url).database) in str(info.value)
    swept = _invoke(db_url, ["sweep", "--days", "7"])
    assert swept.exit_code == 2
    assert "not a threadstore store" in swept.stderr
    assert len(swept.stderr.strip().splitlines()) == 1
    assert _tables(engine) == {"customers"}

    upgraded = _invoke(db_url, ["db", "upgrade"])
    assert upgraded.exit_code == 0, upgraded.stderr
    assert {"customers", "threads", db.VERSION_TABLE} <= _tables(engine)
    with ThreadStore(db_url, remote=FakeRemote()) as store:
        store.create_thread(user_id="u")


def test_a_host_applications_alembic_shares_the_database(db_url: str, engine: Engine) -> None:
    """The host's `alembic_version` is left alone; threadstore keeps its own version table."""
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE orders (id INTEGER PRIMARY KEY)"))
        conn.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)"))
        conn.execute(text("INSERT INTO alembic_version VALUES ('host_rev_42')"))
    assert _invoke(db_url, ["db", "upgrade"]).exit_code == 0
    with ThreadStore(db_url, remote=FakeRemote()) as store:
        store.create_thread(user_id="u")
    assert _version(engine, "alembic_version") == ["host_rev_42"]
    assert _version(engine) == [db.SCHEMA_HEAD]
    current = _invoke(db_url, ["db", "current"])
    assert (current.exit_code, current.stdout.strip()) == (0, db.SCHEMA_HEAD)
    assert _invoke(db_url, ["db", "check"]).exit_code == 0
    assert _matches_the_models(engine)


def test_a_01_store_keeps_opening_and_moves_its_revision(db_url: str, engine: Engine) -> None:
    """0.1 kept revision 0001 in `alembic_version`: opening adopts it, keeping the rows."""
    db.upgrade(engine, "0001")
    with engine.begin() as conn:
        conn.execute(text(f"DROP TABLE {db.VERSION_TABLE}"))
        conn.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)"))
        conn.execute(text("INSERT INTO alembic_version VALUES ('0001')"))
        conn.execute(
            insert(threads),
            [{"thread_id": "thread_01", "user_id": "u", "created_at": WHEN, "last_active": WHEN}],
        )
    with ThreadStore(db_url, remote=FakeRemote()) as store:
        assert store.get_thread("thread_01").last_active == WHEN
    assert _version(engine) == [db.SCHEMA_HEAD]
    assert "alembic_version" not in _tables(engine)
    assert _matches_the_models(engine)


def test_a_newer_schema_is_named_and_never_upgraded(db_url: str, engine: Engine) -> None:
    """A schema from a newer threadstore: one line naming both revisions, no upgrade advice."""
    ThreadStore(db_url, remote=FakeRemote()).close()
    with engine.begin() as conn:
        conn.execute(text(f"UPDATE {db.VERSION_TABLE} SET version_num = '9999'"))
    expected = f"schema 9999 is newer than this threadstore ({db.SCHEMA_HEAD})"
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        ThreadStore(db_url, remote=FakeRemote())
    for args in (["db", "upgrade"], ["db", "check"], ["sweep", "--days", "7"]):
        result = _invoke(db_url, args)
        assert result.exit_code != 0, args
        assert expected in result.stderr, args
        assert "db upgrade" not in result.stderr, args
    assert _version(engine) == ["9999"]


# ------------------------------------------------------------------ interrupted upgrades


def test_an_upgrade_interrupted_half_way_is_completed_by_the_next(
    db_url: str, engine: Engine
) -> None:
    """A first upgrade killed after some tables and before its revision: `db upgrade` finishes."""
    db.upgrade(engine, "0001")
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE runs"))
        conn.execute(text(f"DELETE FROM {db.VERSION_TABLE}"))
    if engine.dialect.name in db.MYSQL_DIALECTS:
        with engine.begin() as conn:
            conn.execute(text("DROP INDEX ix_threads_status ON threads"))
    else:
        with engine.begin() as conn:
            conn.execute(text("DROP INDEX ix_threads_status"))
    result = _invoke(db_url, ["db", "upgrade"])
    assert result.exit_code == 0, result.stderr
    assert _version(engine) == [db.SCHEMA_HEAD]
    assert _matches_the_models(engine)


@pytest.mark.mysql
def test_a_01_first_upgrade_killed_on_mysql_is_completed(mysql_url: str) -> None:
    """0.1 killed mid-upgrade left an empty `alembic_version` and `deletions`: it opens now."""
    engine = create_engine(mysql_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)"))
            conn.execute(
                text(
                    "CREATE TABLE deletions (id INTEGER NOT NULL AUTO_INCREMENT, "
                    "thread_id VARCHAR(64) NOT NULL, workspace VARCHAR(255), "
                    "user_id VARCHAR(255), created_at DATETIME, last_active DATETIME, "
                    "deleted_at DATETIME NOT NULL, reason VARCHAR(32) NOT NULL, "
                    "remote_result VARCHAR(32) NOT NULL, "
                    "message_count INTEGER NOT NULL DEFAULT 0, "
                    "run_count INTEGER NOT NULL DEFAULT 0, deleted_by VARCHAR(64), "
                    "CONSTRAINT pk_deletions PRIMARY KEY (id))"
                )
            )
        with ThreadStore(mysql_url, remote=FakeRemote()) as store:
            store.create_thread(user_id="u")
        assert _version(engine) == [db.SCHEMA_HEAD]
        assert "alembic_version" not in _tables(engine)
        assert _matches_the_models(engine)
    finally:
        engine.dispose()


@pytest.mark.mysql
def test_the_mysql_types_step_killed_half_way_is_completed(mysql_url: str) -> None:
    """Killed inside the MySQL types migration (a foreign key dropped, a column not yet
    converted): the next open finishes it."""
    engine = create_engine(mysql_url)
    try:
        db.upgrade(engine)
        with engine.begin() as conn:
            conn.execute(
                text("ALTER TABLE messages DROP FOREIGN KEY fk_messages_thread_id_threads")
            )
            conn.execute(text("ALTER TABLE messages MODIFY created_at DATETIME NOT NULL"))
            conn.execute(text(f"UPDATE {db.VERSION_TABLE} SET version_num = '0003'"))
        with ThreadStore(mysql_url, remote=FakeRemote()) as store:
            store.create_thread(user_id="u", messages=[{"role": "user", "content": "hi"}])
        assert _version(engine) == [db.SCHEMA_HEAD]
        names = {fk["name"] for fk in inspect(engine).get_foreign_keys("messages")}
        assert "fk_messages_thread_id_threads" in names
        assert _matches_the_models(engine)
        with engine.connect() as conn:
            precision = conn.execute(
                text(
                    "SELECT DATETIME_PRECISION FROM information_schema.COLUMNS WHERE "
                    "TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'messages' "
                    "AND COLUMN_NAME = 'created_at'"
                )
            ).scalar()
        assert precision == 6
    finally:
        engine.dispose()


# ------------------------------------------------------------------ the migration lock


def _lock_name(conn: object) -> str:
    name = conn.execute(  # type: ignore[attr-defined]
        text("SELECT CONCAT('threadstore_migrate_', MD5(DATABASE()))")
    ).scalar()
    return str(name)


@pytest.mark.mysql
def test_the_migration_lock_is_released_after_an_upgrade(mysql_url: str) -> None:
    """After an upgrade the lock is free, though the engine keeps its pooled connection."""
    engine = db.open_engine(mysql_url)
    other = create_engine(mysql_url)
    try:
        db.upgrade(engine)
        with other.connect() as conn:
            assert conn.execute(text("SELECT IS_FREE_LOCK(:n)"), {"n": _lock_name(conn)}).scalar()
    finally:
        engine.dispose()
        other.dispose()


@pytest.mark.mysql
def test_a_migration_lock_held_elsewhere_is_a_clear_error(
    mysql_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While another session holds the migration lock, an upgrade gives up with one line."""
    monkeypatch.setattr(db, "MIGRATION_LOCK_TIMEOUT", 1)
    holder = create_engine(mysql_url)
    engine = db.open_engine(mysql_url)
    try:
        with holder.connect() as conn:
            name = _lock_name(conn)
            assert conn.execute(text("SELECT GET_LOCK(:n, 0)"), {"n": name}).scalar() == 1
            with pytest.raises(ConfigError, match="migration lock"):
                db.upgrade(engine)
            conn.execute(text("SELECT RELEASE_LOCK(:n)"), {"n": name})
        db.upgrade(engine)
        assert _version(engine) == [db.SCHEMA_HEAD]
    finally:
        engine.dispose()
        holder.dispose()
