"""Secrets stay out: the API key in no file or log, private SQLite files, encryption at rest."""

from __future__ import annotations

import logging
import os
import stat
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.fernet import Fernet
from sqlalchemy import create_engine, select, text

from threadstore import ConfigError, DashScopeRemote, ThreadStore
from threadstore.cli import _RedactingFormatter, cli
from threadstore.codec import ENV_KEY, ENV_OLD_KEYS
from threadstore.models import messages, threads
from threadstore.testing import Emulator, backdate

API_KEY = "sk-test-0123456789abcdef"  # the key conftest gives the emulator and the SDK
SECRET_TEXT = "my bank PIN is 4711-zebra-quokka"
SECRET_META = "project-nightingale-layoffs"


@pytest.fixture(autouse=True)
def _no_key_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_KEY, raising=False)
    monkeypatch.delenv(ENV_OLD_KEYS, raising=False)


@pytest.fixture
def debug_everything(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Capture every logger at DEBUG: ours, the SDK's, requests/urllib3's."""
    caplog.set_level(logging.DEBUG)
    for name in ("threadstore", "dashscope", "urllib3", "requests"):
        caplog.set_level(logging.DEBUG, logger=name)
    return caplog


def _dump(url: str) -> str:
    """Every row of every table as text (what a backup of the store would hold)."""
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            names = [t.name for t in (threads, messages)] + ["runs", "deletions"]
            return "\n".join(
                repr(row) for name in names for row in conn.execute(text(f"SELECT * FROM {name}"))
            )
    finally:
        engine.dispose()


def _files_containing(folder: Path, needle: str) -> list[str]:
    return sorted(
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.is_file() and needle.encode() in p.read_bytes()
    )


def test_api_key_is_in_no_file_and_no_log_line(
    db_url: str,
    remote: DashScopeRemote,
    emulator: Emulator,
    tmp_path: Path,
    debug_everything: pytest.LogCaptureFixture,
) -> None:
    """Create, message, run, failed and good deletes, sweep, archive, export: the key is nowhere."""
    assert emulator.api_key == API_KEY
    export_dir = tmp_path / "out"
    export_dir.mkdir()
    with ThreadStore(db_url, remote=remote) as store:
        kept = store.create_thread(user_id="u1", metadata={"topic": "t"},
                                   messages=[{"role": "user", "content": "hi"}])
        store.add_message(kept.thread_id, "hello")
        store.update_thread(kept.thread_id, metadata={"topic": "u"})
        store.run(kept.thread_id, assistant_id="asst_1")
        gone = store.create_thread(user_id="u2", messages=[{"role": "user", "content": "x"}])
        store.delete_thread(gone.thread_id)
        old = [store.create_thread(user_id="u3") for _ in range(3)]
        for t in old:
            backdate(store, t.thread_id, t.last_active - timedelta(days=30))
        emulator.fail("threads.delete", status=500, times=1)
        store.sweep(timedelta(days=7), archive=export_dir / "archive.jsonl", retry_base=0)
        store.sweep(timedelta(days=7), archive=export_dir / "archive.jsonl", retry_base=0)
        emulator.fail("threads.retrieve", status=503, times=1)
        store.verify()
        for table in ("threads", "messages", "runs", "deletions"):
            store.export(export_dir / f"{table}.jsonl", table=table)
            store.export(export_dir / f"{table}.csv", table=table, fmt="csv")
        assert len(store.list_threads()) == 1
        # While the store is open: the -wal file holds the latest pages.
        assert _files_containing(tmp_path, API_KEY) == []
    assert (export_dir / "archive.jsonl").stat().st_size > 0
    assert _files_containing(tmp_path, API_KEY) == []
    assert API_KEY not in _dump(db_url)
    assert debug_everything.records, "expected some log records at DEBUG"
    assert API_KEY not in debug_everything.text
    assert all(API_KEY not in str(r.__dict__) for r in debug_everything.records)


def test_api_key_is_not_on_the_cli_stderr_at_debug(
    store: ThreadStore, db_url: str, emulator: Emulator, tmp_path: Path
) -> None:
    """`-vv` commands, including failing ones, never print the key."""
    t = store.create_thread(user_id="u1", messages=[{"role": "user", "content": "hi"}])
    backdate(store, t.thread_id, t.last_active - timedelta(days=30))
    outputs = []
    runner = CliRunner()
    for args in (
        ["verify"],
        ["stats"],
        ["list"],
        ["show", t.thread_id],
        ["export", "messages", "-o", str(tmp_path / "m.jsonl")],
        ["sweep", "--days", "7", "--dry-run"],
        ["show", "thread_nope"],
    ):
        result = runner.invoke(cli, ["-vv", "--db", db_url, *args])
        outputs.append(result.stdout + result.stderr)
    emulator.fail("*", status=401)
    for args in (["verify"], ["sweep", "--days", "7"]):
        result = runner.invoke(cli, ["-vv", "--db", db_url, *args])
        assert result.exit_code == 2, result.output
        outputs.append(result.stdout + result.stderr)
    joined = "\n".join(outputs)
    assert "DEBUG" in joined or "INFO" in joined
    assert API_KEY not in joined


def test_cli_log_formatter_masks_bearer_tokens_and_the_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Should any library log a request, the CLI's log lines show *** instead of the key."""
    monkeypatch.setenv("DASHSCOPE_API_KEY", API_KEY)
    formatter = _RedactingFormatter("%(message)s")
    record = logging.LogRecord(
        "urllib3", logging.DEBUG, __file__, 1,
        "headers %s; key=%s", ({"Authorization": "Bearer sk-other-secret-99"}, API_KEY), None,
    )
    line = formatter.format(record)
    assert "sk-other-secret-99" not in line
    assert API_KEY not in line
    assert "Bearer ***" in line


def test_sqlite_files_threadstore_creates_are_private(fake_store: ThreadStore) -> None:
    """The database and its -wal/-shm files are mode 0600 even with a permissive umask."""
    path = Path(fake_store.engine.url.database or "")
    fake_store.close()
    path.unlink()
    old_umask = os.umask(0o022)
    try:
        with ThreadStore(f"sqlite:///{path}", remote=fake_store.remote) as store:
            store.create_thread(user_id="u", messages=[{"role": "user", "content": "hi"}])
            files = [path, Path(f"{path}-wal"), Path(f"{path}-shm")]
            assert all(f.exists() for f in files)
            modes = {f.name: oct(stat.S_IMODE(f.stat().st_mode)) for f in files}
    finally:
        os.umask(old_umask)
    assert set(modes.values()) == {"0o600"}, modes


# ---------------------------------------------------------------------------- encryption


def _key() -> str:
    return Fernet.generate_key().decode()


def test_encrypted_store_holds_no_message_text_or_metadata_values(
    db_url: str, remote: DashScopeRemote, tmp_path: Path
) -> None:
    """With a key, neither the database nor its files contain message text or metadata."""
    with ThreadStore(db_url, remote=remote, encryption_key=_key()) as store:
        t = store.create_thread(user_id="alice", metadata={"project": SECRET_META},
                                messages=[{"role": "user", "content": SECRET_TEXT}])
        store.add_message(t.thread_id, SECRET_TEXT + " again", metadata={"tag": SECRET_META})
        store.update_thread(t.thread_id, metadata={"project": SECRET_META, "n": "2"})
        store.create_thread(user_id="bob")
        # Reads decrypt; filters on plain columns keep working.
        assert [x.thread_id for x in store.list_threads(user_id="alice")] == [t.thread_id]
        assert store.get_thread(t.thread_id).metadata["project"] == SECRET_META
        assert [m.content for m in store.messages(t.thread_id)] == [
            SECRET_TEXT, SECRET_TEXT + " again"]
        raw = _dump(db_url)
        assert _files_containing(tmp_path, SECRET_TEXT) == []
    for secret in (SECRET_TEXT, SECRET_META, "quokka"):
        assert secret not in raw
        assert _files_containing(tmp_path, secret) == []
    assert "fernet:" in raw
    assert "alice" in raw  # user ids stay plain: they are what filters use


def _encrypted_store(db_url: str, remote: DashScopeRemote, key: str) -> str:
    with ThreadStore(db_url, remote=remote, encryption_key=key) as store:
        t = store.create_thread(user_id="u", metadata={"k": SECRET_META},
                                messages=[{"role": "user", "content": SECRET_TEXT}])
        return t.thread_id


def test_missing_or_wrong_key_fails_at_open_with_config_error(
    db_url: str, remote: DashScopeRemote
) -> None:
    """Opening an encrypted store without its key, or with another, is a ConfigError."""
    _encrypted_store(db_url, remote, _key())
    with pytest.raises(ConfigError, match=ENV_KEY):
        ThreadStore(db_url, remote=remote)
    with pytest.raises(ConfigError, match="does not decrypt"):
        ThreadStore(db_url, remote=remote, encryption_key=_key())
    with pytest.raises(ConfigError, match="not a valid Fernet key"):
        ThreadStore(db_url, remote=remote, encryption_key="not-a-key")


def test_cli_with_wrong_key_is_one_line_exit_2(
    db_url: str, remote: DashScopeRemote, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLI on an encrypted store with a wrong key exits 2 with one line."""
    tid = _encrypted_store(db_url, remote, _key())
    monkeypatch.setenv(ENV_KEY, _key())
    for args in (["list"], ["show", tid], ["verify"]):
        result = CliRunner().invoke(cli, ["--db", db_url, *args])
        assert result.exit_code == 2, (args, result.output)
        assert len(result.stderr.strip().splitlines()) == 1
        assert "Traceback" not in result.stderr
        assert ENV_KEY in result.stderr


def _raw_values(db_url: str) -> list[str]:
    engine = create_engine(db_url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            return [
                *conn.execute(select(threads.c.metadata)).scalars(),
                *conn.execute(select(messages.c.content)).scalars(),
                *conn.execute(select(messages.c.metadata)).scalars(),
            ]
    finally:
        engine.dispose()


def test_rotate_key_reencrypts_every_row_with_the_new_key(
    db_url: str, remote: DashScopeRemote, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After rotate_key, the store opens and reads with the new key alone."""
    old, new = _key(), _key()
    tid = _encrypted_store(db_url, remote, old)
    with ThreadStore(db_url, remote=remote, encryption_key=old) as store:
        store.add_message(tid, "second")
    monkeypatch.setenv(ENV_KEY, new)
    monkeypatch.setenv(ENV_OLD_KEYS, f"{_key()},{old}")
    with ThreadStore(db_url, remote=remote) as store:
        assert store.rotate_key(batch_size=1) == 3  # 1 thread + 2 messages
        assert store.rotate_key() == 0  # idempotent: nothing left to do
    monkeypatch.delenv(ENV_OLD_KEYS)
    with ThreadStore(db_url, remote=remote) as store:
        assert [m.content for m in store.messages(tid)] == [SECRET_TEXT, "second"]
        assert store.get_thread(tid).metadata == {"k": SECRET_META}
    with pytest.raises(ConfigError):
        ThreadStore(db_url, remote=remote, encryption_key=old)
    new_only = Fernet(new.encode())
    for value in _raw_values(db_url):
        new_only.decrypt(value.removeprefix("fernet:").encode())


def test_cli_rotate_key_encrypts_a_store_that_had_no_key(
    db_url: str, remote: DashScopeRemote, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`db rotate-key` with a newly set key encrypts the plain rows; without a key it exits 2."""
    with ThreadStore(db_url, remote=remote) as store:
        t = store.create_thread(user_id="u", metadata={"k": SECRET_META},
                                messages=[{"role": "user", "content": SECRET_TEXT}])
    runner = CliRunner()
    refused = runner.invoke(cli, ["--db", db_url, "db", "rotate-key"])
    assert refused.exit_code == 2
    assert len(refused.stderr.strip().splitlines()) == 1
    monkeypatch.setenv(ENV_KEY, _key())
    done = runner.invoke(cli, ["--db", db_url, "db", "rotate-key", "--batch-size", "1"])
    assert done.exit_code == 0, done.output
    assert "re-encrypted 2 rows" in done.stderr
    values = _raw_values(db_url)
    assert all(v.startswith("fernet:") for v in values)
    assert SECRET_TEXT not in "".join(values)
    with ThreadStore(db_url, remote=remote) as store:
        assert store.messages(t.thread_id)[0].content == SECRET_TEXT


def test_plain_text_that_looks_like_a_token_reads_back_verbatim(
    fake_store: ThreadStore,
) -> None:
    """Without a key, a message reading "fernet:…" or "plain:…" is stored and read as written."""
    t = fake_store.create_thread(messages=[{"role": "user", "content": "fernet:gAAAA-not-a-token"}])
    fake_store.add_message(t.thread_id, "plain:hello")
    assert [m.content for m in fake_store.messages(t.thread_id)] == [
        "fernet:gAAAA-not-a-token", "plain:hello"]
