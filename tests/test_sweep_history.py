"""Sweep history (the sweeps table), its place in stats and export, and lost creates."""

from __future__ import annotations

import json
import os
import socket
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import insert, select

from threadstore import RemoteAuthError, ThreadStore, db
from threadstore.cli import cli
from threadstore.models import deletions, sweeps, threads
from threadstore.testing import FakeRemote, backdate

UTC = timezone.utc
WEEK = timedelta(days=7)


def _now() -> datetime:
    return datetime.now(UTC)


def _expired(store: ThreadStore, n: int) -> list[str]:
    ids = []
    for _ in range(n):
        t = store.create_thread(user_id="u")
        backdate(store, t.thread_id, _now() - timedelta(days=10))
        ids.append(t.thread_id)
    return ids


def _history(store: ThreadStore) -> list[dict[str, Any]]:
    with store.engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(sweeps).order_by(sweeps.c.id)).mappings()]


def _intent(store: ThreadStore, thread_id: str, age: timedelta) -> None:
    at = _now() - age
    with store.engine.begin() as conn:
        conn.execute(insert(threads).values(thread_id=thread_id, user_id="lost-user",
                                            created_at=at, last_active=at, status="creating"))


# --------------------------------------------------------------------------- history


def test_every_sweep_records_start_end_owner_options_counts_and_outcome(
    fake_store: ThreadStore,
) -> None:
    """One row per sweep: who ran it, with which options, what it did, and how it ended."""
    ids = _expired(fake_store, 3)
    fake_store.remote.delete_thread(ids[0])  # already gone on DashScope
    before = _now()
    report = fake_store.sweep(WEEK, concurrency=2, limit=10)
    (row,) = _history(fake_store)
    assert row["id"] == report.sweep_id
    assert before <= row["started_at"] <= row["finished_at"] <= _now()
    assert (row["host"], row["pid"]) == (socket.gethostname(), os.getpid())
    assert row["outcome"] == "ok"
    assert (row["expired"], row["deleted"], row["already_gone"], row["failed"]) == (3, 2, 1, 0)
    options = json.loads(row["options"])
    assert options["older_than_seconds"] == WEEK.total_seconds()
    assert (options["concurrency"], options["limit"]) == (2, 10)
    with fake_store.engine.connect() as conn:
        owners = set(conn.execute(select(deletions.c.deleted_by)).scalars())
    assert owners == {row["owner"]}  # a deletion names the sweep that did it


def test_a_sweep_with_failures_is_recorded_as_failed(
    fake_store: ThreadStore, fake: FakeRemote
) -> None:
    """Deletes kept for retry make the outcome "failed", with their count."""
    _expired(fake_store, 2)
    fake.fail("threads.delete", status=500, times=1)
    fake_store.sweep(WEEK, concurrency=1)
    (row,) = _history(fake_store)
    assert (row["outcome"], row["failed"], row["deleted"]) == ("failed", 1, 1)


def test_a_refused_key_is_recorded_as_auth_failed(
    fake_store: ThreadStore, fake: FakeRemote
) -> None:
    """The sweep raises RemoteAuthError, and its history row says auth_failed."""
    _expired(fake_store, 2)
    fake.fail("threads.delete", status=401)
    with pytest.raises(RemoteAuthError):
        fake_store.sweep(WEEK)
    (row,) = _history(fake_store)
    assert row["outcome"] == "auth_failed"
    assert row["finished_at"] is not None
    assert "401" in (row["error"] or "")


def test_a_crash_inside_the_sweep_is_recorded_as_error(
    fake_store: ThreadStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exception that escapes the sweep still completes its row (outcome error)."""
    import threadstore.sweep as sweep_module

    _expired(fake_store, 1)

    def broken(*_a: object, **_k: object) -> int:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(sweep_module, "_remove_lost_creates", broken)
    with pytest.raises(RuntimeError):
        fake_store.sweep(WEEK)
    (row,) = _history(fake_store)
    assert row["outcome"] == "error"
    assert "disk on fire" in row["error"]


def test_a_dry_run_leaves_no_history(fake_store: ThreadStore) -> None:
    """A dry run changes nothing, its history included."""
    _expired(fake_store, 1)
    report = fake_store.sweep(WEEK, dry_run=True)
    assert report.expired == 1
    assert report.sweep_id is None
    assert _history(fake_store) == []


def test_the_scheduler_records_its_sweeps(fake_store: ThreadStore) -> None:
    """A sweep run by start_sweeper is in the history too."""
    _expired(fake_store, 1)
    scheduler = fake_store.start_sweeper(WEEK, every=timedelta(hours=1), jitter=0)
    try:
        for _ in range(200):
            rows = _history(fake_store)
            if rows and rows[0]["outcome"] != "running":
                break
            time.sleep(0.05)
    finally:
        scheduler.shutdown()
    assert [(r["outcome"], r["deleted"]) for r in _history(fake_store)] == [("ok", 1)]


# --------------------------------------------------------------------------- stats, export


def test_stats_shows_the_last_successful_sweep_and_its_age(fake_store: ThreadStore) -> None:
    """stats: last_success_at and its age; a later failed sweep does not move it."""
    assert fake_store.stats().last_success_at is None
    _expired(fake_store, 1)
    fake_store.sweep(WEEK)
    ok_row = _history(fake_store)[0]
    stats = fake_store.stats()
    assert stats.last_success_at == ok_row["finished_at"]
    assert stats.last_success_age_seconds is not None
    assert 0 <= stats.last_success_age_seconds < 60
    assert stats.last_sweep_outcome == "ok"
    _expired(fake_store, 1)
    fake_store.remote.fail("threads.delete", status=500)  # type: ignore[attr-defined]
    fake_store.sweep(WEEK)
    later = fake_store.stats()
    assert later.last_sweep_outcome == "failed"
    assert later.last_success_at == ok_row["finished_at"]


def test_stats_command_prints_the_last_success(sqlite_url: str) -> None:
    """`threadstore stats` shows last_success_at and last_success_age_seconds."""
    with ThreadStore(sqlite_url, remote=FakeRemote()) as store:
        _expired(store, 1)
        store.sweep(WEEK)
    result = CliRunner().invoke(cli, ["--db", sqlite_url, "stats", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["last_sweep_outcome"] == "ok"
    assert data["last_success_at"].endswith("+00:00")
    assert isinstance(data["last_success_age_seconds"], int)


def test_export_sweeps_streams_the_history(db_url: str, tmp_path: Path) -> None:
    """`export sweeps` writes one row per sweep, oldest first, with counts and outcome."""
    fake = FakeRemote()
    with ThreadStore(db_url, remote=fake) as store:
        _expired(store, 2)
        store.sweep(WEEK)
        fake.fail("threads.delete", status=500)
        _expired(store, 1)
        store.sweep(WEEK)
    result = CliRunner().invoke(cli, ["--db", db_url, "export", "sweeps"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["outcome"], r["deleted"], r["failed"]) for r in rows] == [("ok", 2, 0),
                                                                        ("failed", 0, 1)]
    assert json.loads(rows[0]["options"])["older_than_seconds"] == WEEK.total_seconds()
    out = tmp_path / "sweeps.csv"
    as_csv = CliRunner().invoke(cli, ["--db", db_url, "export", "sweeps", "--format", "csv",
                                      "-o", str(out)])
    assert as_csv.exit_code == 0, as_csv.output
    header = out.read_text().splitlines()[0].replace('"', "")
    assert header.startswith("id,owner,host,pid,started_at")


# --------------------------------------------------------------------------- lost creates


def test_the_sweep_removes_lost_creates_older_than_the_intent_age(
    fake_store: ThreadStore,
) -> None:
    """Intent rows older than 7 days go, logged as lost_create and counted; younger stay."""
    _intent(fake_store, "creating_old", timedelta(days=8))
    _intent(fake_store, "creating_recent", timedelta(days=2))
    dry = fake_store.sweep(WEEK, dry_run=True)
    assert dry.lost_creates == 1
    report = fake_store.sweep(WEEK)
    assert report.lost_creates == 1
    assert "1 lost create(s) removed" in report.summary()
    with fake_store.engine.connect() as conn:
        left = set(conn.execute(select(threads.c.thread_id)).scalars())
        logged = conn.execute(select(deletions)).mappings().one()
    assert left == {"creating_recent"}
    assert (logged["thread_id"], logged["reason"], logged["remote_result"]) == (
        "creating_old", "lost_create", "unknown")
    assert logged["user_id"] == "lost-user"
    assert _history(fake_store)[0]["lost_creates"] == 1


def test_intent_days_from_the_command_line(sqlite_url: str, tmp_path: Path) -> None:
    """`sweep --intent-days 1` removes a 2-day-old intent row; the summary says so."""
    with ThreadStore(sqlite_url, remote=FakeRemote()) as store:
        _intent(store, "creating_two_days", timedelta(days=2))
    result = CliRunner().invoke(
        cli, ["--db", sqlite_url, "sweep", "--days", "7", "--intent-days", "1", "--json"],
        env={"DASHSCOPE_API_KEY": "unused"},
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["lost_creates"] == 1
    assert "1 lost create(s) removed" in result.stderr
    with ThreadStore(sqlite_url, remote=FakeRemote()) as store:
        assert store.stats().threads_creating == 0


def test_stats_counts_lost_creates(fake_store: ThreadStore) -> None:
    """An intent row older than an hour is a lost create in stats; a fresh one is not."""
    _intent(fake_store, "creating_fresh", timedelta(seconds=5))
    _intent(fake_store, "creating_lost", timedelta(hours=3))
    stats = fake_store.stats()
    assert (stats.threads_creating, stats.threads_lost_creates) == (2, 1)


# --------------------------------------------------------------------------- migration


def test_a_store_behind_head_is_refused_by_readers_until_upgraded(sqlite_url: str) -> None:
    """A store at 0002 (before the history): stats says to upgrade; `db upgrade` fixes it."""
    ThreadStore(sqlite_url, remote=FakeRemote()).close()
    engine = db.open_engine(sqlite_url)
    db.downgrade(engine, "0002")
    engine.dispose()
    refused = CliRunner().invoke(cli, ["--db", sqlite_url, "stats"])
    assert refused.exit_code == 2
    assert "0002" in refused.stderr
    assert "threadstore db upgrade" in refused.stderr
    check = CliRunner().invoke(cli, ["--db", sqlite_url, "db", "check"])
    assert check.exit_code == 1
    assert CliRunner().invoke(cli, ["--db", sqlite_url, "db", "upgrade"]).exit_code == 0
    assert CliRunner().invoke(cli, ["--db", sqlite_url, "stats"]).exit_code == 0
