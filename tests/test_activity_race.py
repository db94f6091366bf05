"""Activity never loses to the sweep.

A write that returned OK was not swept; a write on a thread a sweep has claimed
fails with ThreadExpired (pin and set_ttl included); ``last_active`` never moves
backwards; a lease too short for the remote timeout is refused.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from threadstore import (
    ConfigError,
    DashScopeRemote,
    ThreadExpired,
    ThreadNotFound,
    ThreadStore,
)
from threadstore.cli import cli
from threadstore.models import threads
from threadstore.sweep import claim_thread
from threadstore.testing import Emulator, backdate

WEEK = timedelta(days=7)


def _now() -> datetime:
    return datetime.now(timezone.utc)


WRITES: dict[str, Callable[[ThreadStore, str], object]] = {
    "pin": lambda s, t: s.pin(t),
    "unpin": lambda s, t: s.unpin(t),
    "set_ttl": lambda s, t: s.set_ttl(t, timedelta(days=30)),
    "clear_ttl": lambda s, t: s.set_ttl(t, None),
    "touch": lambda s, t: s.touch(t),
    "add_message": lambda s, t: s.add_message(t, "hello"),
    "update_thread": lambda s, t: s.update_thread(t, metadata={"k": "v"}),
    "run": lambda s, t: s.run(t, assistant_id="asst_1", poll_interval=0.01),
}


@pytest.mark.parametrize("write", sorted(WRITES))
def test_every_write_on_a_claimed_thread_raises_thread_expired(
    store: ThreadStore, emulator: Emulator, write: str
) -> None:
    """pin/set_ttl/touch/messages/updates/runs on a thread a sweep holds: ThreadExpired,
    and the row is unchanged (a pin that returned OK would be deleted anyway)."""
    tid = store.create_thread().thread_id
    before = store.get_thread(tid)
    with store.engine.begin() as conn:
        assert claim_thread(conn, tid, owner="sweeper-elsewhere", lease=timedelta(minutes=5))
    with pytest.raises(ThreadExpired):
        WRITES[write](store, tid)
    after = store.get_thread(tid)
    assert (after.pinned, after.ttl, after.last_active, after.metadata) == (
        before.pinned, before.ttl, before.last_active, before.metadata
    )


def test_touch_never_moves_last_active_backwards(store: ThreadStore) -> None:
    """touch(at=8 days ago) on a thread active a second ago keeps it; the sweep spares it."""
    t = store.create_thread()
    touched = store.touch(t.thread_id, at=_now() - timedelta(days=8))
    assert touched.last_active >= t.last_active
    report = store.sweep(WEEK)
    assert report.expired == 0
    assert store.get_thread(t.thread_id).thread_id == t.thread_id


def test_touch_at_a_later_time_moves_activity_forward(store: ThreadStore) -> None:
    """A backfill newer than the recorded activity still counts."""
    t = store.create_thread()
    backdate(store, t.thread_id, _now() - timedelta(days=10))
    later = _now() - timedelta(days=1)
    assert store.touch(t.thread_id, at=later).last_active == later
    assert store.sweep(WEEK).expired == 0


def test_set_ttl_follows_forward_activity_only(store: ThreadStore) -> None:
    """A thread's own TTL counts from its latest activity, never from an older backfill."""
    t = store.set_ttl(store.create_thread().thread_id, timedelta(hours=1))
    store.touch(t.thread_id, at=_now() - timedelta(hours=5))
    assert store.sweep(WEEK).expired == 0


def test_writers_racing_sweepers_never_lose_an_ok_write(
    db_url: str, emulator: Emulator
) -> None:
    """Concurrent touch/add_message/pin writers against concurrent sweeps, on every
    backend: no thread whose write returned OK is deleted, and no write lands on a
    claimed row (it raises ThreadExpired instead)."""
    remote = DashScopeRemote(base_url=emulator.url, timeout=5)
    with ThreadStore(db_url, remote=remote) as store:
        ids = [store.create_thread().thread_id for _ in range(240)]
        for tid in ids:
            backdate(store, tid, _now() - timedelta(days=10))
        ok: set[str] = set()
        refused: set[str] = set()
        lock = threading.Lock()
        start = threading.Barrier(5)

        def writer(seed: int) -> None:
            rng = random.Random(seed)
            order = ids[:]
            rng.shuffle(order)
            start.wait()
            for tid in order[:120]:
                action = rng.choice(["touch", "add_message", "pin", "set_ttl"])
                try:
                    WRITES[action](store, tid)
                except (ThreadExpired, ThreadNotFound):
                    with lock:
                        refused.add(tid)
                else:
                    with lock:
                        ok.add(tid)

        def sweeper() -> None:
            with ThreadStore(db_url, remote=remote) as other:
                start.wait()
                for _ in range(6):
                    other.sweep(WEEK, concurrency=4)

        workers = [threading.Thread(target=writer, args=(i,)) for i in range(3)]
        workers += [threading.Thread(target=sweeper) for _ in range(2)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(timeout=120)
        with store.engine.connect() as conn:
            local = set(conn.execute(select(threads.c.thread_id)).scalars())
        lost = sorted(tid for tid in ok if tid not in local)
        assert lost == [], f"{len(lost)} threads deleted although a write on them returned OK"
        assert all(emulator.thread_exists(t) for t in local), "a local row lost its thread"
        assert ok, "no write succeeded: the race proved nothing"
        assert len(local) < len(ids), "no thread was swept: the race proved nothing"


def test_lease_shorter_than_twice_the_timeout_is_refused(
    store: ThreadStore, emulator: Emulator, db_url: str
) -> None:
    """--lease 10 with 30 s requests could put two deletes in flight: refused up front."""
    ids = [store.create_thread().thread_id for _ in range(3)]
    for tid in ids:
        backdate(store, tid, _now() - timedelta(days=10))
    store.remote.timeout = 5  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="twice the timeout"):
        store.sweep(WEEK, lease=timedelta(seconds=10))
    with pytest.raises(ConfigError, match="twice the timeout"):
        store.start_sweeper(WEEK, lease=timedelta(seconds=10))
    result = CliRunner().invoke(cli, ["--db", db_url, "sweep", "--days", "7", "--lease", "10"])
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "lease" in result.stderr
    assert emulator.count("threads.delete") == 0
    assert {t.thread_id for t in store.list_threads()} == set(ids)
    store.sweep(WEEK, lease=timedelta(seconds=11))  # more than twice 5 s: fine
    assert store.list_threads() == []
