"""Bad input at every edge: one line on stderr, exit 2, no change; hostile strings verbatim."""

from __future__ import annotations

from pathlib import Path

import dashscope
import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, text

from threadstore import ConfigError, DashScopeRemote, ThreadNotFound, ThreadStore
from threadstore.cli import cli
from threadstore.testing import Emulator, FakeRemote

TABLES = ("threads", "messages", "runs", "deletions")

# (id, arguments after `--db URL`; "{db}" in an argument is the prepared store's URL)
# Every case must exit 2 with one line on stderr and leave the prepared store as it was.
BAD_CLI_INPUT: list[tuple[str, list[str]]] = [
    ("sweep-days-zero", ["sweep", "--days", "0"]),
    ("sweep-days-negative", ["sweep", "--days", "-1"]),
    ("sweep-days-not-a-number", ["sweep", "--days", "x"]),
    ("sweep-neither-days-nor-hours", ["sweep"]),
    ("sweep-both-days-and-hours", ["sweep", "--days", "1", "--hours", "1"]),
    ("sweep-zero-concurrency", ["sweep", "--days", "1", "--concurrency", "0"]),
    ("sweep-negative-concurrency", ["sweep", "--days", "1", "--concurrency", "-4"]),
    ("sweep-zero-max-rps", ["sweep", "--days", "1", "--max-rps", "0"]),
    ("sweep-negative-lease", ["sweep", "--days", "1", "--lease", "-5"]),
    ("sweep-zero-limit", ["sweep", "--days", "1", "--limit", "0"]),
    ("sweep-unknown-option", ["sweep", "--days", "1", "--force"]),
    ("export-unknown-table", ["export", "bogus"]),
    ("export-unknown-format", ["export", "--format", "xml"]),
    ("export-impossible-date", ["export", "--since", "2024-13-45"]),
    ("export-not-a-date", ["export", "--until", "yesterday-ish"]),
    ("schedule-bad-interval", ["schedule", "--days", "7", "--every", "soon"]),
    ("schedule-zero-interval", ["schedule", "--days", "7", "--every", "0s"]),
    ("schedule-no-ttl", ["schedule", "--every", "1h"]),
    ("list-zero-limit", ["list", "--limit", "0"]),
    ("list-negative-inactive-days", ["list", "--inactive-days", "-2"]),
    ("stats-zero-days", ["stats", "--days", "0"]),
    ("show-unknown-thread", ["show", "no_such_thread"]),
    ("show-nul-in-id", ["show", "thread_\x00x"]),
    ("show-overlong-id", ["show", "t" * 500]),
    ("verify-zero-concurrency", ["verify", "--concurrency", "0"]),
    ("verify-negative-max-rps", ["verify", "--max-rps", "-1"]),
    ("verify-max-rps-not-a-number", ["verify", "--max-rps", "fast"]),
    ("rotate-key-without-a-key", ["db", "rotate-key"]),
    ("rotate-key-zero-batch", ["db", "rotate-key", "--batch-size", "0"]),
    ("unknown-command", ["frobnicate"]),
    ("db-malformed-url", ["--db", "notaurl", "stats"]),
    ("db-unknown-backend", ["--db", "nosuchdb://x/y", "stats"]),
    ("db-missing-directory", ["--db", "sqlite:////no/such/dir/x.db", "stats"]),
    ("db-unreachable-postgres", ["--db", "postgresql://nobody@127.0.0.1:1/x", "stats"]),
    # issue 11 F: NaN, infinities, overflowing numbers, empty and non-UTF-8 text
    *[
        (f"sweep-{opt[2:]}-{value}", ["sweep", "--days", "7", opt, value])
        for opt in ("--days", "--hours", "--lease", "--max-rps", "--limit", "--concurrency",
                    "--timeout")
        for value in ("nan", "inf", "-inf", "1e18", "99999999999999999999")
    ],
    ("sweep-huge-lease", ["sweep", "--days", "7", "--lease", "99999999999999999999"]),
    ("list-huge-limit", ["list", "--limit", "99999999999999999999"]),
    ("list-nan-inactive-days", ["list", "--inactive-days", "nan"]),
    ("list-user-not-utf8", ["list", "--user", "\udcff"]),
    ("list-overlong-workspace", ["list", "--workspace", "w" * 256]),
    ("export-user-not-utf8", ["export", "--user", "\udcff"]),
    ("export-since-beyond-utc", ["export", "--since", "9999-12-31T23:59:59-23:59"]),
    ("db-upgrade-empty-revision", ["db", "upgrade", ""]),
    ("db-empty-url", ["--db", "", "stats"]),
    ("db-empty-url-after-command", ["stats", "--db", ""]),
    ("stats-nan-days", ["stats", "--days", "nan"]),
    ("stats-inf-days", ["stats", "--days", "inf"]),
    ("verify-nan-max-rps", ["verify", "--max-rps", "nan"]),
    ("verify-huge-concurrency", ["verify", "--concurrency", "1e18"]),
    ("schedule-tiny-interval", ["schedule", "--days", "7", "--every", "0.0001s"]),
    ("schedule-nan-days", ["schedule", "--days", "nan", "--every", "1h"]),
    ("schedule-short-lease", ["schedule", "--days", "7", "--lease", "10"]),
    ("emulator-nan-latency", ["emulator", "--latency", "nan"]),
    ("emulator-inf-latency", ["emulator", "--latency", "inf"]),
    ("rotate-key-huge-batch", ["db", "rotate-key", "--batch-size", "1e30"]),
    ("show-not-utf8", ["show", "thread_\udcff"]),
    ("sweep-short-lease", ["sweep", "--days", "7", "--lease", "10"]),
]


def _snapshot(url: str, folder: Path) -> tuple[list[tuple[str, list[str]]], list[str]]:
    """All rows of all tables, and the names of the files in the store's folder."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = [
                (name, sorted(repr(tuple(r)) for r in conn.execute(text(f"SELECT * FROM {name}"))))
                for name in TABLES
            ]
    finally:
        engine.dispose()
    return rows, sorted(p.name for p in folder.iterdir())


@pytest.fixture
def prepared(tmp_path: Path) -> str:
    """A SQLite store with two threads, messages and a deletion, closed again."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    with ThreadStore(url, remote=FakeRemote()) as store:
        a = store.create_thread(user_id="u1", messages=[{"role": "user", "content": "hi"}])
        store.add_message(a.thread_id, "more")
        b = store.create_thread(user_id="u2")
        store.delete_thread(b.thread_id)
    return url


@pytest.mark.parametrize(
    "args", [case[1] for case in BAD_CLI_INPUT], ids=[case[0] for case in BAD_CLI_INPUT]
)
def test_bad_cli_input_is_one_line_exit_2_and_changes_nothing(
    prepared: str,
    tmp_path: Path,
    args: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each bad option, argument or URL: exit 2, one short stderr line, no traceback, no change."""
    monkeypatch.delenv("THREADSTORE_ENCRYPTION_KEY", raising=False)
    monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-bad-input-test")
    # Nothing may reach DashScope: point the SDK at a port nobody listens on.
    monkeypatch.setenv("DASHSCOPE_HTTP_BASE_URL", "http://127.0.0.1:9/api/v1")
    command = args[0] if args[0] != "--db" else args[2]
    if command not in cli.commands and command != "frobnicate":  # type: ignore[attr-defined]
        pytest.skip(f"command {command!r} not in the CLI yet")
    before = _snapshot(prepared, tmp_path)
    full = args if args[0] == "--db" else ["--db", prepared, *args]
    result = CliRunner().invoke(cli, full)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("threadstore: error: ")
    assert len(lines[0]) < 300
    assert "Traceback" not in result.output
    assert result.stdout == ""
    assert _snapshot(prepared, tmp_path) == before
    assert not Path("/no/such/dir").exists()


def test_bad_input_table_is_big_enough() -> None:
    """The table covers at least a dozen distinct bad inputs."""
    assert len({case[0] for case in BAD_CLI_INPUT}) == len(BAD_CLI_INPUT) >= 12


def test_verbose_shows_the_traceback_quiet_does_not(prepared: str) -> None:
    """-v adds the traceback of a library error; without it there is one line."""
    plain = CliRunner().invoke(cli, ["--db", prepared, "show", "no_such_thread"])
    verbose = CliRunner().invoke(cli, ["-v", "--db", prepared, "show", "no_such_thread"])
    assert plain.exit_code == verbose.exit_code == 2
    assert "Traceback" not in plain.stderr
    assert "Traceback" in verbose.stderr


def test_a_bare_group_shows_its_help_not_a_squashed_line(prepared: str) -> None:
    """`threadstore db` without a subcommand prints the group's usage over several lines."""
    result = CliRunner().invoke(cli, ["--db", prepared, "db"])
    assert result.exit_code == 2
    assert result.stderr.startswith("Usage: ")
    assert "rotate-key" in result.stderr
    assert len(result.stderr.splitlines()) > 5


def test_an_unexpected_error_is_one_line_too(
    prepared: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug inside a command gives one line and exit 1; -v adds the traceback."""

    def broken(self: ThreadStore, **kwargs: object) -> None:
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(ThreadStore, "verify", broken)
    plain = CliRunner().invoke(cli, ["--db", prepared, "verify"])
    assert plain.exit_code == 1
    assert plain.stderr.strip().splitlines() == [
        "threadstore: error: unexpected RuntimeError: boom (-v shows the traceback)"]
    verbose = CliRunner().invoke(cli, ["-v", "--db", prepared, "verify"])
    assert verbose.exit_code == 1
    assert "Traceback" in verbose.stderr


# ---------------------------------------------------------------------------- library


def test_library_raises_typed_errors_for_bad_urls(tmp_path: Path) -> None:
    """Malformed, missing-directory and unreachable URLs are ConfigError."""
    for url in (
        "notaurl",
        f"sqlite:///{tmp_path}/no/such/dir/x.db",
        f"sqlite:///{tmp_path}",  # a directory
        "postgresql://nobody@127.0.0.1:1/x",
    ):
        with pytest.raises(ConfigError):
            ThreadStore(url, remote=FakeRemote())


def test_unknown_thread_ids_raise_thread_not_found(fake_store: ThreadStore) -> None:
    """Every per-thread operation on an unknown id raises ThreadNotFound and calls nothing."""
    for call in (
        lambda: fake_store.get_thread("thread_nope"),
        lambda: fake_store.add_message("thread_nope", "x"),
        lambda: fake_store.update_thread("thread_nope", metadata={}),
        lambda: fake_store.messages("thread_nope"),
        lambda: fake_store.pin("thread_nope"),
        lambda: fake_store.touch("thread_nope"),
        lambda: fake_store.delete_thread("thread_nope"),
    ):
        with pytest.raises(ThreadNotFound):
            call()
    assert fake_store.list_threads() == []


@pytest.mark.parametrize("bad", ["", "x" * 1000, "thread_\x00"], ids=["empty", "long", "nul"])
def test_malformed_thread_ids_are_bad_input(fake_store: ThreadStore, bad: str) -> None:
    """A string that cannot be a thread id is ConfigError (bad input), not ThreadNotFound."""
    for call in (
        lambda: fake_store.get_thread(bad),
        lambda: fake_store.messages(bad),
        lambda: fake_store.touch(bad),
        lambda: fake_store.delete_thread(bad),
    ):
        with pytest.raises(ConfigError, match="not a thread id"):
            call()


HOSTILE = [
    "Robert'); DROP TABLE threads;--",
    '" OR 1=1 --',
    "%_\\%' LIKE '%",
    "fernet:gAAAAA",
    "ünïcödé 🧵 \u202e\u200b",
    "line\nbreak\ttab\r",
]


def test_hostile_strings_are_stored_and_matched_verbatim(
    store: ThreadStore, emulator: Emulator
) -> None:
    """Quotes, SQL, wildcards, unicode in user ids, metadata and text round-trip exactly."""
    made = {}
    for i, s in enumerate(HOSTILE):
        t = store.create_thread(user_id=s, metadata={s: s, "i": i},
                                messages=[{"role": "user", "content": s}])
        store.add_message(t.thread_id, s, metadata={"k": s})
        made[s] = t.thread_id
    for s, tid in made.items():
        assert [t.thread_id for t in store.list_threads(user_id=s)] == [tid]
        t = store.get_thread(tid)
        assert t.user_id == s
        assert t.metadata[s] == s
        assert [m.content for m in store.messages(tid)] == [s, s]
        assert store.messages(tid)[1].metadata == {"k": s}
    assert store.list_threads(user_id="%") == []
    assert len(store.list_threads()) == len(HOSTILE)


def test_very_long_text_round_trips(store: ThreadStore) -> None:
    """A 200 000-character message and a 255-character user id are kept whole."""
    long_text = "ab\u00e9" * 66_667
    user = "u" * 255
    t = store.create_thread(user_id=user, metadata={"long": "m" * 10_000})
    store.add_message(t.thread_id, long_text)
    assert store.messages(t.thread_id)[0].content == long_text
    assert store.list_threads(user_id=user)[0].metadata["long"] == "m" * 10_000


def test_overlong_user_id_is_refused_before_any_remote_call(
    store: ThreadStore, emulator: Emulator
) -> None:
    """A user id over 255 characters is a ConfigError and nothing is created anywhere."""
    with pytest.raises(ConfigError):
        store.create_thread(user_id="u" * 256)
    assert emulator.count("threads.create") == 0
    assert store.list_threads() == []


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda s, tid: s.create_thread(user_id="a\x00b"), id="user_id"),
        pytest.param(lambda s, tid: s.create_thread(workspace="w\x00"), id="workspace"),
        pytest.param(
            lambda s, tid: s.create_thread(messages=[{"role": "user", "content": "x\x00"}]),
            id="initial-message",
        ),
        pytest.param(lambda s, tid: s.add_message(tid, "hello\x00world"), id="message"),
    ],
)
def test_nul_is_refused_before_any_remote_call_on_every_backend(
    store: ThreadStore, emulator: Emulator, make: object
) -> None:
    """Text with NUL (which PostgreSQL cannot store) is a ConfigError; DashScope sees nothing."""
    tid = store.create_thread(user_id="ok").thread_id
    emulator.reset_counters()
    with pytest.raises(ConfigError, match="NUL"):
        make(store, tid)  # type: ignore[operator]
    assert emulator.calls == ()
    assert [t.thread_id for t in store.list_threads()] == [tid]
    assert store.messages(tid) == []


def test_nul_in_metadata_is_stored_verbatim(store: ThreadStore) -> None:
    """Metadata is JSON, which escapes NUL: it round-trips on every backend."""
    t = store.create_thread(user_id="u", metadata={"k\x00": "v\x00"})
    assert store.get_thread(t.thread_id).metadata == {"k\x00": "v\x00"}


def test_remote_with_a_wrong_key_is_an_auth_error_not_a_traceback(
    db_url: str, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wrong API key: `verify` exits 2 with one line."""
    with ThreadStore(db_url, remote=DashScopeRemote(api_key=emulator.api_key,
                                                    base_url=emulator.url)) as store:
        store.create_thread(user_id="u")
    monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-wrong-key-000000")
    monkeypatch.setattr(dashscope, "api_key", "sk-wrong-key-000000")
    result = CliRunner().invoke(cli, ["--db", db_url, "verify"])
    assert result.exit_code == 2, result.output
    assert len(result.stderr.strip().splitlines()) == 1
    assert "401" in result.stderr
