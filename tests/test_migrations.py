"""Schema migrations: the migrations build exactly the models' schema, and undo it."""

from __future__ import annotations

import threading

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from threadstore import ThreadStore, db
from threadstore.models import metadata
from threadstore.testing import FakeRemote


def test_upgrade_head_matches_the_models_exactly(db_url: str) -> None:
    """After `upgrade head`, Alembic's autogenerate finds no difference from the models."""
    engine = db.open_engine(db_url)
    try:
        db.upgrade(engine)
        with engine.connect() as conn:
            ctx = MigrationContext.configure(
                conn,
                opts={
                    "compare_type": True,
                    "compare_server_default": db.compare_server_default,
                    "include_object": db.include_object(conn.dialect.name),
                    "version_table": db.VERSION_TABLE,
                },
            )
            assert compare_metadata(ctx, metadata) == []
            assert db.current_revision(conn) == db.head_revision()
    finally:
        engine.dispose()


def test_downgrade_base_removes_every_table(db_url: str) -> None:
    """`downgrade base` drops all of threadstore's tables; upgrading again works."""
    engine = db.open_engine(db_url)
    try:
        db.upgrade(engine)
        db.downgrade(engine, "base")
        left = set(inspect(engine).get_table_names()) - {db.VERSION_TABLE}
        assert left == set()
        db.upgrade(engine)
        assert {"threads", "messages", "runs", "deletions"} <= set(
            inspect(engine).get_table_names()
        )
    finally:
        engine.dispose()


def test_opening_a_store_migrates_an_older_database(db_url: str) -> None:
    """ThreadStore(url) brings an empty or downgraded database to head on open."""
    engine = db.open_engine(db_url)
    db.upgrade(engine)
    db.downgrade(engine, "base")
    engine.dispose()
    with ThreadStore(db_url, remote=FakeRemote()) as store:
        with store.engine.connect() as conn:
            assert db.current_revision(conn) == db.head_revision()
        store.create_thread(user_id="u")


def test_concurrent_first_opens_do_not_collide(db_url: str) -> None:
    """Several stores opening one fresh database at once all succeed."""
    errors: list[BaseException] = []

    def open_one() -> None:
        try:
            ThreadStore(db_url, remote=FakeRemote()).close()
        except BaseException as exc:  # pragma: no cover - the assertion shows it
            errors.append(exc)

    workers = [threading.Thread(target=open_one) for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert errors == []


def test_schema_head_constant_matches_the_scripts() -> None:
    """db.SCHEMA_HEAD (the fast check on open) names the newest migration."""
    assert db.head_revision() == db.SCHEMA_HEAD
