"""Sweepers in separate processes: `python -m threadstore sweep` against one database.

The processes reach the in-test emulator through DASHSCOPE_HTTP_BASE_URL and
DASHSCOPE_API_KEY (set by the ``emulator`` fixture), exactly as a cron job would.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import func, insert, select, text
from sqlalchemy.engine import make_url

from helpers import assert_no_orphans as _assert_no_orphans
from helpers import local_ids as _local_ids
from threadstore import DashScopeRemote, ThreadStore
from threadstore.models import deletions, threads
from threadstore.testing import Emulator

pytestmark = pytest.mark.slow


def _seed(store: ThreadStore, emulator: Emulator, n: int) -> list[str]:
    """``n`` threads that exist on the emulator and are mirrored, idle for two hours."""
    ids = [emulator.seed_thread(metadata={"i": i}) for i in range(n)]
    idle = datetime.now(timezone.utc) - timedelta(hours=2)
    with store.engine.begin() as conn:
        conn.execute(
            insert(threads),
            [{"thread_id": t, "created_at": idle, "last_active": idle} for t in ids],
        )
    return ids


def _sweeper(db_url: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "threadstore", "--db", db_url, "sweep", "--hours", "1", *args],
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait_until_idle(pids: list[int], timeout: float = 10.0) -> None:
    """Wait until the processes have started up and stopped using CPU (blocked on a lock).

    Linux only; elsewhere a fixed pause does.
    """
    if not Path("/proc/self/stat").exists():
        time.sleep(3.0)
        return
    deadline = time.monotonic() + timeout
    last = [_cpu_seconds(p) for p in pids]
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = [_cpu_seconds(p) for p in pids]
        if all(b - a < 0.01 and b > 0.3 for a, b in zip(last, now, strict=True)):
            return
        last = now


@contextmanager
def _claims_blocked(db_url: str, store: ThreadStore, pids: list[int]) -> Iterator[None]:
    """Hold the database's claim lock so that all sweepers start claiming together.

    SQLite: a write transaction (the sweepers' BEGIN IMMEDIATE waits on it).
    PostgreSQL: an EXCLUSIVE table lock (SELECT … FOR UPDATE waits; plain reads do not).
    MySQL/MariaDB: the same with a READ table lock.
    """
    url = make_url(db_url)
    if url.get_backend_name() == "sqlite":
        conn = sqlite3.connect(url.database or "", isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
            _wait_until_idle(pids)
        finally:
            conn.execute("ROLLBACK")
            conn.close()
        return
    if url.get_backend_name() in ("mysql", "mariadb"):
        with _mysql_claims_blocked(store, pids):
            yield
        return
    with store.engine.connect() as conn:
        trans = conn.begin()
        conn.execute(text("LOCK TABLE threads IN EXCLUSIVE MODE"))
        try:
            yield
            with store.engine.connect() as probe:
                deadline = time.monotonic() + 15
                waiting = 0
                while waiting < len(pids) and time.monotonic() < deadline:
                    time.sleep(0.05)
                    waiting = probe.execute(
                        text(
                            "SELECT count(*) FROM pg_locks "
                            "WHERE NOT granted AND relation = 'threads'::regclass"
                        )
                    ).scalar_one()
        finally:
            trans.rollback()


@contextmanager
def _mysql_claims_blocked(store: ThreadStore, pids: list[int]) -> Iterator[None]:
    """MySQL/MariaDB: a READ table lock (SELECT … FOR UPDATE waits; plain reads do not)."""
    with store.engine.connect() as conn:
        conn.execute(text("LOCK TABLES threads READ"))
        try:
            yield
            with store.engine.connect() as probe:
                deadline = time.monotonic() + 15
                waiting = 0
                while waiting < len(pids) and time.monotonic() < deadline:
                    time.sleep(0.05)
                    waiting = probe.execute(
                        text(
                            "SELECT count(*) FROM information_schema.PROCESSLIST "
                            "WHERE DB = DATABASE() AND STATE LIKE 'Waiting for table%'"
                        )
                    ).scalar_one()
        finally:
            conn.execute(text("UNLOCK TABLES"))


def test_four_sweeper_processes_delete_each_thread_exactly_once(
    db_url: str, emulator: Emulator
) -> None:
    """Four concurrent sweeper processes: every expired thread gets exactly one remote delete."""
    _sweepers_delete_each_thread_once(db_url, emulator, 4)


@pytest.mark.mysql
def test_sixteen_sweeper_processes_on_mysql_never_fail_on_deadlock(
    mysql_url: str, emulator: Emulator
) -> None:
    """16 sweepers on MySQL/MariaDB: all exit 0 (deadlock victims retry), one delete each."""
    _sweepers_delete_each_thread_once(mysql_url, emulator, 16)


def _sweepers_delete_each_thread_once(db_url: str, emulator: Emulator, n: int) -> None:
    remote = DashScopeRemote(base_url=emulator.url)
    with ThreadStore(db_url, remote=remote) as store:
        ids = _seed(store, emulator, 400)
        emulator.set_latency(0.02, op="threads.delete")
        pids: list[int] = []
        with _claims_blocked(db_url, store, pids):
            procs = [_sweeper(db_url) for _ in range(n)]
            pids.extend(p.pid for p in procs)
        outputs = [p.communicate(timeout=240) for p in procs]

        for proc, (_out, err) in zip(procs, outputs, strict=True):
            assert proc.returncode == 0, err
        assert _local_ids(store.engine) == set()
        assert emulator.thread_ids() == []
        deletes = {t: emulator.count("threads.delete", thread_id=t, status=200) for t in ids}
        assert [t for t, n in deletes.items() if n != 1] == []
        with store.engine.connect() as conn:
            logged = conn.execute(select(func.count()).select_from(deletions)).scalar_one()
            deleters = conn.execute(
                select(func.count(func.distinct(deletions.c.deleted_by)))
            ).scalar_one()
        assert logged == 400
        assert deleters >= 2, "the sweepers did not overlap; the test proved nothing"


def test_killed_sweeper_leaves_no_orphan_and_a_rerun_finishes(
    db_url: str, emulator: Emulator
) -> None:
    """SIGKILL mid-sweep orphans nothing; once its leases expire a rerun completes the job."""
    remote = DashScopeRemote(base_url=emulator.url)
    with ThreadStore(db_url, remote=remote) as store:
        ids = _seed(store, emulator, 48)
        emulator.set_latency(0.5, op="threads.delete")
        proc = _sweeper(db_url, "--lease", "2", "--timeout", "0.9", "--concurrency", "8")
        try:
            deadline = time.monotonic() + 30
            while emulator.count("threads.delete") < 8:  # the first wave answered ...
                assert proc.poll() is None, proc.communicate()[1]
                assert time.monotonic() < deadline
                time.sleep(0.01)
            time.sleep(0.25)  # ... the second wave in flight (0.5 s each)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.communicate()
        assert proc.returncode == -signal.SIGKILL

        killed = time.monotonic()
        time.sleep(0.6)  # the emulator finishes the deletes the dead process sent
        _assert_no_orphans(store.engine, emulator, ids)
        left = _local_ids(store.engine)
        assert left, "the sweeper finished before it was killed"
        assert any(not emulator.thread_exists(t) for t in left), "no delete was cut off"

        time.sleep(max(0.0, killed + 2.1 - time.monotonic()))  # its 2 s leases run out
        emulator.set_latency(0.01, op="threads.delete")
        rerun = _sweeper(db_url, "--lease", "2", "--timeout", "0.9")
        _out, err = rerun.communicate(timeout=60)
        assert rerun.returncode == 0, err
        assert _local_ids(store.engine) == set()
        assert emulator.thread_ids() == []
        with store.engine.connect() as conn:
            results = dict(
                conn.execute(
                    select(deletions.c.remote_result, func.count()).group_by(
                        deletions.c.remote_result
                    )
                ).all()
            )
        assert results.get("already_gone", 0) >= 1
        assert sum(results.values()) == len(ids)
