"""Prometheus metrics: --metrics-file on sweep and stats, /metrics for schedule."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import insert

from helpers import run_python
from threadstore import DashScopeRemote, ThreadStore
from threadstore.cli import cli
from threadstore.metrics import METRIC_NAMES, serve
from threadstore.models import threads
from threadstore.testing import Emulator, FakeRemote, backdate

UTC = timezone.utc


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of a Prometheus text exposition."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def _expired(store: ThreadStore, n: int, idle: timedelta = timedelta(days=10)) -> list[str]:
    ids = []
    for _ in range(n):
        t = store.create_thread(user_id="u")
        backdate(store, t.thread_id, datetime.now(UTC) - idle)
        ids.append(t.thread_id)
    return ids


def test_sweep_writes_the_metrics_file(
    store: ThreadStore, emulator: Emulator, db_url: str, tmp_path: Path
) -> None:
    """After `sweep --metrics-file`, the file holds the sweep's outcome and the store's state."""
    _expired(store, 3)
    store.create_thread(user_id="fresh")
    emulator.fail("threads.delete", status=500, times=1)
    folder = tmp_path / "textfile"
    folder.mkdir()
    path = folder / "threadstore.prom"
    before = time.time()
    result = CliRunner().invoke(cli, ["--db", db_url, "sweep", "--days", "7", "--concurrency",
                                      "1", "--metrics-file", str(path)])
    assert result.exit_code == 1, result.output
    got = _samples(path.read_text())
    assert got[("threadstore_sweep_last_threads", (("result", "deleted"),))] == 2
    assert got[("threadstore_sweep_last_threads", (("result", "failed"),))] == 1
    assert got[("threadstore_sweep_last_ok", ())] == 0
    assert got[("threadstore_sweeps_total", (("outcome", "failed"),))] == 1
    assert got[("threadstore_failed_deletions", ())] == 1
    assert got[("threadstore_threads", (("state", "active"),))] == 1
    assert got[("threadstore_sweep_last_success_timestamp_seconds", ())] == 0  # never ok yet
    assert got[("threadstore_sweep_last_duration_seconds", ())] >= 0
    assert got[("threadstore_stats_timestamp_seconds", ())] >= before
    assert sorted(p.name for p in folder.iterdir()) == ["threadstore.prom"]  # no temp left

    emulator.clear_faults()
    again = CliRunner().invoke(cli, ["--db", db_url, "sweep", "--days", "7",
                                     "--metrics-file", str(path)])
    assert again.exit_code == 0, again.output
    got = _samples(path.read_text())
    assert got[("threadstore_sweep_last_ok", ())] == 1
    assert got[("threadstore_sweep_last_success_timestamp_seconds", ())] >= before


def test_every_documented_metric_is_written(sqlite_url: str, tmp_path: Path) -> None:
    """The file has every name in METRIC_NAMES (the README lists the same)."""
    ThreadStore(sqlite_url, remote=FakeRemote()).close()
    path = tmp_path / "m.prom"
    result = CliRunner().invoke(cli, ["--db", sqlite_url, "stats", "--metrics-file", str(path)])
    assert result.exit_code == 0, result.output
    names = {family.name for family in text_string_to_metric_families(path.read_text())}
    # The parser drops a counter's _total suffix from the family name.
    assert {n.removesuffix("_total") for n in METRIC_NAMES} <= names
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert all(name in readme for name in METRIC_NAMES)


def test_stats_metrics_show_backlog_oldest_expired_and_lost_creates(
    fake_store: ThreadStore, fake: FakeRemote, sqlite_url: str, tmp_path: Path
) -> None:
    """The backlog, the age of the oldest expired thread and lost creates are in the file."""
    _expired(fake_store, 1, idle=timedelta(days=9))  # expired for about 2 days
    old = datetime.now(UTC) - timedelta(hours=5)
    with fake_store.engine.begin() as conn:
        conn.execute(insert(threads).values(thread_id="creating_lost", created_at=old,
                                            last_active=old, status="creating"))
    path = tmp_path / "m.prom"
    result = CliRunner().invoke(cli, ["--db", sqlite_url, "stats", "--metrics-file", str(path)])
    assert result.exit_code == 0, result.output
    got = _samples(path.read_text())
    age = got[("threadstore_oldest_expired_age_seconds", ())]
    assert 2 * 86400 - 120 < age < 2 * 86400 + 120
    assert got[("threadstore_lost_create_rows", ())] == 1
    assert got[("threadstore_threads", (("state", "expired"),))] == 1


def test_a_metrics_file_in_a_missing_directory_is_refused_before_sweeping(
    fake_store: ThreadStore, sqlite_url: str, tmp_path: Path
) -> None:
    """Bad --metrics-file: one line, exit 2, nothing swept."""
    _expired(fake_store, 1)
    result = CliRunner().invoke(cli, ["--db", sqlite_url, "sweep", "--days", "7",
                                      "--metrics-file", str(tmp_path / "no" / "m.prom")])
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert fake_store.stats().threads_expired == 1


def test_serve_answers_each_scrape_with_a_fresh_snapshot(fake_store: ThreadStore) -> None:
    """/metrics reflects the store at scrape time."""
    server = serve(0, fake_store.stats, addr="127.0.0.1")
    try:
        url = f"http://127.0.0.1:{server.port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as answer:
            first = _samples(answer.read().decode())
        fake_store.create_thread()
        with urllib.request.urlopen(url, timeout=5) as answer:
            second = _samples(answer.read().decode())
    finally:
        server.close()
    key = ("threadstore_threads", (("state", "active"),))
    assert (first[key], second[key]) == (0, 1)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
def test_schedule_serves_metrics_while_it_runs(
    sqlite_url: str, emulator: Emulator, remote: DashScopeRemote
) -> None:
    """`schedule --metrics-port N` serves /metrics with the first sweep's outcome."""
    with ThreadStore(sqlite_url, remote=remote) as store:
        _expired(store, 1)
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "threadstore", "--db", sqlite_url, "schedule", "--days", "7",
         "--every", "1h", "--metrics-port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=dict(os.environ),
    )
    try:
        got: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        for _ in range(150):
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/metrics", timeout=2
                ) as answer:
                    got = _samples(answer.read().decode())
            except OSError:
                got = {}
            if got.get(("threadstore_sweep_last_ok", ())) == 1:
                break
            time.sleep(0.1)
        assert got.get(("threadstore_sweep_last_ok", ())) == 1, got
        assert got[("threadstore_sweep_last_threads", (("result", "deleted"),))] == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err


def test_stats_does_not_load_prometheus_client_or_tqdm(sqlite_url: str) -> None:
    """`threadstore stats` starts lean: the metrics and progress libraries load only when used."""
    ThreadStore(sqlite_url, remote=FakeRemote()).close()
    code = (
        "import atexit, sys\n"
        "from threadstore.cli import main\n"
        f"sys.argv = ['threadstore', '--db', {sqlite_url!r}, 'stats']\n"
        # main() ends the process; atexit handlers still run, after the command.
        "atexit.register(lambda: print('LOADED', 'prometheus_client' in sys.modules,"
        " 'tqdm' in sys.modules))\n"
        "main()\n"
    )
    done = run_python(code)
    assert "LOADED False False" in done.stdout, done.stdout + done.stderr
