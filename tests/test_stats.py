"""ThreadStore.stats: the counts an operator and a monitor read, matching the data."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import update

from helpers import set_thread as _set_thread
from threadstore import ConfigError, ThreadStore
from threadstore.models import deletions, threads, utcnow
from threadstore.testing import FakeRemote, backdate

STABLE_KEYS = [
    "generated_at", "older_than_seconds", "threads", "threads_active", "threads_expired",
    "threads_pinned", "threads_claimed", "threads_creating", "failed_deletions",
    "failed_max_attempts", "failed_oldest_error", "failed_next_attempt_at", "messages", "runs",
    "run_steps", "assistants",
    "prompt_tokens", "completion_tokens", "total_tokens", "deletions_total",
    "deletions_last_day", "deletions_last_week",
    # issue 13: lost creates, the oldest expired thread, the sweep history
    "threads_lost_creates", "expired_oldest_since", "last_sweep_outcome",
    "last_sweep_started_at", "last_sweep_finished_at", "last_sweep_duration_seconds",
    "last_success_at", "last_success_age_seconds", "last_sweep_counts", "sweeps_by_outcome",
]


@pytest.fixture
def stocked(db_url: str) -> Iterator[ThreadStore]:
    """Seven threads in every state the stats distinguish, runs, and three deletions."""
    now = utcnow()
    with ThreadStore(db_url, remote=FakeRemote()) as store:
        fresh = store.create_thread(user_id="u1")
        store.add_message(fresh.thread_id, "hi")
        store.add_message(fresh.thread_id, "again")
        store.run(fresh.thread_id, assistant_id="asst_1", poll_interval=0.01)  # +1 message
        store.run(fresh.thread_id, assistant_id="asst_1", poll_interval=0.01)  # +1 message

        idle = store.create_thread(user_id="u1")
        backdate(store, idle.thread_id, now - timedelta(days=10))

        pinned_old = store.create_thread(user_id="u2")
        store.pin(pinned_old.thread_id)
        backdate(store, pinned_old.thread_id, now - timedelta(days=30))

        own_ttl = store.create_thread(user_id="u2", ttl=timedelta(hours=1))
        backdate(store, own_ttl.thread_id, now - timedelta(hours=2))  # expired by its own TTL

        long_ttl = store.create_thread(user_id="u2", ttl=timedelta(days=60))
        backdate(store, long_ttl.thread_id, now - timedelta(days=20))  # idle, but within its TTL

        failing = store.create_thread(user_id="u3")
        backdate(store, failing.thread_id, now - timedelta(days=9))
        _set_thread(store, failing.thread_id, attempts=3, last_error="HTTP 500 first",
                    next_attempt_at=now + timedelta(minutes=5))
        claimed = store.create_thread(user_id="u3")
        backdate(store, claimed.thread_id, now - timedelta(days=8))
        _set_thread(store, claimed.thread_id, attempts=1, last_error="HTTP 429 later",
                    next_attempt_at=now + timedelta(minutes=30), lease_owner="host:1",
                    lease_expires_at=now + timedelta(minutes=5))

        with store.engine.begin() as conn:
            conn.execute(threads.insert().values(
                thread_id="creating_1", created_at=now, last_active=now, status="creating"))

        for age in (timedelta(hours=1), timedelta(days=3), timedelta(days=10)):
            gone = store.create_thread(user_id="u9")
            store.delete_thread(gone.thread_id)
            with store.engine.begin() as conn:
                conn.execute(update(deletions).where(deletions.c.thread_id == gone.thread_id)
                             .values(deleted_at=now - age))
        yield store


def test_stats_match_the_data(stocked: ThreadStore) -> None:
    """Every count in stats() agrees with what the store holds."""
    s = stocked.stats()
    assert s.threads == 7
    assert s.threads_expired == 4  # idle, own_ttl, failing, claimed
    assert s.threads_active == 3  # fresh, pinned_old, long_ttl
    assert s.threads_pinned == 1
    assert s.threads_claimed == 1
    assert s.threads_creating == 1
    assert s.failed_deletions == 2
    assert s.failed_max_attempts == 3
    assert s.failed_oldest_error == "HTTP 500 first"
    assert s.failed_next_attempt_at is not None
    assert s.failed_next_attempt_at - utcnow() < timedelta(minutes=6)
    runs = stocked.runs(stocked.list_threads(user_id="u1", inactive_for=None)[0].thread_id)
    assert s.runs == 2 == len(runs)
    assert s.messages == 4
    assert s.prompt_tokens == sum(r.prompt_tokens or 0 for r in runs) > 0
    assert s.completion_tokens == sum(r.completion_tokens or 0 for r in runs)
    assert s.total_tokens == s.prompt_tokens + s.completion_tokens
    assert (s.deletions_total, s.deletions_last_day, s.deletions_last_week) == (3, 1, 2)
    assert s.older_than_seconds == 7 * 86400


def test_older_than_moves_the_expiry_line(stocked: ThreadStore) -> None:
    """A longer idle limit counts fewer threads as expired; own TTLs still apply."""
    assert stocked.stats(older_than=timedelta(days=9, hours=12)).threads_expired == 2
    assert stocked.stats(older_than=timedelta(days=365)).threads_expired == 1
    with pytest.raises(ConfigError):
        stocked.stats(older_than=timedelta(0))


def test_empty_store_has_zeros_and_no_failure(db_url: str) -> None:
    """A new store reports zeros, no oldest error and no retry time."""
    with ThreadStore(db_url, remote=FakeRemote()) as store:
        s = store.stats()
    d = s.to_dict()
    absent: dict[str, Any] = {"last_sweep_counts": {}, "sweeps_by_outcome": {}}
    absent |= dict.fromkeys(
        ("failed_oldest_error", "failed_next_attempt_at", "expired_oldest_since",
         "last_sweep_outcome", "last_sweep_started_at", "last_sweep_finished_at",
         "last_sweep_duration_seconds", "last_success_at", "last_success_age_seconds")
    )
    assert {k: v for k, v in d.items() if k not in ("generated_at", "older_than_seconds")} == {
        k: absent.get(k, 0)
        for k in STABLE_KEYS[2:]
    }


def test_to_dict_has_stable_keys_and_is_json(stocked: ThreadStore) -> None:
    """to_dict() keeps a fixed key order and serializes to JSON (ISO 8601 UTC times)."""
    d = stocked.stats().to_dict()
    assert list(d) == STABLE_KEYS
    again = json.loads(json.dumps(d))
    assert again["generated_at"].endswith("+00:00")
    assert again["failed_next_attempt_at"].endswith("+00:00")
