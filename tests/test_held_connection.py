"""A create's two writes on a connection held out of the pool (SQLite files).

``db.HeldConnection`` saves a pool checkout and check-in per write on the hot
path of every create. What a user can observe of it: the connection goes back
to the pool on close (or when a store is dropped without close), threads that
create at once never wait for it or collide on it, and a forked child does not
write through its parent's connection.
"""

from __future__ import annotations

import gc
import os
import threading

import pytest
from sqlalchemy import func, select

from threadstore import ThreadStore, db
from threadstore.models import threads
from threadstore.testing import FakeRemote


def _count(store: ThreadStore) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(threads)).scalar_one())


def test_close_gives_the_held_connection_back_to_a_callers_engine(sqlite_url: str) -> None:
    """On the caller's own engine: held while the store lives, back in the pool after close."""
    engine = db.open_engine(sqlite_url)
    try:
        store = ThreadStore(engine, remote=FakeRemote())
        store.create_thread(user_id="u1")
        assert engine.pool.checkedout() == 1  # type: ignore[attr-defined]
        store.close()
        assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        again = ThreadStore(engine, remote=FakeRemote())
        again.create_thread(user_id="u2")
        del again  # dropped without close: given back when it is collected
        gc.collect()
        assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    finally:
        engine.dispose()


def test_server_backends_and_memory_databases_hold_nothing(db_url: str) -> None:
    """Only SQLite files hold a connection: servers keep the pool's liveness check."""
    with ThreadStore(db_url, remote=FakeRemote()) as store:
        store.create_thread(user_id="u1")
        expected = 1 if store.engine.dialect.name == "sqlite" else 0
        assert store.engine.pool.checkedout() == expected  # type: ignore[attr-defined]
    with ThreadStore("sqlite://", remote=FakeRemote()) as memory:
        assert memory.create_thread(user_id="u1").user_id == "u1"


def test_threads_creating_at_once_all_land(sqlite_url: str) -> None:
    """Eight threads creating together: every create lands, none fails on the held one."""
    with ThreadStore(sqlite_url, remote=FakeRemote()) as store:
        errors: list[BaseException] = []

        def work(n: int) -> None:
            try:
                for _ in range(25):
                    store.create_thread(user_id=f"u{n}")
            except BaseException as exc:
                errors.append(exc)

        workers = [threading.Thread(target=work, args=(n,)) for n in range(8)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        assert errors == []
        assert _count(store) == 200
        assert store.stats().threads_creating == 0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_writes_through_its_own_connection(sqlite_url: str) -> None:
    """Parent and forked child both create after the fork; the file stays sound."""
    with ThreadStore(sqlite_url, remote=FakeRemote()) as store:
        store.create_thread(user_id="before")  # the parent now holds a connection
        pid = os.fork()
        if pid == 0:  # the child: exit code 0 only if all its creates landed
            code = 1
            try:
                for _ in range(5):
                    store.create_thread(user_id="child")
                code = 0
            finally:
                os._exit(code)
        for _ in range(5):
            store.create_thread(user_id="parent")
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert _count(store) == 11
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA integrity_check").scalar_one() == "ok"


def test_a_create_waits_for_another_writer_instead_of_failing(sqlite_url: str) -> None:
    """Another process holding SQLite's write lock: the create waits for it, then lands."""
    import sqlite3
    import time

    with ThreadStore(sqlite_url, remote=FakeRemote()) as store:
        store.create_thread(user_id="first")
        other = sqlite3.connect(
            sqlite_url.removeprefix("sqlite:///"), isolation_level=None, check_same_thread=False
        )
        other.execute("BEGIN IMMEDIATE")
        release = threading.Timer(0.3, other.execute, args=("COMMIT",))
        release.start()
        started = time.monotonic()
        try:
            created = store.create_thread(user_id="second")
        finally:
            release.join()
            other.close()
        assert time.monotonic() - started >= 0.25  # it waited for the lock
        assert store.get_thread(created.thread_id).user_id == "second"
        assert _count(store) == 2
