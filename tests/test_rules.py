"""Thread-state rules have one owner: the sweep and stats agree at the exact boundary."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from threadstore import ThreadStore
from threadstore._rules import ThreadStatus
from threadstore.stats import compute
from threadstore.sweep import SweepOptions, sweep_expired
from threadstore.testing import FakeRemote, backdate

T = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=timezone.utc)
WEEK = timedelta(days=7)


def _expired_by_sweep_and_stats(store: ThreadStore, now: datetime) -> tuple[int, int]:
    options = SweepOptions(WEEK, dry_run=True)
    report = sweep_expired(store.engine, store.remote, options, owner="t", now=now)
    with store.engine.connect() as conn:
        stats = compute(conn, older_than=WEEK, now=now)
    return report.expired, stats.threads_expired


@pytest.mark.parametrize("ttl", [None, timedelta(hours=1)], ids=["sweep-ttl", "own-ttl"])
def test_sweep_and_stats_agree_at_the_exact_expiry_boundary(
    db_url: str, ttl: timedelta | None
) -> None:
    """Idle for exactly the TTL: neither calls it expired; one microsecond later both do."""
    with ThreadStore(db_url, remote=FakeRemote()) as store:
        thread = store.create_thread(user_id="u1", ttl=ttl)
        idle = ttl or WEEK
        backdate(store, thread.thread_id, T - idle)
        assert _expired_by_sweep_and_stats(store, T) == (0, 0)
        assert _expired_by_sweep_and_stats(store, T + timedelta(microseconds=1)) == (1, 1)


def test_statuses_are_the_stored_strings() -> None:
    """The enum's values are what the threads.status column holds (no migration needed)."""
    assert [s.value for s in ThreadStatus] == ["creating", "active"]
    assert ThreadStatus.ACTIVE == "active"
