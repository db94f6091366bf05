"""Exports read in two streams (issue 14) write what one stream writes, from one snapshot.

A whole-table export of messages, runs or steps is read in chunks by two
streams — on SQLite a second process, on PostgreSQL a second connection — and
written in order. Not timed (speed is in benchmarks/bench_export.py): these
tests prove the bytes, the snapshot, the fallbacks and the clean-up.
"""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Integer, case, func
from sqlalchemy import cast as sql_cast

from threadstore import StoreError, ThreadStore
from threadstore import export as export_module
from threadstore.models import utcnow
from threadstore.testing import FakeRemote

TEXTS = ['comma, "quotes"', "two\nlines\r\n", "emoji 🎉 你好", "", "back\\slash\x1f"]
FILLER = " and so on" * 120  # long enough for a PostgreSQL page to hold a few messages


@pytest.fixture
def spawned(monkeypatch: pytest.MonkeyPatch) -> list[export_module._Worker]:
    """Every second process an export starts (SQLite), split from the first rowid on;
    on PostgreSQL, chunks of one page, split from two pages on."""
    monkeypatch.setattr(export_module, "SPLIT_ROWS", 1)
    monkeypatch.setattr(export_module, "PG_CHUNK_PAGES", 1)
    monkeypatch.setattr(export_module, "SPLIT_PAGES", 2)
    workers: list[export_module._Worker] = []
    spawn = export_module._Worker.spawn

    def spy(job: dict[str, Any]) -> export_module._Worker | None:
        worker = spawn(job)
        if worker is not None:
            workers.append(worker)
        return worker

    monkeypatch.setattr(export_module._Worker, "spawn", staticmethod(spy))
    return workers


@pytest.fixture
def seconds(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every second connection a PostgreSQL export reads with (in its snapshot)."""
    found: list[Any] = []
    second = export_module._PgCopyChunks._second

    def spy(self: export_module._PgCopyChunks) -> Any:
        conn = second(self)
        if conn is not None:
            found.append(conn)
        return conn

    monkeypatch.setattr(export_module._PgCopyChunks, "_second", spy)
    return found


def _fill(store: ThreadStore, threads: int = 6, per_thread: int = 5) -> None:
    """Threads of tricky messages and a run each; one thread deleted (a gap in the rows)."""
    ids = []
    for i in range(threads):
        t = store.create_thread(user_id=f"u{i % 2}", workspace="w" if i % 3 else None)
        ids.append(t.thread_id)
        for j in range(per_thread):
            text = TEXTS[(i + j) % len(TEXTS)] + (FILLER if j else "")
            store.add_message(t.thread_id, text, metadata={"j": j})
        store.run(t.thread_id, assistant_id="asst_1", poll_interval=0.01)
    store.delete_thread(ids[2])


def _export(store: ThreadStore, **options: Any) -> bytes:
    out = io.BytesIO()
    export_module.export(store.engine, out, codec=store.codec, **options)
    return out.getvalue()


def _no_export_threads() -> bool:
    return not [t for t in threading.enumerate() if t.name.startswith("threadstore-export")]


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
@pytest.mark.parametrize("table", ["messages", "runs"])
def test_split_export_writes_the_bytes_of_the_portable_path(
    db_url: str,
    spawned: list[export_module._Worker],
    seconds: list[Any],
    monkeypatch: pytest.MonkeyPatch,
    table: str,
    fmt: str,
) -> None:
    """Chunks of 1, 2 or 3 rows over two streams, one stream, Python's writers: same bytes."""
    with ThreadStore(db_url, remote=FakeRemote()) as store:
        _fill(store)
        outputs = [_export(store, table=table, fmt=fmt)]  # pyarrow's paths for CSV
        monkeypatch.setitem(sys.modules, "pyarrow", None)  # a default install from here on
        outputs += [_export(store, table=table, fmt=fmt, batch_size=n) for n in (1, 2, 3)]
        with monkeypatch.context() as mp:
            mp.setattr(export_module, "SPLIT_ROWS", 10**12)
            mp.setattr(export_module, "SPLIT_PAGES", 10**12)
            outputs.append(_export(store, table=table, fmt=fmt, batch_size=2))
        with monkeypatch.context() as mp:
            mp.setattr(export_module, "_sqlite_lines", lambda *a: None)
            mp.setattr(export_module, "_pg_copy", lambda *a: None)
            outputs.append(_export(store, table=table, fmt=fmt))
    assert outputs[0].count(b"asst_1") >= 5
    assert outputs[1:] == [outputs[0]] * 5
    if db_url.startswith("sqlite"):
        assert len(spawned) == 3  # every split export above had its second process
        assert all(w.proc.returncode == 0 for w in spawned)
    if db_url.startswith("postgresql") and table == "messages" and fmt == "csv":
        assert len(seconds) == 4  # every COPY export above, but the one not to split


@pytest.mark.parametrize(
    "filters",
    [
        {"user_id": "u1"},
        {"workspace": "w"},
        {"since": utcnow() - timedelta(hours=1)},
        {"until": utcnow() + timedelta(hours=1), "user_id": "u0"},
    ],
    ids=["user", "workspace", "since", "until-and-user"],
)
def test_filtered_exports_write_the_same_bytes_on_every_path(
    db_url: str,
    spawned: list[export_module._Worker],
    monkeypatch: pytest.MonkeyPatch,
    filters: dict[str, Any],
) -> None:
    """With a filter (where an index may set the order) every path agrees, byte for byte."""
    with ThreadStore(db_url, remote=FakeRemote()) as store:
        _fill(store)
        for fmt in ("jsonl", "csv"):
            fast = _export(store, table="messages", fmt=fmt, batch_size=2, **filters)
            with monkeypatch.context() as mp:
                mp.setitem(sys.modules, "pyarrow", None)
                mp.setattr(export_module, "_sqlite_lines", lambda *a: None)
                mp.setattr(export_module, "_pg_copy", lambda *a: None)
                portable = _export(store, table="messages", fmt=fmt, **filters)
            assert fast == portable
            assert fast.count(b"\n") > 2


def test_split_sqlite_export_reads_one_snapshot_while_a_writer_commits(
    sqlite_url: str, spawned: list[export_module._Worker]
) -> None:
    """A writer commits a new version to rows in both streams' chunks, again and again:
    every export has one version throughout, never one stream's and the other's."""
    with ThreadStore(sqlite_url, remote=FakeRemote()) as store:
        t = store.create_thread(user_id="u1")
        for _ in range(4):
            store.add_message(t.thread_id, "v0")
        path = store.engine.url.database
        assert path is not None
        stop = threading.Event()

        def write() -> None:
            conn = sqlite3.connect(path, timeout=30, isolation_level=None)
            version = 0
            while not stop.is_set():
                version += 1
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("UPDATE messages SET content = ?", (f"v{version}",))
                conn.execute("COMMIT")
                time.sleep(0.002)  # an app's pace, not a loop that never lets the lock go
            conn.close()

        writer = threading.Thread(target=write)
        writer.start()
        try:
            versions = []
            for _ in range(15):
                lines = _export(store, table="messages", batch_size=1).splitlines()
                versions.append({json.loads(line)["content"] for line in lines})
        finally:
            stop.set()
            writer.join()
    split = [w for w in spawned if w.proc.returncode == 0]  # read its chunks to the end
    assert len(split) >= 5, [w.proc.returncode for w in spawned]
    assert all(len(seen) == 1 for seen in versions), versions
    assert len({next(iter(seen)) for seen in versions}) > 1  # the writer did commit meanwhile


def _failing_at(monkeypatch: pytest.MonkeyPatch, message_id: str) -> None:
    """SQLite fails to render ``message_id``'s line: malformed JSON, as a damaged value would."""
    line = export_module._sqlite_line

    def failing(query: Any, fmt: str, sub: Any) -> Any:
        bad = func.json(case((sub.c.message_id == message_id, "not json"), else_='""'))
        return line(query, fmt, sub).op("||")(bad)

    monkeypatch.setattr(export_module, "_sqlite_line", failing)


@pytest.mark.parametrize("stream", ["this process", "second process"])
def test_a_failing_stream_fails_the_export_and_leaves_nothing_running(
    sqlite_url: str,
    spawned: list[export_module._Worker],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    stream: str,
) -> None:
    """A database error in either stream: one StoreError, no file, no process or thread left."""
    with ThreadStore(sqlite_url, remote=FakeRemote()) as store:
        _fill(store)
        ids = [m.message_id for t in store.list_threads() for m in store.messages(t.thread_id)]
        with store.engine.connect() as conn:
            rowids = dict(conn.exec_driver_sql("SELECT message_id, rowid FROM messages").all())
        lo = min(rowids.values())
        # Chunks of 2 rowids: chunk 2k is this process's, chunk 2k+1 the worker's.
        wanted = 0 if stream == "this process" else 1
        bad = next(i for i in ids if (rowids[i] - lo) // 2 % 2 == wanted and rowids[i] - lo > 4)
        _failing_at(monkeypatch, bad)
        target = tmp_path / "messages.jsonl"
        with pytest.raises(StoreError, match=r"export of messages failed: .*malformed JSON"):
            export_module.export(store.engine, target, codec=store.codec, table="messages",
                                 batch_size=2)
    assert not target.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]
    assert len(spawned) == 1
    assert spawned[0].proc.poll() is not None
    assert _no_export_threads()


class _Closing(io.BytesIO):
    """A reader that goes away after the first write, as ``| head`` does."""

    def write(self, data: Any) -> int:
        if self.tell():
            raise BrokenPipeError(32, "Broken pipe")
        return super().write(data)


@pytest.mark.parametrize("stop", [BrokenPipeError, KeyboardInterrupt])
@pytest.mark.parametrize("db_url", ["sqlite", "postgres"], indirect=True)
def test_a_consumer_that_stops_ends_both_streams(
    db_url: str,
    spawned: list[export_module._Worker],
    seconds: list[Any],
    monkeypatch: pytest.MonkeyPatch,
    stop: type[BaseException],
) -> None:
    """A closed pipe or Ctrl-C while writing: the export ends, and so do its second
    stream (process or connection) and its threads; the store exports again."""
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # CSV as a default install writes it
    with ThreadStore(db_url, remote=FakeRemote()) as store:
        _fill(store)
        out = _Closing()
        if stop is KeyboardInterrupt:
            monkeypatch.setattr(out, "write", _interrupt_after_first(out.write))
        with pytest.raises(stop):
            export_module.export(store.engine, out, codec=store.codec, table="messages",
                                 fmt="csv", batch_size=1)
        if db_url.startswith("sqlite"):
            assert len(spawned) == 1
            assert spawned[0].proc.poll() is not None
        else:
            assert len(seconds) == 1
            assert seconds[0].closed
        assert _no_export_threads()
        with store.engine.connect() as conn:
            stored = conn.exec_driver_sql("SELECT count(*) FROM messages").scalar_one()
        assert store.export(io.StringIO(), table="messages", fmt="csv") == stored


def _interrupt_after_first(write: Any) -> Any:
    calls = iter(range(10**6))

    def interrupting(data: Any) -> int:
        if next(calls):
            raise KeyboardInterrupt
        return int(write(data))

    return interrupting


def test_an_export_while_a_writer_holds_the_lock_reads_alone(
    sqlite_url: str, spawned: list[export_module._Worker], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No write lock to be had (a long write): one stream, the same bytes, no waiting on it."""
    monkeypatch.setattr(export_module, "LOCK_WAIT", 0.05)
    with ThreadStore(sqlite_url, remote=FakeRemote()) as store:
        _fill(store)
        split = _export(store, table="messages", batch_size=2)
        assert len(spawned) == 1
        path = store.engine.url.database
        assert path is not None
        writer = sqlite3.connect(path, isolation_level=None)
        writer.execute("BEGIN IMMEDIATE")
        try:
            alone = _export(store, table="messages", batch_size=2)
        finally:
            writer.execute("ROLLBACK")
            writer.close()
    assert alone == split
    assert all(w.proc.poll() is not None for w in spawned)


def test_an_in_memory_store_exports_in_one_stream(
    spawned: list[export_module._Worker], monkeypatch: pytest.MonkeyPatch
) -> None:
    """sqlite:// (in memory) has nothing a second process could open: one stream, same bytes."""
    with ThreadStore("sqlite://", remote=FakeRemote()) as store:
        _fill(store)
        fast = _export(store, table="messages", fmt="csv", batch_size=2)
        monkeypatch.setattr(export_module, "_sqlite_lines", lambda *a: None)
        monkeypatch.setitem(sys.modules, "pyarrow", None)
        assert _export(store, table="messages", fmt="csv") == fast
    assert spawned == []


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_split_postgres_export_reads_one_snapshot_while_a_writer_commits(
    db_url: str, spawned: list[export_module._Worker], seconds: list[Any]
) -> None:
    """A writer commits a new version of every message (new row versions, on any page),
    again and again: each export has every message once, all of one version."""
    with ThreadStore(db_url, remote=FakeRemote()) as store:
        _fill(store)
        with store.engine.connect() as conn:
            stored = conn.exec_driver_sql("SELECT count(*) FROM messages").scalar_one()
        stop = threading.Event()

        def write() -> None:
            version = 0
            with store.engine.connect() as conn:
                while not stop.is_set():
                    version += 1
                    with conn.begin():
                        conn.exec_driver_sql(
                            "UPDATE messages SET content = %(v)s", {"v": f"v{version}"}
                        )

        writer = threading.Thread(target=write)
        writer.start()
        try:
            exports = [_export(store, table="messages", fmt="csv") for _ in range(10)]
        finally:
            stop.set()
            writer.join()
    assert len(seconds) == 10
    seen = []
    for text in exports:
        rows = list(csv.DictReader(io.StringIO(text.decode(), newline="")))
        assert len(rows) == stored
        assert len({r["message_id"] for r in rows}) == stored
        assert len({r["content"] for r in rows}) == 1
        seen.append(rows[0]["content"])
    assert len(set(seen)) > 1  # the writer did commit meanwhile


@pytest.mark.parametrize("stream", ["first connection", "second connection"])
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_a_failing_postgres_stream_fails_the_export_and_ends_both(
    db_url: str,
    spawned: list[export_module._Worker],
    seconds: list[Any],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    stream: str,
) -> None:
    """A server error in either COPY: one StoreError, no file, the store still exports."""
    with ThreadStore(db_url, remote=FakeRemote()) as store:
        _fill(store)
        with store.engine.connect() as conn:
            pages = dict(conn.exec_driver_sql(
                "SELECT message_id, (ctid::text::point)[0]::int FROM messages").all())
        # Chunks of one page: even pages on the first connection, odd on the second.
        wanted = 0 if stream == "first connection" else 1
        bad = next(m for m, page in sorted(pages.items(), key=lambda p: p[1])
                   if page % 2 == wanted and page > 1)
        cells = export_module._pg_cells

        def failing(query: Any, sub: Any) -> Any:
            broken = case((sub.c.message_id == bad, "not a number"), else_="1")
            return [*cells(query, sub), sql_cast(broken, Integer).label("broken")]

        target = tmp_path / "messages.csv"
        with monkeypatch.context() as mp:
            mp.setattr(export_module, "_pg_cells", failing)
            with pytest.raises(StoreError, match=r"export of messages failed: .*not a number"):
                store.export(target, table="messages", fmt="csv")
        assert len(seconds) == 1
        assert not target.exists()
        assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]
        assert store.export(target, table="messages", fmt="csv") == len(pages)


@pytest.fixture(autouse=True)
def _no_leftovers() -> Iterator[None]:
    yield
    assert _no_export_threads()
