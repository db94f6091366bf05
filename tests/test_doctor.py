"""`threadstore doctor`: one line per check; exit 0 all good, 1 warnings, 2 broken."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from cryptography.fernet import Fernet
from sqlalchemy import insert

from threadstore import ThreadStore
from threadstore.cli import cli
from threadstore.models import sweeps, threads
from threadstore.testing import Emulator, backdate

UTC = timezone.utc


def _doctor(url: str, *args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, ["--db", url, "doctor", *args], env=env)


def _lines(result: Result) -> dict[str, str]:
    """{check name: status} from the human output."""
    out = {}
    for line in result.stdout.splitlines():
        status, name = line.split()[:2]
        out[name] = status
    return out


def test_a_healthy_installation_is_all_ok_exit_0(store: ThreadStore, db_url: str) -> None:
    """Fresh sweep, no backlog, DashScope answering: every check ok, exit 0."""
    store.create_thread(user_id="u")
    store.sweep(timedelta(days=7))
    result = _doctor(db_url)
    assert result.exit_code == 0, result.output
    assert _lines(result) == {
        "database": "ok", "encryption": "ok", "dashscope": "ok", "last_sweep": "ok",
        "backlog": "ok", "lost_creates": "ok",
    }
    assert "most recently active thread is there" in result.stdout


def test_no_sweep_yet_and_a_backlog_are_warnings_exit_1(
    store: ThreadStore, emulator: Emulator, db_url: str
) -> None:
    """Never swept, then failed deletes waiting: warnings, exit 1."""
    fresh = _doctor(db_url)
    assert fresh.exit_code == 1, fresh.output
    assert _lines(fresh)["last_sweep"] == "warn"
    t = store.create_thread()
    backdate(store, t.thread_id, datetime.now(UTC) - timedelta(days=10))
    emulator.fail("threads.delete", status=500)
    store.sweep(timedelta(days=7))
    result = _doctor(db_url, "--json")
    assert result.exit_code == 1, result.output
    data = json.loads(result.stdout)
    checks = {c["name"]: c for c in data["checks"]}
    assert data["status"] == "warn"
    assert checks["backlog"]["status"] == "warn"
    assert "1 failed deletion" in checks["backlog"]["detail"]
    assert checks["last_sweep"]["status"] == "warn"  # the only sweep failed


def test_an_old_last_success_is_a_warning(store: ThreadStore, db_url: str) -> None:
    """A last success older than --max-sweep-age: warn; younger: ok."""
    ended = datetime.now(UTC) - timedelta(hours=3)
    with store.engine.begin() as conn:
        conn.execute(insert(sweeps).values(owner="host:1:ab", host="host", pid=1,
                                           started_at=ended - timedelta(minutes=1),
                                           finished_at=ended, outcome="ok"))
    assert _doctor(db_url, "--max-sweep-age", "4h").exit_code == 0
    warned = _doctor(db_url, "--max-sweep-age", "2h")
    assert warned.exit_code == 1
    assert "3.0h ago, more than 2.0h" in warned.stdout
    assert _doctor(db_url, "--max-sweep-age", "bogus").exit_code == 2


def test_lost_creates_are_a_warning(store: ThreadStore, db_url: str) -> None:
    """An intent row hours old: warn under lost_creates."""
    store.sweep(timedelta(days=7))
    old = datetime.now(UTC) - timedelta(hours=3)
    with store.engine.begin() as conn:
        conn.execute(insert(threads).values(thread_id="creating_x", created_at=old,
                                            last_active=old, status="creating"))
    result = _doctor(db_url)
    assert result.exit_code == 1
    assert _lines(result)["lost_creates"] == "warn"


def test_a_missing_database_is_broken_and_creates_nothing(
    emulator: Emulator, tmp_path: Path
) -> None:
    """No store at the URL: database fails, later database checks skip, exit 2."""
    url = f"sqlite:///{tmp_path / 'typo.db'}"
    result = _doctor(url)
    assert result.exit_code == 2, result.output
    lines = _lines(result)
    assert (lines["database"], lines["encryption"], lines["backlog"]) == ("fail", "skip", "skip")
    assert lines["dashscope"] == "ok"  # still checked: the endpoint is independent
    assert list(tmp_path.iterdir()) == []


def test_a_refused_key_is_broken(store: ThreadStore, emulator: Emulator, db_url: str) -> None:
    """DashScope refuses the key: dashscope fails, exit 2, and the line says why."""
    store.sweep(timedelta(days=7))
    emulator.fail("threads.retrieve", status=401)
    result = _doctor(db_url)
    assert result.exit_code == 2
    line = next(x for x in result.stdout.splitlines() if " dashscope " in f" {x} ")
    assert line.startswith("fail")
    assert "key" in line


def test_an_unreachable_endpoint_is_broken(
    store: ThreadStore, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing listening at DASHSCOPE_HTTP_BASE_URL: dashscope fails, exit 2."""
    import dashscope

    monkeypatch.setattr(dashscope, "base_http_api_url", "http://127.0.0.1:9/api/v1")
    monkeypatch.setenv("DASHSCOPE_HTTP_BASE_URL", "http://127.0.0.1:9/api/v1")
    result = _doctor(db_url)
    assert result.exit_code == 2
    assert _lines(result)["dashscope"] == "fail"


def test_a_wrong_encryption_key_is_broken(
    emulator: Emulator, sqlite_url: str, remote: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows written under one key, doctor run with another: encryption fails, exit 2."""
    key = Fernet.generate_key().decode()
    with ThreadStore(sqlite_url, remote=remote, encryption_key=key) as store:  # type: ignore[arg-type]
        t = store.create_thread(metadata={"secret": "x"})
        store.add_message(t.thread_id, "private")
    monkeypatch.setenv("THREADSTORE_ENCRYPTION_KEY", Fernet.generate_key().decode())
    result = _doctor(sqlite_url)
    assert result.exit_code == 2, result.output
    assert _lines(result)["encryption"] == "fail"
    monkeypatch.setenv("THREADSTORE_ENCRYPTION_KEY", key)
    assert _lines(_doctor(sqlite_url))["encryption"] == "ok"


def test_a_vanished_newest_thread_is_a_warning(
    store: ThreadStore, db_url: str
) -> None:
    """The most recently active thread unknown to DashScope: a key/workspace warning."""
    t = store.create_thread()
    store.sweep(timedelta(days=7))
    store.remote.delete_thread(t.thread_id)  # behind the store's back
    result = _doctor(db_url)
    assert result.exit_code == 1
    assert _lines(result)["dashscope"] == "warn"
    assert t.thread_id in result.stdout


def test_an_endpoint_whose_404_cannot_be_trusted_is_broken(
    store: ThreadStore, emulator: Emulator, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A base URL without /api/v1 answers 404 in a gateway's shape: dashscope fails, exit 2."""
    import dashscope

    store.sweep(timedelta(days=7))
    wrong = emulator.url.rsplit("/api/v1", 1)[0]
    monkeypatch.setattr(dashscope, "base_http_api_url", wrong)
    monkeypatch.setenv("DASHSCOPE_HTTP_BASE_URL", wrong)
    result = _doctor(db_url)
    assert result.exit_code == 2, result.output
    line = next(x for x in result.stdout.splitlines() if " dashscope " in f" {x} ")
    assert line.startswith("fail")
    assert "404" in line
