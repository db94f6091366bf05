"""Progress on long work: a bar on a terminal, periodic lines with -v off one."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios
from datetime import datetime, timedelta, timezone

import pytest
from click.testing import CliRunner
from cryptography.fernet import Fernet
from sqlalchemy import insert

from threadstore import ThreadStore
from threadstore.cli import cli
from threadstore.models import threads
from threadstore.testing import Emulator, FakeRemote, backdate

UTC = timezone.utc


def _bulk_threads(store: ThreadStore, emulator: Emulator, n: int) -> None:
    """``n`` threads seeded in the emulator and mirrored straight into the table (fast)."""
    now = datetime.now(UTC)
    rows = [{"thread_id": emulator.seed_thread(), "created_at": now, "last_active": now,
             "status": "active"} for _ in range(n)]
    with store.engine.begin() as conn:
        conn.execute(insert(threads), rows)


@pytest.fixture
def fast_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    """Progress lines on every update instead of every 10 s."""
    monkeypatch.setattr("threadstore.cli.PROGRESS_INTERVAL", 0.0)


def test_verify_of_4000_threads_shows_progress_with_v(
    emulator: Emulator, sqlite_url: str, fast_lines: None
) -> None:
    """`-v verify` off a terminal prints "verify: N/4,000 threads (…/s, ETA …)" lines."""
    with ThreadStore(sqlite_url, remote=FakeRemote()) as store:
        _bulk_threads(store, emulator, 4000)
    result = CliRunner().invoke(cli, ["--db", sqlite_url, "-v", "verify", "--concurrency", "32"])
    assert result.exit_code == 0, result.stderr[-2000:]
    lines = [x for x in result.stderr.splitlines() if x.startswith("verify: ")]
    assert lines, result.stderr[-2000:]
    assert any("/4,000 threads" in x and "/s" in x for x in lines)
    assert any("ETA" in x for x in lines)
    assert lines[-1].startswith("verify: 4,000/4,000 threads (100%")


def test_no_progress_lines_without_v_off_a_terminal(
    emulator: Emulator, sqlite_url: str, fast_lines: None
) -> None:
    """Without -v in a pipe or log: only the summary line."""
    with ThreadStore(sqlite_url, remote=FakeRemote()) as store:
        _bulk_threads(store, emulator, 20)
    result = CliRunner().invoke(cli, ["--db", sqlite_url, "verify"])
    assert not [x for x in result.stderr.splitlines() if x.startswith("verify: ")]
    assert result.stderr.strip().splitlines()[-1].startswith("checked 20 threads")


def test_sweep_and_rotate_key_show_progress_with_v(
    store: ThreadStore, emulator: Emulator, db_url: str, fast_lines: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`-v sweep` and `-v db rotate-key` print their progress lines too."""
    for _ in range(3):
        t = store.create_thread(metadata={"k": "v"})
        store.add_message(t.thread_id, "hello")
        backdate(store, t.thread_id, datetime.now(UTC) - timedelta(days=10))
    store.create_thread(metadata={"k": "v"})
    swept = CliRunner().invoke(cli, ["--db", db_url, "-v", "sweep", "--days", "7"])
    assert swept.exit_code == 0, swept.output
    assert "sweep: 3/3 threads (100%" in swept.stderr
    monkeypatch.setenv("THREADSTORE_ENCRYPTION_KEY", Fernet.generate_key().decode())
    rotated = CliRunner().invoke(cli, ["--db", db_url, "-v", "db", "rotate-key",
                                       "--batch-size", "1"])
    assert rotated.exit_code == 0, rotated.output
    assert "rotate-key: 1/1 rows (100%" in rotated.stderr  # the one thread left


def _on_a_terminal(args: list[str], *, stdout_too: bool = False) -> str:
    """Run threadstore with stderr (and maybe stdout) on a pty; what the terminal showed."""
    controller, terminal = pty.openpty()
    # A real terminal has a size; a fresh pty is 0x0, where a bar has no room.
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "threadstore", *args],
        stdout=terminal if stdout_too else subprocess.DEVNULL, stderr=terminal,
        env=dict(os.environ),
    )
    os.close(terminal)
    seen = b""
    try:
        while True:
            ready, _, _ = select.select([controller], [], [], 60)
            if not ready:
                break
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
    finally:
        proc.wait(timeout=60)
        os.close(controller)
    return seen.decode(errors="replace")


def test_verify_on_a_terminal_draws_a_bar(emulator: Emulator, sqlite_url: str) -> None:
    """With stderr on a terminal (a pty), verify draws a tqdm bar with count and rate."""
    with ThreadStore(sqlite_url, remote=FakeRemote()) as store:
        _bulk_threads(store, emulator, 300)
    text = _on_a_terminal(["--db", sqlite_url, "verify"])
    assert "verify:" in text
    assert "/300" in text
    assert "threads/s" in text
    assert "checked 300 threads" in text


def test_export_to_the_terminal_draws_no_bar_over_its_rows(sqlite_url: str) -> None:
    """Rows printed on the terminal get no bar drawn over them; to a file they do."""
    with ThreadStore(sqlite_url, remote=FakeRemote()) as store:
        for _ in range(3):
            store.create_thread(user_id="u")
    shown = _on_a_terminal(["--db", sqlite_url, "export", "threads"], stdout_too=True)
    assert shown.count('"thread_id"') == 3
    assert "export threads:" not in shown


def test_export_progress_has_the_filtered_total_and_an_eta(
    db_url: str, tmp_path: object, fast_lines: None
) -> None:
    """`-v export --user u1` counts what it will write: "N/12,000 rows (…%, …/s, ETA …)"."""
    now = datetime.now(UTC)
    with ThreadStore(db_url, remote=FakeRemote()) as store:
        rows = [{"thread_id": f"thread_{user}_{i:05d}", "user_id": user, "created_at": now,
                 "last_active": now, "status": "active"}
                for user, n in (("u1", 12_000), ("u2", 300)) for i in range(n)]
        with store.engine.begin() as conn:
            conn.execute(insert(threads), rows)
    out = os.path.join(str(tmp_path), "t.jsonl")
    result = CliRunner().invoke(
        cli, ["--db", db_url, "-v", "export", "threads", "--user", "u1", "-o", out]
    )
    assert result.exit_code == 0, result.stderr[-2000:]
    lines = [x for x in result.stderr.splitlines() if x.startswith("export threads: ")]
    assert lines, result.stderr[-2000:]
    # (A line the ticker prints while the COUNT itself runs has no total yet.)
    assert any("/12,000 rows" in x for x in lines)
    assert not any("/12,300 rows" in x for x in lines)
    assert lines[-1].startswith("export threads: 12,000/12,000 rows (100%")
    with open(out, encoding="utf-8") as written:
        assert sum(1 for _ in written) == 12_000
