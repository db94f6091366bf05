"""Four processes writing one store at once: no "database is locked", nothing lost."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select

from threadstore.models import messages, threads
from threadstore.testing import Emulator

pytestmark = pytest.mark.slow

PROCESSES = 4
THREADS_EACH = 15

# Opens the store (all four migrate a fresh database at once), says "ready", waits
# for "go" on stdin so the writes really overlap, then reports what it created.
WRITER = r"""
import os, sys
from threadstore import DashScopeRemote, ThreadStore

url, count = sys.argv[1], int(sys.argv[2])
with ThreadStore(url, remote=DashScopeRemote(timeout=10)) as store:
    print("ready", flush=True)
    sys.stdin.readline()
    n_messages = 0
    for i in range(count):
        t = store.create_thread(user_id=f"p{os.getpid()}", metadata={"i": str(i)},
                                messages=[{"role": "user", "content": f"first {i}"}])
        store.add_message(t.thread_id, f"second {i}")
        store.add_message(t.thread_id, f"third {i}", role="assistant")
        store.update_thread(t.thread_id, metadata={"i": str(i), "done": "yes"})
        store.touch(t.thread_id)
        n_messages += 3
        print("created", t.thread_id, flush=True)
    print("done", count, n_messages, flush=True)
"""


def test_four_processes_write_one_store_without_losing_anything(
    db_url: str, emulator: Emulator, tmp_path: Path
) -> None:
    """4 writers on a fresh store: all exit 0, no lock errors, every reported row is there."""
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), db_url, str(THREADS_EACH)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=os.environ.copy(),
        )
        for _ in range(PROCESSES)
    ]
    for proc in procs:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line.strip() != "ready":
            _, err = proc.communicate(timeout=30)
            pytest.fail(f"writer failed to open the store: {line!r} {err[-2000:]}")
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    created: set[str] = set()
    reported_threads = reported_messages = 0
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-3000:]
        assert "locked" not in err.lower()
        lines = out.splitlines()
        created |= {line.split()[1] for line in lines if line.startswith("created ")}
        done = lines[-1].split()
        assert done[0] == "done"
        reported_threads += int(done[1])
        reported_messages += int(done[2])

    assert reported_threads == PROCESSES * THREADS_EACH == len(created)
    engine = create_engine(db_url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            local = set(conn.execute(select(threads.c.thread_id)
                                     .where(threads.c.status == "active")).scalars())
            n_rows = conn.execute(select(func.count()).select_from(threads)).scalar()
            n_messages = conn.execute(select(func.count()).select_from(messages)).scalar()
            updated = conn.execute(
                select(func.count()).select_from(threads).where(threads.c.metadata.contains("done"))
            ).scalar()
    finally:
        engine.dispose()
    assert local == created
    assert n_rows == reported_threads  # no intent row left behind
    assert n_messages == reported_messages
    assert updated == reported_threads
    assert set(emulator.thread_ids()) == created
    assert sum(len(emulator.messages_of(t)) for t in created) == reported_messages
