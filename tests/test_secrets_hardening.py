"""Secrets stay out even when configuration is sloppy or hostile.

A key with a trailing newline (a Kubernetes secret made with ``--from-file``) just
works; a key that cannot go in a header is an auth error whose text, cause and
context never hold the key; a password in a database URL's query is masked
wherever the URL is shown.
"""

from __future__ import annotations

import traceback
from datetime import datetime, timedelta, timezone

import dashscope
import pytest
from sqlalchemy import create_engine

from conftest import API_KEY
from threadstore import ConfigError, DashScopeRemote, RemoteAuthError, ThreadStore
from threadstore.db import mask_secrets, safe_url
from threadstore.testing import Emulator, backdate


def _everything_shown(exc: BaseException) -> str:
    """What an application logging ``exc`` (with its chain) would write."""
    parts = ["".join(traceback.format_exception(exc))]
    while exc is not None:
        parts.append(repr(exc))
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return "\n".join(parts)


@pytest.mark.parametrize("where", ["argument", "environment", "sdk"])
def test_key_with_surrounding_whitespace_is_stripped(
    emulator: Emulator, sqlite_url: str, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """'KEY\\n' (argument, DASHSCOPE_API_KEY or dashscope.api_key) creates and deletes."""
    padded = f"  {API_KEY}\n"
    monkeypatch.setattr(dashscope, "api_key", padded if where == "sdk" else None)
    monkeypatch.setenv("DASHSCOPE_API_KEY", padded if where == "environment" else "")
    remote = DashScopeRemote(
        api_key=padded if where == "argument" else None, base_url=emulator.url, timeout=5
    )
    with ThreadStore(sqlite_url, remote=remote) as store:
        t = store.create_thread()
        store.add_message(t.thread_id, "hi")
        store.delete_thread(t.thread_id)
    assert not emulator.thread_exists(t.thread_id)


BAD_KEY = "sk-secret-0123456789\r\nX-Injected: 1"


def test_key_that_cannot_be_a_header_is_an_auth_error_without_the_key(
    emulator: Emulator, sqlite_url: str
) -> None:
    """InvalidHeader ('Bearer <key>') is neither chained nor transient: RemoteAuthError."""
    remote = DashScopeRemote(api_key=BAD_KEY, base_url=emulator.url, timeout=5)
    with ThreadStore(sqlite_url, remote=remote) as store:
        with pytest.raises(RemoteAuthError) as info:
            store.create_thread()
        assert info.value.__cause__ is None
        assert info.value.__context__ is None
        assert "sk-secret" not in _everything_shown(info.value)


def test_sweep_with_a_malformed_key_stops_and_keeps_every_row(
    emulator: Emulator, sqlite_url: str
) -> None:
    """The pooled delete path too: auth stop, no attempt counted, nothing leaked."""
    good = DashScopeRemote(api_key=API_KEY, base_url=emulator.url, timeout=5)
    with ThreadStore(sqlite_url, remote=good) as store:
        ids = [store.create_thread().thread_id for _ in range(3)]
        for tid in ids:
            backdate(store, tid, datetime.now(timezone.utc) - timedelta(days=10))
    bad = DashScopeRemote(api_key=BAD_KEY, base_url=emulator.url, timeout=5)
    with ThreadStore(sqlite_url, remote=bad) as store:
        with pytest.raises(RemoteAuthError) as info:
            store.sweep(timedelta(days=7))
        assert "sk-secret" not in _everything_shown(info.value)
        rows = store.list_threads()
        assert {t.thread_id for t in rows} == set(ids)
        assert all(t.attempts == 0 and t.last_error is None for t in rows)


def test_password_in_the_url_query_is_masked_in_repr_and_messages() -> None:
    """?password=… is masked like user:password@ — in repr(ThreadStore) and errors."""
    url = "postgresql://app@db.example/threads?password=hunter2&sslmode=require"
    assert "hunter2" not in safe_url(url)
    assert "sslmode=require" in safe_url(url)
    assert "hunter2" not in safe_url("postgresql://app:hunter2@db.example/threads")
    assert "hunter2" not in mask_secrets("dsn host=x password=hunter2 user=app")
    engine = create_engine("postgresql+psycopg://app@127.0.0.1:1/threads?password=hunter2")
    store = ThreadStore(engine, migrate=False, remote=DashScopeRemote(api_key="k"))
    try:
        assert "hunter2" not in repr(store)
    finally:
        store.close()


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://app@127.0.0.1:1/threads?password=hunter2",
        "postgresql://app:hunter2@127.0.0.1:notaport/threads",
    ],
)
def test_database_errors_never_show_the_password(url: str) -> None:
    """A URL that fails to open or to parse: the error and its chain omit the password."""
    with pytest.raises(ConfigError) as info:
        ThreadStore(url, remote=DashScopeRemote(api_key="k"))
    assert "hunter2" not in _everything_shown(info.value)
