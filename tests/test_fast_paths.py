"""The fast paths of issue 14 keep their promises (speed itself is in benchmarks/).

Not timed: the proofs are the reports' bounded counts, SQLite's query plans
(``EXPLAIN QUERY PLAN``: rows read in index order up to the limit, or every
matching row sorted first), the modules a command loads, and a create on the
driver path failing as cleanly as through SQLAlchemy.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event, update

from helpers import run_python
from threadstore import StoreError, ThreadStore
from threadstore import sweep as sweep_module
from threadstore.models import threads, utcnow
from threadstore.testing import FakeRemote


@pytest.fixture
def idle_store(sqlite_url: str) -> Iterator[ThreadStore]:
    """Twelve threads idle for two days, two of them backing off after a failure."""
    with ThreadStore(sqlite_url, remote=FakeRemote()) as store:
        ids = [store.create_thread(user_id=f"u{i % 2}").thread_id for i in range(12)]
        with store.engine.begin() as conn:
            conn.execute(update(threads).values(last_active=utcnow() - timedelta(days=2)))
            conn.execute(
                update(threads)
                .where(threads.c.thread_id.in_(ids[:2]))
                .values(attempts=1, next_attempt_at=utcnow() + timedelta(hours=1))
            )
        yield store


def test_dry_run_with_a_limit_counts_skipped_only_up_to_a_bound(
    idle_store: ThreadStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With --limit, 'skipped' is a lower bound past SKIPPED_BOUND, and says so."""
    monkeypatch.setattr(sweep_module, "SKIPPED_BOUND", 3)
    report = idle_store.sweep(timedelta(days=1), dry_run=True, limit=2)
    assert (report.expired, len(report.would_delete)) == (2, 2)
    # 2 backing off (under the bound of 3) + 3 of the 8 claimable beyond the limit.
    assert report.skipped == 5
    assert report.skipped_at_least
    assert "at least 5 skipped" in report.summary()
    assert report.to_dict()["skipped_at_least"] is True

    exact = idle_store.sweep(timedelta(days=1), dry_run=True)
    assert (exact.expired, exact.skipped, exact.skipped_at_least) == (10, 2, False)
    assert "at least" not in exact.summary()
    roomy = idle_store.sweep(timedelta(days=1), dry_run=True, limit=9)
    assert (roomy.expired, roomy.skipped, roomy.skipped_at_least) == (9, 3, False)


def _plans(store: ThreadStore, run: Any) -> list[str]:
    """The query plans of the statements on ``threads`` that ``run()`` executes."""
    seen: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
        if "threads" in statement and statement.lstrip().upper().startswith(("SELECT", "UPDATE")):
            seen.append((statement, params))

    event.listen(store.engine, "before_cursor_execute", capture)
    try:
        run()
    finally:
        event.remove(store.engine, "before_cursor_execute", capture)
    plans = []
    with store.engine.connect() as conn:
        for statement, params in seen:
            rows = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", params).all()
            plans.append("\n".join(str(r[-1]) for r in rows))
    return plans


@pytest.mark.parametrize(
    "operation",
    ["list", "list by user", "count at most", "dry run with a limit", "sweep with a limit"],
)
def test_limited_operations_read_in_index_order_on_sqlite(
    idle_store: ThreadStore, operation: str
) -> None:
    """No full sort of the threads table: rows come in index order and stop at the limit."""
    run = {
        "list": lambda: idle_store.list_threads(limit=3),
        "list by user": lambda: idle_store.list_threads(user_id="u1", limit=3),
        "count at most": lambda: idle_store.count_threads(at_most=3),
        "dry run with a limit": lambda: idle_store.sweep(
            timedelta(days=1), dry_run=True, limit=3
        ),
        "sweep with a limit": lambda: idle_store.sweep(timedelta(days=1), limit=3),
    }[operation]
    plans = _plans(idle_store, run)
    assert plans
    for plan in plans:
        assert "TEMP B-TREE FOR ORDER BY" not in plan, plan
        for line in plan.splitlines():
            if " threads" in line and line.startswith(("SCAN", "SEARCH")):
                assert "INDEX" in line, plan


def test_sweep_command_starts_without_what_only_other_commands_need() -> None:
    """A cron `threadstore sweep` loads no scheduler, emulator, demo, Alembic or SDK."""
    code = (
        "import sys\n"
        "from threadstore.cli import cli\n"
        "try:\n"
        "    cli.main(['sweep', '--help'], standalone_mode=False)\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(' '.join(sorted(sys.modules)))\n"
    )
    done = run_python(code, check=True)
    loaded = set(done.stdout.split())
    assert "threadstore.sweep" in loaded
    for heavy in ("apscheduler", "threadstore.testing", "threadstore.demo", "alembic",
                  "dashscope", "pyarrow"):
        assert heavy not in loaded, heavy


def test_create_on_the_driver_path_fails_cleanly_when_the_database_does(
    sqlite_url: str,
) -> None:
    """No intent row can be written: StoreError, and nothing was created remotely."""
    remote = FakeRemote()
    with ThreadStore(sqlite_url, remote=remote) as store:
        assert not store.engine.dispatch.before_cursor_execute  # the driver path, then
        with store.engine.begin() as conn:
            conn.exec_driver_sql("CREATE TRIGGER no_threads BEFORE INSERT ON threads "
                                 "BEGIN SELECT RAISE(ABORT, 'disk is gone'); END")
        with pytest.raises(StoreError, match="disk is gone"):
            store.create_thread(user_id="u1")
        assert remote.thread_ids() == []
        with store.engine.begin() as conn:
            conn.exec_driver_sql("DROP TRIGGER no_threads")
        created = store.create_thread(user_id="u1")
        assert store.get_thread(created.thread_id).user_id == "u1"
