"""The read-only commands: threadstore export, stats, list and show (click's CliRunner)."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result

from threadstore import ThreadStore
from threadstore.cli import cli
from threadstore.testing import FakeRemote, backdate

UTC = timezone.utc


@dataclass(frozen=True)
class Seeded:
    url: str
    first: str  # u1's thread: 2 messages + 1 run's reply, ttl 30 days
    second: str  # u2's thread, pinned, idle for 10 days


@pytest.fixture
def seeded(db_url: str) -> Seeded:
    """Two threads with messages and a run, written through the library."""
    with ThreadStore(db_url, remote=FakeRemote()) as store:
        a = store.create_thread(user_id="u1", metadata={"topic": "billing"},
                                ttl=timedelta(days=30))
        store.add_message(a.thread_id, 'hello, "world"\nline two')
        store.run(a.thread_id, assistant_id="asst_1", poll_interval=0.01)
        b = store.create_thread(user_id="u2", workspace="ws1")
        store.add_message(b.thread_id, "你好 🎉")
        store.pin(b.thread_id)
        backdate(store, b.thread_id, datetime.now(UTC) - timedelta(days=10))
    return Seeded(db_url, a.thread_id, b.thread_id)


def run(url: str, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--db", url, *args], catch_exceptions=False)


def _one_error_line(result: Result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    return lines[0]


# --------------------------------------------------------------------------- export


def test_export_to_file_writes_csv_and_a_summary_line(seeded: Seeded, tmp_path: Path) -> None:
    """export messages --format csv -o FILE writes the rows and says how many on stderr."""
    out = tmp_path / "m.csv"
    result = run(seeded.url, "export", "messages", "--format", "csv", "-o", str(out))
    assert result.exit_code == 0, result.output
    with open(out, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert {'hello, "world"\nline two', "你好 🎉"} <= {r["content"] for r in rows}
    assert result.stderr.strip() == f"exported {len(rows)} messages to {out}"
    assert result.stdout == ""


def test_export_defaults_to_threads_as_jsonl_on_stdout(seeded: Seeded) -> None:
    """Plain `export` streams the threads table as JSON lines to stdout."""
    result = run(seeded.url, "export")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert {r["thread_id"] for r in rows} == {seeded.first, seeded.second}
    assert {r["thread_id"]: r["message_count"] for r in rows}[seeded.first] == 2
    assert "exported 2 threads to stdout" in result.stderr


def test_export_filters_and_redact_from_the_command_line(seeded: Seeded) -> None:
    """--user, --workspace, --since/--until (dates or ISO 8601) and --redact take effect."""
    result = run(seeded.url, "export", "messages", "--user", "u2")
    assert [json.loads(x)["content"] for x in result.stdout.splitlines()] == ["你好 🎉"]
    result = run(seeded.url, "export", "threads", "--workspace", "ws1", "--until", "2999-01-01")
    assert [json.loads(x)["thread_id"] for x in result.stdout.splitlines()] == [seeded.second]
    # The pinned thread was last active 10 days ago: before a naive (= UTC) time 9.5 days
    # ago, but after the same wall time at +14:00 (14 hours earlier).
    cutoff = (datetime.now(UTC) - timedelta(days=9.5)).strftime("%Y-%m-%dT%H:%M:%S")
    result = run(seeded.url, "export", "threads", "--since", cutoff)
    assert [json.loads(x)["thread_id"] for x in result.stdout.splitlines()] == [seeded.first]
    result = run(seeded.url, "export", "threads", "--since", cutoff + "+14:00")
    assert len(result.stdout.splitlines()) == 2
    result = run(seeded.url, "export", "messages", "--redact", "--format", "csv")
    assert result.exit_code == 0
    assert "world" not in result.stdout
    assert "你好" not in result.stdout


def test_export_parquet_to_redirected_stdout_is_binary_parquet(seeded: Seeded) -> None:
    """--format parquet to a (non-terminal) stdout writes a Parquet file there."""
    result = CliRunner().invoke(cli, ["--db", seeded.url, "export", "runs", "--format", "parquet"])
    assert result.exit_code == 0, result.output
    table = pq.read_table(io.BytesIO(result.stdout_bytes))
    assert table.num_rows == 1
    assert str(table.schema.field("created_at").type) == "timestamp[us, tz=UTC]"


def test_export_progress_with_verbose_and_silence_with_quiet(
    seeded: Seeded, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """-v prints progress lines on stderr; -q prints nothing there on success.

    (Issue 13 replaced the count every 100,000 rows by a line every ~10 s.)
    """
    monkeypatch.setattr("threadstore.cli.PROGRESS_INTERVAL", 0.0)
    result = run(seeded.url, "-v", "export", "messages", "-o", str(tmp_path / "m.jsonl"))
    # A total and percentage (the ETA's basis) since the export counts its rows first.
    assert "export messages: 3/3 rows (100%" in result.stderr
    result = run(seeded.url, "-q", "export", "-o", str(tmp_path / "t.jsonl"))
    assert result.exit_code == 0
    assert result.stderr == ""


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["export", "users"], "users"),
        (["export", "messages", "--format", "xml"], "xml"),
        (["export", "--since", "yesterday"], "yesterday"),
        (["export", "--until", "2026-13-40"], "2026-13-40"),
        (["export", "-o", "/nonexistent-dir/x.jsonl"], "no directory"),
        (["export", "--since", "2026-02-01", "--until", "2026-01-01"], "after until"),
    ],
)
def test_export_bad_input_is_one_line_and_exit_2(
    seeded: Seeded, args: list[str], needle: str
) -> None:
    """A bad table, format, date, path or range: one line on stderr, exit 2, no output."""
    result = run(seeded.url, *args)
    assert needle in _one_error_line(result)
    assert result.stdout == ""


# --------------------------------------------------------------------------- stats


def test_stats_human_table_and_json(seeded: Seeded) -> None:
    """stats prints an aligned key/value table; --json the same keys as JSON."""
    human = run(seeded.url, "stats")
    assert human.exit_code == 0, human.output
    lines = human.stdout.splitlines()
    values = {line.split()[0]: line.split(None, 1)[1] for line in lines}
    assert values["threads"] == "2"
    assert values["messages"] == "3"
    assert len({line.index(line.split()[1], len(line.split()[0])) for line in lines}) == 1
    data = json.loads(run(seeded.url, "stats", "--json").stdout)
    assert list(data) == [line.split()[0] for line in lines]
    assert (data["threads"], data["threads_pinned"], data["runs"]) == (2, 1, 1)
    assert data["threads_expired"] == 0  # the idle one is pinned
    assert json.loads(run(seeded.url, "stats", "--json", "--days", "1").stdout)[
        "older_than_seconds"] == 86400
    assert "--days" in _one_error_line(run(seeded.url, "stats", "--days", "0"))


# --------------------------------------------------------------------------- list / show


def test_list_shows_a_table_and_filters(seeded: Seeded) -> None:
    """list prints id, user, last active, message count and pin/TTL; filters apply."""
    result = run(seeded.url, "list")
    assert result.exit_code == 0, result.output
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["THREAD", "ID", "USER", "LAST", "ACTIVE", "(UTC)", "MESSAGES",
                              "PIN/TTL"]
    assert rows[0].split()[0] == seeded.first  # most recently active first
    assert rows[0].split()[1:2] == ["u1"]
    assert rows[0].split()[-2:] == ["ttl", "30d"]
    assert rows[1].split()[-2:] == ["1", "pinned"]
    only = run(seeded.url, "list", "--inactive-days", "5").stdout.splitlines()
    assert [r.split()[0] for r in only[1:]] == [seeded.second]
    assert len(run(seeded.url, "list", "--limit", "1").stdout.splitlines()) == 2
    assert run(seeded.url, "list", "--user", "nobody").stdout == ""
    data = json.loads(run(seeded.url, "list", "--json", "--workspace", "ws1").stdout)
    assert [(d["thread_id"], d["message_count"], d["pinned"]) for d in data] == [
        (seeded.second, 1, True)]
    assert "--limit" in _one_error_line(run(seeded.url, "list", "--limit", "0"))


def test_show_prints_thread_messages_and_runs(seeded: Seeded) -> None:
    """show THREAD_ID prints the thread, its messages and runs; --json as one object."""
    result = run(seeded.url, "show", seeded.first)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert seeded.first in out
    assert 'hello, "world"' in out
    assert "messages (2):" in out
    assert "runs (1):" in out
    assert "completed" in out
    data = json.loads(run(seeded.url, "show", seeded.first, "--json").stdout)
    assert data["thread"]["metadata"] == {"topic": "billing"}
    assert data["thread"]["ttl"] == 30 * 86400
    assert [m["role"] for m in data["messages"]] == ["user", "assistant"]
    assert data["runs"][0]["status"] == "completed"
    assert data["runs"][0]["total_tokens"] > 0


def test_show_unknown_thread_is_one_line_and_exit_2(seeded: Seeded) -> None:
    """show with an id the store does not know: one line on stderr, exit 2."""
    assert "thread_nope" in _one_error_line(run(seeded.url, "show", "thread_nope"))


def test_read_commands_have_help() -> None:
    """Every read command explains itself under -h."""
    for command in ("export", "stats", "list", "show"):
        result = CliRunner().invoke(cli, [command, "-h"])
        assert result.exit_code == 0
        assert "Examples:" in result.stdout
