"""Shared fixtures.

* ``db_url`` — every store test runs on SQLite (a file in tmp_path), on
  PostgreSQL when ``THREADSTORE_TEST_POSTGRES_URL`` is set (each test gets its own
  schema through ``search_path``, dropped afterwards) and on MySQL/MariaDB when
  ``THREADSTORE_TEST_MYSQL_URL`` is set (each test gets its own database, dropped
  afterwards). Without them those variants are skipped with a visible reason;
  with ``CI`` set a missing URL fails the test instead: CI never skips a backend.
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
from sqlalchemy.engine import make_url

from threadstore import DashScopeRemote, ThreadStore
from threadstore.testing import Emulator, FakeRemote

API_KEY = "sk-test-0123456789abcdef"
PG_ENV = "THREADSTORE_TEST_POSTGRES_URL"
MYSQL_ENV = "THREADSTORE_TEST_MYSQL_URL"


def _base_url(env: str, backend: str) -> str:
    """The server URL from ``env``; skipped without it, failed without it in CI."""
    url = os.environ.get(env)
    if url:
        return url
    message = f"{backend} tests need {env} (CI sets it)"
    if os.environ.get("CI"):
        pytest.fail(f"CI must run every backend: {message}", pytrace=False)
    pytest.skip(message)


def _with_search_path(url: str, schema: str) -> str:
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options={quote(f'-csearch_path={schema}')}"


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mysql", marks=pytest.mark.mysql),
    ]
)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database URL: SQLite file, PostgreSQL schema or MySQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    if request.param == "mysql":
        yield from _mysql_database(_base_url(MYSQL_ENV, "MySQL/MariaDB"))
        return
    base = _base_url(PG_ENV, "PostgreSQL")
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


def _mysql_database(base: str) -> Iterator[str]:
    """A throwaway database on the server of ``base`` (utf8mb4, binary collation)."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    server = make_url(base)
    if "+" not in server.drivername:
        server = server.set(drivername="mysql+pymysql")
    admin = create_engine(server)
    with admin.begin() as conn:
        # The server's default collation on purpose: threadstore's columns must
        # carry their own (see models.exact_str), whatever the database default.
        conn.execute(text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
        admin.dispose()


@pytest.fixture
def mysql_url() -> Iterator[str]:
    """A fresh, empty MySQL/MariaDB database URL, for MySQL-only tests."""
    yield from _mysql_database(_base_url(MYSQL_ENV, "MySQL/MariaDB"))


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
def emu(emulator: Emulator) -> Emulator:
    """The emulator fixture under its short name (the emulator's own tests)."""
    return emulator


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
