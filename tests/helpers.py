"""Test helpers shared by several test modules (one copy, not one per module)."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timedelta, timezone
from typing import Any, Protocol

from sqlalchemy import Engine, Table, select, update

from threadstore import ThreadStore
from threadstore.models import deletions, threads
from threadstore.testing import backdate


class _KnowsThreads(Protocol):
    def thread_exists(self, thread_id: str) -> bool: ...


def now() -> datetime:
    return datetime.now(timezone.utc)


def _engine(store_or_engine: ThreadStore | Engine) -> Engine:
    return store_or_engine.engine if isinstance(store_or_engine, ThreadStore) else store_or_engine


def expired(store: ThreadStore, n: int, *, idle: timedelta = timedelta(days=10)) -> list[str]:
    """Create ``n`` threads through the store (users u0..u2) and make them idle for ``idle``."""
    ids = []
    for i in range(n):
        t = store.create_thread(user_id=f"u{i % 3}", metadata={"i": i})
        backdate(store, t.thread_id, now() - idle)
        ids.append(t.thread_id)
    return ids


def local_ids(store: ThreadStore | Engine) -> set[str]:
    """Every thread id with a local row (intent rows included)."""
    with _engine(store).connect() as conn:
        return set(conn.execute(select(threads.c.thread_id)).scalars())


def assert_no_orphans(store: ThreadStore | Engine, remote: _KnowsThreads, ids: list[str]) -> None:
    """Promise 1: no thread exists remotely without its local row."""
    local = local_ids(store)
    orphans = [tid for tid in ids if remote.thread_exists(tid) and tid not in local]
    assert orphans == [], "remote threads without a local row"


def set_row(
    store: ThreadStore, table: Table, ident: Any, *, key: Any = None, **values: Any
) -> None:
    """Overwrite columns of the rows whose ``key`` (default: the primary key) is ``ident``."""
    if key is None:
        (key,) = table.primary_key.columns
    with store.engine.begin() as conn:
        conn.execute(update(table).where(key == ident).values(**values))


def set_thread(store: ThreadStore, thread_id: str, **values: Any) -> None:
    set_row(store, threads, thread_id, **values)


def thread_row(store: ThreadStore, thread_id: str) -> dict[str, object]:
    with store.engine.connect() as conn:
        row = conn.execute(select(threads).where(threads.c.thread_id == thread_id)).mappings().one()
        return dict(row)


def deletion_log(store: ThreadStore) -> list[dict[str, object]]:
    with store.engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(deletions)).mappings()]


def run_python(code: str, *, check: bool = False) -> subprocess.CompletedProcess[str]:
    """``code`` run by a fresh interpreter (this one's): its output, as text."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=check)
