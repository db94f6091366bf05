"""Shared fixtures.

* ``db_url`` — every store test runs on SQLite (a file in tmp_path) and on
  PostgreSQL when ``THREADSTORE_TEST_POSTGRES_URL`` is set (each test gets its own
  schema through ``search_path``, dropped afterwards). Without it the PostgreSQL
  variants are skipped with a visible reason; CI always sets it.
* ``emulator`` — the DashScope HTTP emulator on 127.0.0.1, with the SDK pointed at
  it (``dashscope.base_http_api_url`` in-process, ``DASHSCOPE_HTTP_BASE_URL`` for
  subprocesses) and the test API key set.
* ``store`` — a ThreadStore on ``db_url`` talking to the emulator through the
  real SDK; ``fake_store`` — SQLite + FakeRemote, for fast unit tests.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import dashscope
import pytest
from sqlalchemy import create_engine, text

from threadstore import DashScopeRemote, ThreadStore
from threadstore.testing import Emulator, FakeRemote

API_KEY = "sk-test-0123456789abcdef"
PG_ENV = "THREADSTORE_TEST_POSTGRES_URL"


def _pg_base() -> str | None:
    return os.environ.get(PG_ENV) or None


def _with_search_path(url: str, schema: str) -> str:
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options={quote(f'-csearch_path={schema}')}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database URL: SQLite file, or a PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    base = _pg_base()
    if base is None:
        pytest.skip(f"PostgreSQL tests need {PG_ENV} (CI sets it)")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base.replace("postgresql://", "postgresql+psycopg://", 1))
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield _with_search_path(base, schema)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'store.db'}"


@pytest.fixture
def emulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[Emulator]:
    """The DashScope emulator, with the SDK and the environment pointed at it."""
    emu = Emulator(api_key=API_KEY).start()
    monkeypatch.setattr(dashscope, "base_http_api_url", emu.url)
    monkeypatch.setattr(dashscope, "api_key", API_KEY)
    monkeypatch.setenv("DASHSCOPE_HTTP_BASE_URL", emu.url)
    monkeypatch.setenv("DASHSCOPE_API_KEY", API_KEY)
    try:
        yield emu
    finally:
        emu.stop()


@pytest.fixture
def remote(emulator: Emulator) -> DashScopeRemote:
    return DashScopeRemote(api_key=API_KEY, base_url=emulator.url, timeout=5)


@pytest.fixture
def store(db_url: str, remote: DashScopeRemote) -> Iterator[ThreadStore]:
    """A store on every backend, talking to the emulator through the real SDK."""
    with ThreadStore(db_url, remote=remote) as s:
        yield s


@pytest.fixture
def fake() -> FakeRemote:
    return FakeRemote()


@pytest.fixture
def fake_store(sqlite_url: str, fake: FakeRemote) -> Iterator[ThreadStore]:
    with ThreadStore(sqlite_url, remote=fake) as s:
        yield s
