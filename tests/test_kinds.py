"""One declaration per mirrored kind: upserts by id, never older over newer; one JSON form;
error kinds that say what happened."""

from __future__ import annotations

import io
import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner

from threadstore import DashScopeRemote, RemoteUnavailable, ThreadStore
from threadstore.cli import cli
from threadstore.errors import ArchiveError, RunTimeout, StoreError
from threadstore.models import KINDS, RUNS, THREAD_CHILDREN, THREADS, deletions
from threadstore.testing import FakeRemote, backdate

ISO_UTC_MICRO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00$")


def _old(store: ThreadStore, tid: str) -> None:
    backdate(store, tid, datetime.now(timezone.utc) - timedelta(days=10))


# --------------------------------------------------------------------------- declarations


def test_every_declaration_matches_its_table() -> None:
    """Ids, times, encrypted and export columns name real columns; children have thread_id."""
    aggregates = {"message_count", "run_count", "prompt_tokens", "completion_tokens",
                  "total_tokens", "content_length"}
    for kind in KINDS:
        columns = set(kind.table.c.keys())
        assert {kind.id_column, kind.time_column, *kind.encrypted} <= columns, kind.name
        assert {name for name, _ in kind.export} - columns <= aggregates, kind.name
        if kind.child_of_thread:
            assert "thread_id" in columns, kind.name
        if kind.deletion_count:
            assert kind.deletion_count in deletions.c, kind.name
    assert [k.name for k in THREAD_CHILDREN] == ["messages", "runs", "run_steps"]


def test_a_late_in_progress_snapshot_never_overwrites_a_completed_run(
    fake_store: ThreadStore,
) -> None:
    """Runs upsert by id (idempotent) and keep the furthest status they reached."""
    tid = fake_store.create_thread().thread_id
    done = fake_store.run(tid, assistant_id="asst_1", poll_interval=0.01)
    assert done.status == "completed"
    stale = {"run_id": done.run_id, "thread_id": tid, "status": "in_progress",
             "created_at": done.created_at, "completed_at": None, "total_tokens": None}
    with fake_store.engine.begin() as conn:
        assert RUNS.upsert(conn, [stale], fake_store.codec) == []
        assert RUNS.upsert(conn, [stale], fake_store.codec) == []
    (again,) = fake_store.runs(tid)
    assert (again.status, again.total_tokens) == ("completed", done.total_tokens)


# --------------------------------------------------------------------------- one JSON form


def test_archive_show_and_jsonl_export_write_records_the_same_way(
    sqlite_url: str, tmp_path: Path
) -> None:
    """Timestamps carry microseconds and +00:00 everywhere; the thread reads the same."""
    fake = FakeRemote()
    with ThreadStore(sqlite_url, remote=fake) as store:
        t = store.create_thread(user_id="u1", metadata={"k": "v"})
        store.add_message(t.thread_id, "hi")
        backdate(store, t.thread_id, datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc))
        shown = CliRunner().invoke(cli, ["--db", sqlite_url, "show", t.thread_id, "--json"])
        store.export(tmp_path / "t.jsonl", table="threads")
        archive = io.StringIO()
        store.sweep(timedelta(days=7), archive=archive)
    assert shown.exit_code == 0, shown.output
    from_show = json.loads(shown.output)
    from_archive = json.loads(archive.getvalue())
    from_export = json.loads((tmp_path / "t.jsonl").read_text(encoding="utf-8"))
    assert from_show["thread"] == from_archive["thread"]
    for thread in (from_show["thread"], from_archive["thread"], from_export):
        assert thread["last_active"] == "2026-01-02T03:04:05.000000+00:00"
        assert ISO_UTC_MICRO.match(thread["created_at"])
    assert from_show["messages"] == from_archive["messages"]
    assert ISO_UTC_MICRO.match(from_archive["deleted_at"])


# --------------------------------------------------------------------------- error kinds


class _FullDisk(io.StringIO):
    def write(self, text: str) -> int:
        raise OSError(28, "No space left on device")


def test_a_failed_archive_write_is_an_archive_error_and_keeps_the_row(
    fake_store: ThreadStore,
) -> None:
    """Not a usage error: ArchiveError (a StoreError); the thread keeps its local row."""
    tid = fake_store.create_thread().thread_id
    _old(fake_store, tid)
    with pytest.raises(ArchiveError) as info:
        fake_store.sweep(timedelta(days=7), archive=_FullDisk())
    assert isinstance(info.value, StoreError)
    assert fake_store.get_thread(tid).thread_id == tid


def test_cli_sweep_with_an_unwritable_archive_exits_1_not_2(
    sqlite_url: str, remote: DashScopeRemote
) -> None:
    """A disk that fails mid-sweep is a failure to retry (exit 1), not bad usage (exit 2)."""
    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full")
    with ThreadStore(sqlite_url, remote=remote) as store:
        _old(store, store.create_thread().thread_id)
    result = CliRunner().invoke(
        cli, ["--db", sqlite_url, "sweep", "--days", "7", "--archive", "/dev/full"]
    )
    assert result.exit_code == 1, result.output
    assert "archive" in result.output


def test_a_run_that_does_not_finish_in_time_is_a_run_timeout(sqlite_url: str) -> None:
    """RunTimeout names the run and its last status; old `except RemoteUnavailable` still works."""
    with ThreadStore(sqlite_url, remote=FakeRemote(run_status="in_progress")) as store:
        tid = store.create_thread().thread_id
        with pytest.raises(RunTimeout) as info:
            store.run(tid, assistant_id="asst_1", timeout=0, poll_interval=0.01)
        assert isinstance(info.value, RemoteUnavailable)
        assert info.value.status == "in_progress"
        (run,) = store.runs(tid)
        assert (run.run_id, run.status) == (info.value.run_id, "in_progress")


def test_threads_are_not_children_of_anything() -> None:
    """The thread kind is the root: removing it removes every declared child."""
    assert not THREADS.child_of_thread
    assert all(k.table is not THREADS.table for k in THREAD_CHILDREN)


# --------------------------------------------------------------------------- worked example


def test_a_declared_column_flows_from_remote_object_to_record_without_other_code() -> None:
    """README's worked example: a column in the table, record and declaration is mapped
    from a remote object's field of the same name, upserted by id and read back."""
    from dataclasses import dataclass as _dataclass

    from sqlalchemy import Column, MetaData, String, Table, create_engine

    from threadstore.codec import Codec
    from threadstore.models import STR, TS, Kind, UTCDateTime

    md = MetaData()
    notes = Table(
        "notes", md,
        Column("note_id", String(64), primary_key=True),
        Column("thread_id", String(64), nullable=False),
        Column("created_at", UTCDateTime(), nullable=False),
        Column("text", String(255), nullable=False),
        Column("mood", String(16), nullable=True),  # the added column
    )

    @_dataclass(frozen=True)
    class NoteRecord:
        note_id: str
        thread_id: str
        created_at: datetime
        text: str
        mood: str | None = None

    @_dataclass(frozen=True)
    class RemoteNote:
        id: str
        thread_id: str
        created_at: datetime | None
        text: str
        mood: str | None

    notes_kind = Kind(
        name="notes", table=notes, id_column="note_id", time_column="created_at",
        record=NoteRecord, child_of_thread=True, encrypted_text=("text",),
        export=(("note_id", STR), ("created_at", TS), ("text", STR), ("mood", STR)),
    )
    codec = Codec()
    engine = create_engine("sqlite://")
    md.create_all(engine)
    remote = RemoteNote("note_1", "thread_1", None, "hello", mood="calm")
    with engine.begin() as conn:
        notes_kind.upsert(conn, [notes_kind.from_remote(remote)], codec)
        notes_kind.upsert(conn, [notes_kind.from_remote(remote)], codec)  # idempotent
        rows = conn.execute(notes_kind.of_threads(["thread_1"])).mappings().all()
    (record,) = [notes_kind.to_record(r, codec) for r in rows]
    assert (record.note_id, record.text, record.mood) == ("note_1", "hello", "calm")
    engine.dispose()
