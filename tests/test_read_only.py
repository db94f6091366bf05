"""Read-only commands never create or migrate a store; writers and the library still do."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import create_engine, inspect, text

from threadstore import ConfigError, ThreadStore, db
from threadstore.cli import cli
from threadstore.testing import Emulator, FakeRemote

READ_COMMANDS = [
    ["stats"],
    ["list"],
    ["show", "thread_0123"],
    ["export", "threads"],
    ["verify"],
    ["db", "current"],
    ["db", "check"],
]


def _invoke(url: str, args: list[str]) -> Result:
    return CliRunner().invoke(cli, ["--db", url, *args])


def _refused(result: Result, *words: str) -> str:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    for word in words:
        assert word in lines[0]
    return lines[0]


def _tables(url: str) -> list[str]:
    engine = create_engine(db.open_engine(url).url)
    try:
        with engine.connect() as conn:
            return sorted(inspect(conn).get_table_names())
    finally:
        engine.dispose()


@pytest.mark.parametrize("args", READ_COMMANDS, ids="-".join)
def test_read_command_on_a_missing_file_creates_nothing(tmp_path: Path, args: list[str]) -> None:
    """A mistyped path: exit 2, one line naming the URL and the fix; no file appears."""
    url = f"sqlite:///{tmp_path / 'typo.db'}"
    _refused(_invoke(url, args), url, "threadstore db upgrade", "--db")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args", READ_COMMANDS, ids="-".join)
def test_read_command_on_an_empty_file_leaves_it_empty(tmp_path: Path, args: list[str]) -> None:
    """An empty SQLite file: exit 2, and the file is still empty afterwards."""
    path = tmp_path / "empty.db"
    path.touch()
    _refused(_invoke(f"sqlite:///{path}", args), "empty", "threadstore db upgrade")
    assert path.stat().st_size == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.db"]


@pytest.mark.parametrize("args", [["stats"], ["export", "messages"], ["db", "current"]],
                         ids="-".join)
def test_read_command_on_an_empty_database_adds_no_tables(db_url: str, args: list[str]) -> None:
    """An empty database on any backend: exit 2, still no tables."""
    _refused(_invoke(db_url, args), "empty")
    assert _tables(db_url) == []


def test_read_command_on_a_foreign_database_touches_nothing(db_url: str) -> None:
    """A database with other tables and no threadstore schema is refused as foreign."""
    engine = db.open_engine(db_url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE customers (id INTEGER PRIMARY KEY)"))
    engine.dispose()
    _refused(_invoke(db_url, ["stats"]), "not a threadstore store")
    assert _tables(db_url) == ["customers"]


def test_a_newer_schema_is_refused_by_readers_and_reported_by_db_commands(db_url: str) -> None:
    """A schema this threadstore does not know: readers refuse, `db current` prints it."""
    ThreadStore(db_url, remote=FakeRemote()).close()
    engine = db.open_engine(db_url)
    with engine.begin() as conn:
        conn.execute(text(f"UPDATE {db.VERSION_TABLE} SET version_num = '9999'"))
    engine.dispose()
    _refused(_invoke(db_url, ["stats"]), "9999", "newer")
    current = _invoke(db_url, ["db", "current"])
    assert (current.exit_code, current.stdout.strip()) == (0, "9999")
    check = _invoke(db_url, ["db", "check"])
    assert check.exit_code == 1
    assert "newer" in check.stderr


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_the_password_is_masked_in_the_message(db_url: str) -> None:
    """The one line names the URL with its password masked (PostgreSQL: trust auth
    ignores the password, so the URL still reaches the empty database)."""
    with_password = db_url.replace("postgresql://postgres@", "postgresql://postgres:s3cr3t@", 1)
    line = _refused(_invoke(with_password, ["stats"]), "empty")
    assert "s3cr3t" not in line
    assert "***" in line


def test_read_commands_work_on_a_store_at_head(tmp_path: Path) -> None:
    """The ordinary case is unchanged: stats on an existing store is exit 0."""
    url = f"sqlite:///{tmp_path / 'ok.db'}"
    with ThreadStore(url, remote=FakeRemote()) as store:
        store.create_thread(user_id="u")
    result = _invoke(url, ["stats", "--json"])
    assert result.exit_code == 0, result.output
    assert '"threads": 1' in result.stdout


def test_writing_commands_still_create_the_store(tmp_path: Path, emulator: Emulator) -> None:
    """`sweep` on a new path creates and migrates it, as before (0600)."""
    path = tmp_path / "new.db"
    result = _invoke(f"sqlite:///{path}", ["sweep", "--days", "7"])
    assert result.exit_code == 0, result.output
    assert path.stat().st_mode & 0o777 == 0o600
    assert db.inspect_store(f"sqlite:///{path}").state == "head"


def test_the_library_creates_by_default_and_not_with_create_false(tmp_path: Path) -> None:
    """ThreadStore(url) creates; ThreadStore(url, create=False) raises ConfigError and creates
    nothing."""
    missing = tmp_path / "missing.db"
    with pytest.raises(ConfigError, match="no threadstore store"):
        ThreadStore(f"sqlite:///{missing}", remote=FakeRemote(), create=False)
    assert not missing.exists()
    ThreadStore(f"sqlite:///{missing}", remote=FakeRemote()).close()
    with ThreadStore(f"sqlite:///{missing}", remote=FakeRemote(), create=False) as store:
        assert store.list_threads() == []


def test_inspect_store_names_each_state(tmp_path: Path) -> None:
    """inspect_store tells missing, empty and head apart without creating anything."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    assert db.inspect_store(url).state == "missing"
    assert not os.path.exists(tmp_path / "s.db")
    (tmp_path / "s.db").touch()
    assert db.inspect_store(url).state == "empty"
    ThreadStore(url, remote=FakeRemote()).close()
    found = db.inspect_store(url)
    assert (found.state, found.revision, found.ready) == ("head", db.SCHEMA_HEAD, True)
    assert found.problem() is None
