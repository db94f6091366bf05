"""The expiry sweep: remote first, local only once confirmed; failures kept and retried.

Integration tests go through the real dashscope SDK and the HTTP emulator, on
SQLite and PostgreSQL; a few unit tests use FakeRemote.
"""

from __future__ import annotations

import io
import json
import random
import threading
import time
from datetime import timedelta
from pathlib import Path

import dashscope
import pytest
from click.testing import CliRunner
from cryptography.fernet import Fernet
from sqlalchemy import func, insert, select, update

from conftest import API_KEY
from helpers import assert_no_orphans as _assert_no_orphans
from helpers import deletion_log as _log
from helpers import expired as _expired
from helpers import local_ids as _local_ids
from helpers import now as _now
from helpers import thread_row as _row
from threadstore import (
    ConfigError,
    DashScopeRemote,
    RemoteAuthError,
    ThreadExpired,
    ThreadStore,
)
from threadstore._rules import retry_delay
from threadstore.cli import cli
from threadstore.models import threads
from threadstore.sweep import (
    RateLimiter,
    SweepReport,
    claim_thread,
    release_thread,
    remove_local,
)
from threadstore.testing import Emulator, FakeRemote, backdate

WEEK = timedelta(days=7)
FAST = 0.01  # retry_base for tests: retries come due almost at once


# --------------------------------------------------------------------------- the basics


def test_sweep_deletes_expired_threads_remote_then_local(
    store: ThreadStore, emulator: Emulator
) -> None:
    """Expired threads vanish remotely and locally (messages too); fresh ones stay; all logged."""
    old = _expired(store, 3)
    store.add_message(old[0], "hello")
    backdate(store, old[0], _now() - timedelta(days=10))
    fresh = store.create_thread(user_id="u9").thread_id

    report = store.sweep(WEEK)

    assert (report.expired, report.deleted, report.already_gone, report.failed) == (3, 3, 0, [])
    assert report.ok
    assert not report.stopped_by_auth
    assert not any(emulator.thread_exists(t) for t in old)
    assert _local_ids(store) == {fresh}
    assert emulator.thread_exists(fresh)
    log = {r["thread_id"]: r for r in _log(store)}
    assert set(log) == set(old)
    assert {r["reason"] for r in log.values()} == {"expired"}
    assert {r["remote_result"] for r in log.values()} == {"deleted"}
    assert log[old[0]]["message_count"] == 1
    assert all(emulator.count("threads.delete", thread_id=t, status=200) == 1 for t in old)


def test_random_500s_never_orphan_and_repeated_sweeps_finish(
    store: ThreadStore, emulator: Emulator
) -> None:
    """With 30% of deletes failing, no sweep orphans a thread and repeated sweeps delete all."""
    ids = _expired(store, 40)
    keep = store.create_thread().thread_id
    emulator.fail("threads.delete", status=500, rate=0.3)

    first = store.sweep(WEEK, retry_base=FAST)
    _assert_no_orphans(store, emulator, ids)
    assert first.failed, "30% failures should leave some deletes for retry"
    assert first.deleted + len(first.failed) == 40
    tid, error = first.failed[0]
    row = _row(store, tid)
    assert row["attempts"] == 1
    assert "500" in str(row["last_error"])
    assert "500" in error
    assert row["next_attempt_at"] is not None
    assert row["lease_owner"] is None

    for _ in range(30):
        if not _local_ids(store) - {keep}:
            break
        time.sleep(0.05)
        store.sweep(WEEK, retry_base=FAST)
        _assert_no_orphans(store, emulator, ids)
    assert _local_ids(store) == {keep}
    assert emulator.thread_ids() == [keep]
    assert all(emulator.count("threads.delete", thread_id=t, status=200) == 1 for t in ids)


def test_remote_404_counts_as_already_gone(store: ThreadStore, emulator: Emulator) -> None:
    """A thread deleted on DashScope behind our back is removed locally as 'already_gone'
    (a live thread of the same workspace proves that DashScope's 404 can be trusted)."""
    (tid,) = _expired(store, 1)
    keep = store.create_thread().thread_id
    assert dashscope.Threads.delete(tid).status_code == 200  # someone else deleted it

    report = store.sweep(WEEK)

    assert (report.deleted, report.already_gone, report.failed) == (0, 1, [])
    assert _local_ids(store) == {keep}
    assert [r["remote_result"] for r in _log(store)] == ["already_gone"]


def test_auth_failure_stops_at_once_and_keeps_everything(
    store: ThreadStore, emulator: Emulator
) -> None:
    """A 401 raises RemoteAuthError promptly: nothing deleted locally, no lease or attempt left."""
    ids = _expired(store, 60)
    emulator.fail("threads.delete", status=401)

    with pytest.raises(RemoteAuthError):
        store.sweep(WEEK, concurrency=4)

    assert emulator.count("threads.delete") <= 4  # only what was already in flight
    assert _local_ids(store) == set(ids)
    rows = [_row(store, t) for t in ids]
    assert {r["lease_owner"] for r in rows} == {None}
    assert {r["attempts"] for r in rows} == {0}
    assert _log(store) == []
    emulator.clear_faults()
    assert store.sweep(WEEK).deleted == 60  # nothing was left blocked


def test_missing_api_key_stops_the_sweep(
    db_url: str, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without any API key the sweep raises RemoteAuthError and deletes nothing."""
    with ThreadStore(db_url, remote=DashScopeRemote(base_url=emulator.url)) as store:
        ids = _expired(store, 2)
        monkeypatch.delenv("DASHSCOPE_API_KEY")
        monkeypatch.setattr(dashscope, "api_key", None)
        monkeypatch.setenv("DASHSCOPE_API_KEY_FILE_PATH", "/nonexistent/threadstore-test-key")
        with pytest.raises(RemoteAuthError, match="API key"):
            store.sweep(WEEK)
        assert _local_ids(store) == set(ids)
    assert emulator.count("threads.delete") == 0


def test_pinned_and_own_ttl_threads(store: ThreadStore, emulator: Emulator) -> None:
    """Pinned threads never expire; a thread's own TTL overrides the sweep's in both ways."""
    pinned, long_ttl, short_ttl, plain = _expired(store, 4, idle=timedelta(days=10))
    store.pin(pinned)
    store.set_ttl(long_ttl, timedelta(days=30))  # idle 10 days < 30: stays
    store.set_ttl(short_ttl, timedelta(hours=1))
    backdate(store, short_ttl, _now() - timedelta(hours=2))  # idle 2 h > 1 h: goes

    report = store.sweep(WEEK)

    assert report.deleted == 2
    assert _local_ids(store) == {pinned, long_ttl}
    assert emulator.thread_exists(pinned)
    assert emulator.thread_exists(long_ttl)
    assert not emulator.thread_exists(short_ttl)
    assert not emulator.thread_exists(plain)


def test_dry_run_deletes_nothing(store: ThreadStore, emulator: Emulator) -> None:
    """dry_run reports what would expire and changes nothing, locally or remotely."""
    ids = _expired(store, 3)
    store.create_thread()

    report = store.sweep(WEEK, dry_run=True)

    assert report.dry_run
    assert report.expired == 3
    assert sorted(report.would_delete) == sorted(ids)
    assert report.deleted == 0
    assert emulator.count("threads.delete") == 0
    assert len(_local_ids(store)) == 4
    assert {_row(store, t)["lease_owner"] for t in ids} == {None}


def test_limit_caps_the_sweep(store: ThreadStore, emulator: Emulator) -> None:
    """limit=N deletes at most N threads, the longest idle first."""
    ids = _expired(store, 5)
    backdate(store, ids[4], _now() - timedelta(days=20))

    report = store.sweep(WEEK, limit=2)

    assert (report.expired, report.deleted) == (2, 2)
    assert ids[4] not in _local_ids(store)
    assert len(_local_ids(store)) == 3


def test_failed_thread_waits_for_its_backoff(store: ThreadStore, emulator: Emulator) -> None:
    """After a failure the thread is skipped until next_attempt_at, then retried."""
    (tid,) = _expired(store, 1)
    emulator.fail("threads.delete", status=503, times=1)

    assert len(store.sweep(WEEK, retry_base=60).failed) == 1
    row = _row(store, tid)
    assert row["next_attempt_at"] > _now() + timedelta(seconds=25)  # type: ignore[operator]

    again = store.sweep(WEEK)
    assert (again.expired, again.skipped) == (0, 1)
    assert emulator.count("threads.delete") == 1

    with store.engine.begin() as conn:  # time passes
        conn.execute(update(threads).values(next_attempt_at=_now() - timedelta(seconds=1)))
    assert store.sweep(WEEK).deleted == 1


def test_rate_limit_retry_after_is_honoured(store: ThreadStore, emulator: Emulator) -> None:
    """A 429 with Retry-After keeps the thread at least that long, beyond the normal backoff."""
    (tid,) = _expired(store, 1)
    emulator.fail("threads.delete", status=429, retry_after=600, times=1)

    report = store.sweep(WEEK, retry_base=FAST)

    assert len(report.failed) == 1
    assert "429" in report.failed[0][1]
    assert _row(store, tid)["next_attempt_at"] >= _now() + timedelta(seconds=590)  # type: ignore[operator]


def test_other_remote_error_is_failed_and_counted(store: ThreadStore, emulator: Emulator) -> None:
    """A 400 is reported as failed, counted as an attempt and the row kept."""
    (tid,) = _expired(store, 1)
    emulator.fail("threads.delete", status=400, times=1)

    report = store.sweep(WEEK, retry_base=FAST)

    assert [t for t, _ in report.failed] == [tid]
    assert _row(store, tid)["attempts"] == 1
    assert emulator.thread_exists(tid)


def test_thread_leased_by_another_deleter_is_skipped(
    store: ThreadStore, emulator: Emulator
) -> None:
    """A live lease held elsewhere is respected; once it expires the row is swept."""
    (tid,) = _expired(store, 1)
    with store.engine.begin() as conn:
        assert claim_thread(conn, tid, owner="other-host", lease=timedelta(minutes=5))

    report = store.sweep(WEEK)
    assert (report.expired, report.skipped) == (0, 1)
    assert emulator.thread_exists(tid)

    with store.engine.begin() as conn:  # the other deleter died; its lease ran out
        conn.execute(update(threads).values(lease_expires_at=_now() - timedelta(seconds=1)))
    assert store.sweep(WEEK).deleted == 1
    assert _local_ids(store) == set()


def test_claimed_thread_refuses_writes(store: ThreadStore, emulator: Emulator) -> None:
    """While a sweep holds a thread, every write to it (message, update, run, touch) is refused."""
    (tid,) = _expired(store, 1)
    emulator.set_latency(0.5, op="threads.delete")
    reports: list[SweepReport] = []
    sweeper = threading.Thread(target=lambda: reports.append(store.sweep(WEEK)))
    sweeper.start()
    try:
        deadline = time.monotonic() + 5
        while _row(store, tid)["lease_owner"] is None:
            assert time.monotonic() < deadline, "the sweep never claimed the thread"
            time.sleep(0.01)
        with pytest.raises(ThreadExpired):
            store.add_message(tid, "too late")
        with pytest.raises(ThreadExpired):
            store.update_thread(tid, metadata={"x": 1})
        with pytest.raises(ThreadExpired):
            store.run(tid, assistant_id="asst_1")
        with pytest.raises(ThreadExpired):
            store.touch(tid)
    finally:
        sweeper.join()
    assert reports[0].deleted == 1
    assert emulator.count("messages.create") == 0
    assert emulator.count("runs.create") == 0


def test_archive_holds_decrypted_threads_messages_and_runs(
    db_url: str, remote: DashScopeRemote, emulator: Emulator, tmp_path: Path
) -> None:
    """archive= gets one JSON line per deleted thread, with its messages and runs in clear."""
    key = Fernet.generate_key().decode()
    with ThreadStore(db_url, remote=remote, encryption_key=key) as store:
        t = store.create_thread(user_id="u1", metadata={"topic": "secret"})
        store.add_message(t.thread_id, "the message")
        store.run(t.thread_id, assistant_id="asst_1", poll_interval=0.01)
        backdate(store, t.thread_id, _now() - timedelta(days=10))
        path = tmp_path / "archive.jsonl"

        report = store.sweep(WEEK, archive=path)

    assert report.archived == 1
    (line,) = path.read_text(encoding="utf-8").splitlines()
    record = json.loads(line)
    assert record["thread"]["thread_id"] == t.thread_id
    assert record["thread"]["metadata"] == {"topic": "secret"}
    assert [m["content"] for m in record["messages"]] == ["the message", "Echo: the message"]
    assert record["runs"][0]["status"] == "completed"
    assert record["runs"][0]["total_tokens"] > 0
    assert record["remote_result"] == "deleted"
    assert path.stat().st_mode & 0o077 == 0


def test_archive_to_an_open_file(fake_store: ThreadStore, fake: FakeRemote) -> None:
    """archive= also takes an open text file, which is left open."""
    tid = fake_store.create_thread().thread_id
    backdate(fake_store, tid, _now() - timedelta(days=10))
    out = io.StringIO()

    fake_store.sweep(WEEK, archive=out)

    assert json.loads(out.getvalue())["thread"]["thread_id"] == tid


def test_archive_that_cannot_be_opened_changes_nothing(
    fake_store: ThreadStore, fake: FakeRemote, tmp_path: Path
) -> None:
    """An unwritable archive path is a ConfigError before anything is deleted."""
    tid = fake_store.create_thread().thread_id
    backdate(fake_store, tid, _now() - timedelta(days=10))
    with pytest.raises(ConfigError, match="archive"):
        fake_store.sweep(WEEK, archive=tmp_path / "no" / "such" / "dir.jsonl")
    assert fake.thread_exists(tid)


@pytest.mark.parametrize(
    "options",
    [
        {"older_than": timedelta(0)},
        {"older_than": -WEEK},
        {"limit": 0},
        {"concurrency": 0},
        {"max_rps": 0},
        {"lease": timedelta(0)},
    ],
)
def test_bad_options_are_config_errors(fake_store: ThreadStore, options: dict[str, object]) -> None:
    """Invalid sweep options raise ConfigError."""
    kwargs: dict[str, object] = {"older_than": WEEK, **options}
    with pytest.raises(ConfigError):
        fake_store.sweep(**kwargs)  # type: ignore[arg-type]


def test_max_rps_and_concurrency_options(fake_store: ThreadStore, fake: FakeRemote) -> None:
    """A paced, single-worker sweep still deletes everything."""
    for _ in range(5):
        tid = fake_store.create_thread().thread_id
        backdate(fake_store, tid, _now() - timedelta(days=10))

    report = fake_store.sweep(WEEK, concurrency=1, max_rps=200)

    assert report.deleted == 5
    assert fake.thread_ids() == []


def test_progress_reports_every_thread(fake_store: ThreadStore) -> None:
    """progress(done, total) ends at (n, n)."""
    for _ in range(3):
        tid = fake_store.create_thread().thread_id
        backdate(fake_store, tid, _now() - timedelta(days=10))
    seen: list[tuple[int, int]] = []

    fake_store.sweep(WEEK, progress=lambda done, total: seen.append((done, total)))

    assert seen[-1] == (3, 3)


def test_preset_stop_releases_everything(fake_store: ThreadStore, fake: FakeRemote) -> None:
    """A sweep asked to stop deletes nothing and leaves no lease behind."""
    tid = fake_store.create_thread().thread_id
    backdate(fake_store, tid, _now() - timedelta(days=10))
    stop = threading.Event()
    stop.set()

    report = fake_store.sweep(WEEK, stop=stop)

    assert report.interrupted
    assert report.deleted == 0
    assert fake.thread_exists(tid)
    assert _row(fake_store, tid)["lease_owner"] is None


def test_report_to_dict_is_json() -> None:
    """SweepReport.to_dict() is plain JSON with the documented keys."""
    report = SweepReport(expired=2, deleted=1, failed=[("thread_1", "HTTP 500")], elapsed=0.5)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["failed"] == [{"thread_id": "thread_1", "error": "HTTP 500"}]
    assert {"expired", "deleted", "already_gone", "skipped", "elapsed", "stopped_by_auth"} <= set(
        data
    )
    assert data["ok"] is False
    assert "1 failed" in report.summary()
    stopped = SweepReport(stopped_by_auth=True, error="HTTP 401", auth_error=RemoteAuthError("x"))
    assert json.loads(json.dumps(stopped.to_dict()))["stopped_by_auth"] is True


# --------------------------------------------------------------------------- primitives


def test_remove_local_requires_our_lease(fake_store: ThreadStore) -> None:
    """A deleter whose lease was taken over cannot remove the row; the new holder can."""
    tid = fake_store.create_thread().thread_id
    with fake_store.engine.begin() as conn:
        assert claim_thread(conn, tid, owner="a", lease=timedelta(minutes=5))
        assert not claim_thread(conn, tid, owner="b", lease=timedelta(minutes=5))
        conn.execute(update(threads).values(lease_expires_at=_now() - timedelta(seconds=1)))
        assert claim_thread(conn, tid, owner="b", lease=timedelta(minutes=5))
        assert remove_local(conn, tid, reason="expired", remote_result="deleted", owner="a") is None
        assert not release_thread(conn, tid, owner="a")
        removed = remove_local(conn, tid, reason="expired", remote_result="deleted", owner="b")
    assert removed is not None
    assert removed["thread_id"] == tid
    assert [r["deleted_by"] for r in _log(fake_store)] == ["b"]


def test_remove_local_counts_children(fake_store: ThreadStore) -> None:
    """The deletions log records how many messages and runs went with the thread."""
    tid = fake_store.create_thread(messages=[{"role": "user", "content": "a"}]).thread_id
    fake_store.add_message(tid, "b")
    fake_store.run(tid, assistant_id="asst_1")
    with fake_store.engine.begin() as conn:
        remove_local(conn, tid, reason="manual", remote_result="deleted", owner=None,
                     require_lease=False)
    (entry,) = _log(fake_store)
    assert (entry["message_count"], entry["run_count"]) == (3, 1)


def test_retry_delay_grows_with_jitter_and_cap() -> None:
    """Backoff doubles per attempt within [half, full], is capped, and honours retry_after."""
    rng = random.Random(1)
    for attempts in range(6):
        full = 2.0 * 2**attempts
        assert full / 2 <= retry_delay(attempts, base=2.0, rng=rng) <= full
    assert retry_delay(50, base=2.0, rng=rng) <= 3600
    assert retry_delay(0, base=2.0, retry_after=30, rng=rng) >= 30


def test_rate_limiter_without_limit_never_waits() -> None:
    """No max_rps: acquire() returns at once; a stop set beforehand makes it refuse."""
    limiter = RateLimiter(None)
    assert all(limiter.acquire() for _ in range(100))
    stop = threading.Event()
    stop.set()
    assert not limiter.acquire(stop)
    assert RateLimiter(4).interval == 0.25


def test_intent_rows_are_never_swept(fake_store: ThreadStore, fake: FakeRemote) -> None:
    """A 'creating' intent row (no remote thread yet) is not an expired thread.

    (Issue 13: one older than the sweep's intent age, 7 days, is removed as a lost
    create — see test_sweep_history.py — so this row is 3 days old.)
    """
    old = _now() - timedelta(days=3)
    with fake_store.engine.begin() as conn:
        conn.execute(
            insert(threads).values(
                thread_id="creating_x", created_at=old, last_active=old, status="creating"
            )
        )
    assert fake_store.sweep(WEEK).expired == 0
    with fake_store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(threads)).scalar_one() == 1


# --------------------------------------------------------------------------- CLI


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def test_cli_sweep_json_and_exit_0(
    store: ThreadStore, emulator: Emulator, runner: CliRunner, db_url: str
) -> None:
    """`threadstore sweep --days 7 --json` prints the report on stdout and exits 0."""
    _expired(store, 2)
    result = runner.invoke(cli, ["--db", db_url, "sweep", "--days", "7", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["expired"], data["deleted"], data["failed"]) == (2, 2, [])
    assert "2 deleted" in result.stderr


def test_cli_sweep_failures_exit_1(
    store: ThreadStore, emulator: Emulator, runner: CliRunner, db_url: str
) -> None:
    """Deletes that failed and were kept for retry make the sweep exit 1."""
    (tid,) = _expired(store, 1)
    emulator.fail("threads.delete", status=500)
    result = runner.invoke(cli, ["--db", db_url, "sweep", "--hours", "24"])
    assert result.exit_code == 1
    assert f"kept for retry: {tid}" in result.stderr
    assert "1 failed" in result.stderr


def test_cli_sweep_auth_error_is_one_line_exit_2(
    store: ThreadStore, emulator: Emulator, runner: CliRunner, db_url: str
) -> None:
    """A refused key: one line on stderr, exit 2, nothing deleted."""
    _expired(store, 3)
    emulator.fail("threads.delete", status=401)
    result = runner.invoke(cli, ["--db", db_url, "sweep", "--days", "7"])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("threadstore: error:")
    assert "401" in lines[0]
    assert len(_local_ids(store)) == 3


def test_cli_dry_run_lists_ids(
    store: ThreadStore, emulator: Emulator, runner: CliRunner, db_url: str
) -> None:
    """--dry-run prints the ids that would be deleted and deletes none."""
    ids = _expired(store, 2)
    result = runner.invoke(cli, ["--db", db_url, "sweep", "--days", "7", "--dry-run"])
    assert result.exit_code == 0
    assert sorted(result.stdout.split()) == sorted(ids)
    assert emulator.count("threads.delete") == 0


@pytest.mark.parametrize(
    "args",
    [
        ["sweep"],
        ["sweep", "--days", "7", "--hours", "3"],
        ["sweep", "--days", "0"],
        ["sweep", "--days", "-1"],
        ["sweep", "--days", "7", "--concurrency", "0"],
        ["sweep", "--days", "7", "--lease", "0"],
        ["sweep", "--days", "7", "--max-rps", "0"],
        ["sweep", "--days", "x"],
    ],
)
def test_cli_sweep_usage_errors_exit_2(runner: CliRunner, sqlite_url: str, args: list[str]) -> None:
    """Missing, conflicting or out-of-range options: one line, exit 2."""
    result = runner.invoke(cli, ["--db", sqlite_url, *args])
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1


def test_cli_sweep_help_has_an_example(runner: CliRunner) -> None:
    """`threadstore sweep --help` documents the options and shows examples."""
    result = runner.invoke(cli, ["sweep", "--help"])
    assert result.exit_code == 0
    for text in ("--days", "--hours", "--dry-run", "--archive", "--lease", "--json",
                 "threadstore sweep --days 7 --dry-run"):
        assert text in result.output


# ------------------------------------------------- timeouts, drops, a failing database


def test_timeouts_and_dropped_connections_are_kept_for_retry(
    db_url: str, emulator: Emulator
) -> None:
    """A delete that hangs past the timeout, or whose connection drops, keeps its row."""
    remote = DashScopeRemote(api_key=API_KEY, base_url=emulator.url, timeout=0.5)
    with ThreadStore(db_url, remote=remote) as store:
        hung, dropped, fine = _expired(store, 3)
        emulator.fail("threads.delete", thread_id=hung, hang=True, times=1)
        emulator.fail("threads.delete", thread_id=dropped, drop=True, times=1)

        report = store.sweep(WEEK, retry_base=FAST)

        assert report.deleted == 1
        assert sorted(tid for tid, _ in report.failed) == sorted([hung, dropped])
        assert _local_ids(store) == {hung, dropped}
        assert _row(store, hung)["attempts"] == 1
        assert "timed out" in str(_row(store, hung)["last_error"])
        _assert_no_orphans(store, emulator, [hung, dropped, fine])
        time.sleep(0.1)
        assert store.sweep(WEEK, retry_base=FAST).deleted == 2
        assert _local_ids(store) == set()


def test_database_failure_while_finishing_leaves_no_orphan(
    store: ThreadStore, emulator: Emulator
) -> None:
    """If the local delete fails after DashScope confirmed, the rows stay; a later sweep ends it."""
    from sqlalchemy import event
    from sqlalchemy.exc import OperationalError

    from threadstore import StoreError

    ids = _expired(store, 5)

    def boom(conn: object, cursor: object, statement: str, *args: object) -> None:
        if statement.lstrip().upper().startswith("DELETE FROM THREADS"):
            raise OperationalError(statement, {}, Exception("disk full (injected)"))

    store.remote.timeout = 0.45  # type: ignore[attr-defined]  # a 1 s lease needs < 0.5 s
    event.listen(store.engine, "before_cursor_execute", boom)
    try:
        with pytest.raises(StoreError):
            store.sweep(WEEK, lease=timedelta(seconds=1))
    finally:
        event.remove(store.engine, "before_cursor_execute", boom)
    assert emulator.count("threads.delete", status=200) >= 1  # DashScope did delete some
    assert _local_ids(store) == set(ids)  # ... yet every row is still here
    _assert_no_orphans(store, emulator, ids)

    time.sleep(1.1)  # the failed sweep's leases run out
    report = store.sweep(WEEK)
    assert report.deleted + report.already_gone == 5
    assert report.already_gone >= 1
    assert _local_ids(store) == set()
    assert sum(emulator.count("threads.delete", thread_id=t, status=200) for t in ids) == 5
