"""The CLI in pipes, cron and scripts: SIGPIPE, --db anywhere, hints, one line per problem."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner

from threadstore import ThreadStore
from threadstore.cli import cli
from threadstore.testing import Emulator, FakeRemote, backdate

UTC = timezone.utc
THREADSTORE = [sys.executable, "-m", "threadstore"]


def _seed(url: str, n: int, *, idle: timedelta | None = None, text: str = "hello") -> list[str]:
    """``n`` threads with one message each, written through the library."""
    ids = []
    with ThreadStore(url, remote=FakeRemote()) as store:
        for i in range(n):
            t = store.create_thread(user_id=f"u{i % 3}", metadata={"i": i})
            store.add_message(t.thread_id, text)
            if idle is not None:
                backdate(store, t.thread_id, datetime.now(UTC) - idle)
            ids.append(t.thread_id)
    return ids


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("THREADSTORE_DATABASE_URL", None)
    return env


# --------------------------------------------------------------------------- pipes


@pytest.fixture(scope="module")
def big_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A SQLite store whose exports are far larger than a pipe's buffer."""
    path = tmp_path_factory.mktemp("pipes") / "big.db"
    url = f"sqlite:///{path}"
    _seed(url, 300, text="lorem ipsum " * 200)
    return url


@pytest.mark.parametrize("table", ["threads", "messages"])
def test_export_into_head_ends_with_sigpipe_status_and_no_success_line(
    big_store: str, table: str
) -> None:
    """`export | head -c` is exit 141 (the shell's SIGPIPE status), never "exported N"."""
    script = (
        f"set -o pipefail; {' '.join(THREADSTORE)} --db {big_store} export {table} "
        "| head -c 1000 > /dev/null"
    )
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=_env(),
                          timeout=120, check=False)
    assert done.returncode == 141, done.stderr
    assert "exported" not in done.stderr
    assert "error" not in done.stderr
    assert "Exception ignored" not in done.stderr


@pytest.mark.parametrize(
    "args", [["stats"], ["list"], ["stats", "--json"], ["export", "threads"]]
)
def test_a_closed_stdout_is_quiet_exit_141(big_store: str, args: list[str]) -> None:
    """A reader that left before the command wrote: nothing on stderr, status 141."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the command starts writing
    try:
        done = subprocess.run([*THREADSTORE, "--db", big_store, *args], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, env=_env(), timeout=120,
                              check=False)
    finally:
        os.close(write_end)
    assert done.returncode == 141, done.stderr
    assert done.stderr == ""


def test_a_reader_that_takes_everything_is_exit_0(big_store: str) -> None:
    """The ordinary pipe is unaffected: `stats | cat` exits 0."""
    script = f"set -o pipefail; {' '.join(THREADSTORE)} --db {big_store} stats | cat"
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=_env(),
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "threads" in done.stdout


# --------------------------------------------------------------------------- --db after the command


@pytest.mark.parametrize(
    "args",
    [["stats"], ["list"], ["export", "threads"], ["show", "{tid}"], ["db", "current"],
     ["db", "check"]],
)
def test_db_is_accepted_after_the_command_name(sqlite_url: str, args: list[str]) -> None:
    """`threadstore stats --db URL` works like `threadstore --db URL stats`."""
    (tid,) = _seed(sqlite_url, 1)
    argv = [a.replace("{tid}", tid) for a in args]
    after = CliRunner().invoke(cli, [*argv, "--db", sqlite_url])
    before = CliRunner().invoke(cli, ["--db", sqlite_url, *argv])
    assert after.exit_code == 0, after.output
    assert after.stdout == before.stdout or argv[0] == "stats"  # stats stamps the time


def test_db_after_the_command_wins_over_the_group_option_and_env(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The URL given last, after the command, is the one used."""
    (tid,) = _seed(sqlite_url, 1)
    other = f"sqlite:///{tmp_path / 'other.db'}"
    _seed(other, 2)
    monkeypatch.setenv("THREADSTORE_DATABASE_URL", other)
    result = CliRunner().invoke(cli, ["--db", other, "list", "--db", sqlite_url])
    assert result.exit_code == 0, result.output
    assert tid in result.stdout
    assert len(result.stdout.strip().splitlines()) == 2  # header + one thread


# --------------------------------------------------------------------------- list hint


def test_list_says_how_many_more_there_are_on_stderr(sqlite_url: str) -> None:
    """A truncated list ends with "N more; use --limit" on stderr; stdout has the rows."""
    _seed(sqlite_url, 7)
    result = CliRunner().invoke(cli, ["--db", sqlite_url, "list", "--limit", "5"])
    assert result.exit_code == 0, result.output
    assert len(result.stdout.strip().splitlines()) == 1 + 5
    assert result.stderr.strip() == "2 more; use --limit N to see more than 5"


def test_list_that_fits_gives_no_hint(sqlite_url: str) -> None:
    """Exactly --limit threads: no hint."""
    _seed(sqlite_url, 5)
    result = CliRunner().invoke(cli, ["--db", sqlite_url, "list", "--limit", "5"])
    assert result.exit_code == 0
    assert result.stderr == ""
    json_result = CliRunner().invoke(cli, ["--db", sqlite_url, "list", "--limit", "3", "--json"])
    assert json_result.stderr.strip().startswith("2 more;")


def test_count_threads_stops_at_its_bound(fake_store: ThreadStore) -> None:
    """count_threads(at_most=N) never counts past N (its cost stays bounded)."""
    for i in range(6):
        fake_store.create_thread(user_id="a" if i < 4 else "b")
    assert fake_store.count_threads() == 6
    assert fake_store.count_threads(at_most=3) == 3
    assert fake_store.count_threads(user_id="b", at_most=10) == 2


# --------------------------------------------------------------------------- one line per problem


def test_a_failed_deletion_is_one_line_on_stderr(
    store: ThreadStore, emulator: Emulator, db_url: str
) -> None:
    """Each failed delete appears once: no WARNING log line beside "kept for retry"."""
    t = store.create_thread(user_id="u")
    backdate(store, t.thread_id, datetime.now(UTC) - timedelta(days=10))
    emulator.fail("threads.delete", status=500)
    result = CliRunner().invoke(cli, ["--db", db_url, "sweep", "--days", "7"])
    assert result.exit_code == 1
    mentions = [line for line in result.stderr.splitlines() if t.thread_id in line]
    assert len(mentions) == 1, result.stderr
    assert mentions[0].startswith(f"kept for retry: {t.thread_id}")


def test_verify_fix_summarizes_by_default_and_lists_with_v(
    store: ThreadStore, emulator: Emulator, db_url: str
) -> None:
    """verify --fix: one summary line on stderr; -v adds a line per removed thread."""
    ids = [store.create_thread().thread_id for _ in range(4)]
    for tid in ids[:2]:
        store.remote.delete_thread(tid)  # behind the store's back
    quiet = CliRunner().invoke(cli, ["--db", db_url, "verify", "--fix"])
    assert quiet.exit_code == 0, quiet.output
    lines = quiet.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("checked 4 threads: 2 missing")
    store.remote.delete_thread(ids[2])
    loud = CliRunner().invoke(cli, ["--db", db_url, "-v", "verify", "--fix"])
    assert loud.exit_code == 0, loud.output
    removed = [line for line in loud.stderr.splitlines() if "removed the local rows" in line]
    assert len(removed) == 1
    assert ids[2] in removed[0]


# --------------------------------------------------------------------------- prompts


def test_downgrade_without_a_terminal_refuses_unless_yes(sqlite_url: str) -> None:
    """No terminal to confirm on: one line, exit 2, nothing dropped; --yes goes ahead."""
    _seed(sqlite_url, 1)
    refused = CliRunner().invoke(cli, ["--db", sqlite_url, "db", "downgrade", "base"], input="")
    assert refused.exit_code == 2
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1, refused.stderr
    assert "--yes" in lines[0]
    assert "Downgrade" not in refused.output
    with ThreadStore(sqlite_url, remote=FakeRemote(), migrate=False) as store:
        assert len(store.list_threads()) == 1
    done = CliRunner().invoke(cli, ["--db", sqlite_url, "db", "downgrade", "base", "--yes"])
    assert done.exit_code == 0, done.output


def test_ops_commands_have_help() -> None:
    """The shared --db option shows in each command's help."""
    for command in (["stats"], ["list"], ["sweep"], ["db", "current"]):
        result = CliRunner().invoke(cli, [*command, "-h"])
        assert result.exit_code == 0
        assert "--db URL" in result.stdout
