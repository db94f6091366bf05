"""The periodic sweep: ThreadStore.start_sweeper and `threadstore schedule`."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
from click.testing import CliRunner

from helpers import expired
from threadstore import ConfigError, DashScopeRemote, ThreadStore
from threadstore.cli import cli
from threadstore.schedule import default_jitter, parse_duration
from threadstore.testing import Emulator

WEEK = timedelta(days=7)


class _Records(logging.Handler):
    """Collects the messages of one logger (independent of pytest's caplog and -q)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self, level: int = logging.DEBUG) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno >= level]


@pytest.fixture
def schedule_log() -> Iterator[_Records]:
    logger = logging.getLogger("threadstore.schedule")
    handler = _Records()
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def _expired(store: ThreadStore) -> str:
    return expired(store, 1)[0]


def _wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_sweeper_runs_periodically(
    store: ThreadStore, emulator: Emulator, schedule_log: _Records
) -> None:
    """start_sweeper(every=1 s) returns a running scheduler that sweeps again and again."""
    first = _expired(store)
    scheduler = store.start_sweeper(WEEK, every=timedelta(seconds=1))
    try:
        assert scheduler.running
        (job,) = scheduler.get_jobs()
        assert (job.max_instances, job.coalesce) == (1, True)
        _wait_for(lambda: not emulator.thread_exists(first))
        second = _expired(store)  # expires after the first run
        _wait_for(lambda: not emulator.thread_exists(second))
    finally:
        scheduler.shutdown()
    assert store.list_threads() == []
    done = [m for m in schedule_log.messages() if m.startswith("sweep done")]
    assert len(done) >= 2


def test_failed_run_is_logged_and_the_schedule_goes_on(
    store: ThreadStore, emulator: Emulator, schedule_log: _Records
) -> None:
    """A run stopped by a 401 is logged as an error; the next run, key fixed, sweeps."""
    tid = _expired(store)
    fault = emulator.fail("threads.delete", status=401)
    scheduler = store.start_sweeper(WEEK, every=timedelta(seconds=1))
    try:
        _wait_for(lambda: any("API key" in m for m in schedule_log.messages(logging.ERROR)))
        assert store.get_thread(tid)
        fault.cancel()
        _wait_for(lambda: not emulator.thread_exists(tid))
    finally:
        scheduler.shutdown()
    assert store.list_threads() == []


def test_start_sweeper_refuses_bad_options(fake_store: ThreadStore) -> None:
    """Bad sweep options or interval fail at start, not an hour later in a log."""
    with pytest.raises(ConfigError):
        fake_store.start_sweeper(WEEK, every=timedelta(hours=1), concurrency=0)
    with pytest.raises(ConfigError):
        fake_store.start_sweeper(-WEEK)
    with pytest.raises(ConfigError):
        fake_store.start_sweeper(WEEK, every=timedelta(0))
    with pytest.raises(TypeError):
        fake_store.start_sweeper(WEEK, bogus=1)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("15m", 900), ("1h", 3600), ("1d", 86400), ("1.5h", 5400), ("2W", 1209600)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    """Durations are a number and a unit: s, m, h, d, w."""
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "1", "h", "5x", "-1h", "0s", "1 hour"])
def test_parse_duration_refuses_nonsense(text: str) -> None:
    """Anything else is a ConfigError."""
    with pytest.raises(ConfigError):
        parse_duration(text)


def test_default_jitter() -> None:
    """Jitter is a tenth of the interval, capped at 5 minutes, and none for short intervals."""
    assert default_jitter(timedelta(seconds=1)) is None
    assert default_jitter(timedelta(minutes=10)) == 60
    assert default_jitter(timedelta(days=1)) == 300


@pytest.mark.parametrize(
    "args",
    [
        ["schedule", "--days", "7", "--every", "5x"],
        ["schedule", "--days", "7", "--every", "0s"],
        ["schedule", "--every", "1h"],
        ["schedule", "--days", "7", "--hours", "1"],
    ],
)
def test_cli_schedule_usage_errors_exit_2(sqlite_url: str, args: list[str]) -> None:
    """A bad interval or a missing/duplicate age is one line on stderr and exit 2."""
    result = CliRunner().invoke(cli, ["--db", sqlite_url, *args])
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_cli_schedule_sweeps_until_signalled(
    sqlite_url: str, remote: DashScopeRemote, emulator: Emulator, sig: signal.Signals
) -> None:
    """`threadstore schedule --every 1s` logs each run on stderr and exits 0 on SIGTERM/SIGINT."""
    db_url = sqlite_url  # signals are backend-agnostic; the sweeps are tested on both
    with ThreadStore(db_url, remote=remote) as store:
        tid = _expired(store)
    lines: list[str] = []
    with subprocess.Popen(
        [sys.executable, "-m", "threadstore", "--db", db_url, "schedule", "--days", "7",
         "--every", "1s"],
        env=dict(os.environ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stderr is not None
        stream = proc.stderr
        reader = threading.Thread(target=lambda: lines.extend(iter(stream.readline, "")))
        reader.start()
        try:
            _wait_for(lambda: sum("sweep done" in line for line in lines) >= 2, timeout=20)
        finally:
            proc.send_signal(sig)
            proc.wait(timeout=20)
            reader.join(timeout=5)
    assert proc.returncode == 0, "".join(lines)
    assert not emulator.thread_exists(tid)
    assert any("1 deleted" in line for line in lines)
    assert "scheduler stopped" in lines[-1]
    assert not any("Traceback" in line for line in lines)
