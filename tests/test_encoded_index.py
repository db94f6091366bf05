"""Is anything stored encoded? Answered from a partial index, never by a full scan.

An export renders lines in the database only when no value in its selection is
encoded (a Fernet token, or plain text escaped because it began like one). The
question is answered from ``ix_<table>_encoded``, a partial index of exactly such
rows (SQLite, PostgreSQL; MySQL/MariaDB have no partial indexes and scan). These
tests show the answer stays right — one encoded row among many sends the export
through the decoding path on every backend, also after an upgrade of a store
that had such rows before the index existed — and that the index is what the
databases read. Speed itself is in ``benchmarks/bench_export.py``.
"""

from __future__ import annotations

import contextlib
import io
import json
from datetime import timedelta
from typing import Any

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import Engine, event, inspect, text
from sqlalchemy.exc import OperationalError

from helpers import set_row
from threadstore import ConfigError, StoreError, ThreadStore, db
from threadstore import codec as codec_module
from threadstore import export as export_module
from threadstore.models import ENCODED_PREFIXES, KINDS, PARTIAL_INDEX_DIALECTS, messages, utcnow
from threadstore.models import kind as declared_kind
from threadstore.testing import FakeRemote

FILTERS: list[dict[str, Any]] = [{}, {"workspace": "w1"}, {"user_id": "u1"}]


def _jsonl(store: ThreadStore, table: str, **options: Any) -> list[dict[str, Any]]:
    out = io.StringIO()
    store.export(out, table=table, fmt="jsonl", **options)
    return [json.loads(line) for line in out.getvalue().splitlines()]


def _csv(store: ThreadStore, table: str, **options: Any) -> str:
    out = io.StringIO()
    store.export(out, table=table, fmt="csv", **options)
    return out.getvalue()


def test_the_prefixes_are_the_codecs() -> None:
    """The index's patterns are exactly the markers the codec writes."""
    assert ENCODED_PREFIXES == (codec_module.PREFIX, codec_module.PLAIN_PREFIX)
    for prefix in ENCODED_PREFIXES:  # LIKE patterns: no wildcard of their own
        assert "%" not in prefix
        assert "_" not in prefix


def test_one_encoded_value_among_many_is_decoded_on_every_backend(db_url: str) -> None:
    """A single escaped or encrypted row among plain ones: every export shows it decoded."""
    key = Fernet.generate_key().decode()
    remote = FakeRemote()
    with ThreadStore(db_url, remote=remote) as store:
        thread = store.create_thread(user_id="u1", workspace="w1", metadata={"k": "v"})
        for i in range(30):
            store.add_message(thread.thread_id, f"plain message {i}")
        escaped = store.add_message(thread.thread_id, "plain:written by the user")
        plain_rows = _jsonl(store, "messages")
    # The escaped row is stored prefixed; the export shows it as written.
    with ThreadStore(db_url, remote=remote, encryption_key=key) as keyed:
        secret = keyed.add_message(thread.thread_id, "a secret", metadata={"m": 1})
        for options in FILTERS:
            rows = {r["message_id"]: r for r in _jsonl(keyed, "messages", **options)}
            assert rows[escaped.message_id]["content"] == "plain:written by the user"
            assert rows[secret.message_id]["content"] == "a secret"
            assert rows[secret.message_id]["metadata"] == {"m": 1}
            csv_text = _csv(keyed, "messages", **options)
            assert "a secret" in csv_text
            assert "fernet:" not in csv_text
        # Threads: metadata is the kind's encoded column.
        keyed.update_thread(thread.thread_id, metadata={"k": "hidden"})
        (row,) = _jsonl(keyed, "threads", workspace="w1")
        assert row["metadata"] == {"k": "hidden"}
    assert len(plain_rows) == 31


def test_rows_encoded_before_the_upgrade_are_found_after_it(db_url: str) -> None:
    """A store at 0004 with an encrypted row: after the upgrade its export decodes it."""
    key = Fernet.generate_key().decode()
    with ThreadStore(db_url, remote=FakeRemote(), encryption_key=key) as keyed:
        thread = keyed.create_thread(user_id="u1")
        keyed.add_message(thread.thread_id, "older secret")
        engine = keyed.engine
        db.downgrade(engine, "0004")
        indexes = {ix["name"] for ix in inspect(engine).get_indexes("messages")}
        assert "ix_messages_encoded" not in indexes
        db.upgrade(engine)
        (row,) = _jsonl(keyed, "messages")
        assert row["content"] == "older secret"


def _plan(engine: Engine, sql: str) -> str:
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            rows = conn.execute(text("EXPLAIN QUERY PLAN " + sql)).fetchall()
            return "\n".join(str(r[-1]) for r in rows)
        conn.execute(text("SET LOCAL enable_seqscan = off"))
        return "\n".join(str(r[0]) for r in conn.execute(text("EXPLAIN " + sql)))


def test_the_check_reads_the_partial_index_of_each_kind(db_url: str) -> None:
    """SQLite and PostgreSQL can answer from ix_<table>_encoded; MySQL has none."""
    with ThreadStore(db_url, remote=FakeRemote()) as store:
        engine = store.engine
        dialect = engine.dialect.name
        checked = 0
        for k in KINDS:
            if not k.encrypted:
                continue
            names = {ix["name"] for ix in inspect(engine).get_indexes(k.table.name)}
            if dialect not in PARTIAL_INDEX_DIALECTS:
                assert f"ix_{k.table.name}_encoded" not in names
                continue
            assert f"ix_{k.table.name}_encoded" in names
            every = [{}, {"since": utcnow() - timedelta(days=1)}, *FILTERS[1:]]
            # SQLite is told to use the index (INDEXED BY fails if it cannot);
            # PostgreSQL may rightly prefer an owner's few rows when filtered.
            for options in every if dialect == "sqlite" else every[:1]:
                if k.name == "assistants" and "user_id" in options:
                    continue  # assistants belong to no user (a ConfigError, tested elsewhere)
                query = export_module._build(
                    k.name,
                    dialect,
                    since=options.get("since"),
                    until=None,
                    workspace=options.get("workspace"),
                    user_id=options.get("user_id"),
                )
                assert query.encoded is not None
                compiled = query.encoded.compile(
                    dialect=engine.dialect, compile_kwargs={"literal_binds": True}
                )
                sql = str(compiled)
                if dialect == "postgresql":
                    sql = sql.replace("%%", "%")
                assert f"ix_{k.table.name}_encoded" in _plan(engine, sql), (k.name, options)
                checked += 1
        assert checked == {"sqlite": 19, "postgresql": 5}.get(dialect, 0)


def test_owner_filters_a_kind_does_not_have_are_config_errors(sqlite_url: str) -> None:
    """--user on assistants (they belong to a workspace) is one clear ConfigError."""
    with ThreadStore(sqlite_url, remote=FakeRemote()) as store:
        with pytest.raises(ConfigError, match="assistants belong to no user: drop --user"):
            store.export(io.StringIO(), table="assistants", user_id="u1")
        with pytest.raises(ConfigError, match="sweeps belong to no workspace or user"):
            store.export(io.StringIO(), table="sweeps", workspace="w1")
        assert store.export(io.StringIO(), table="assistants", workspace="w1") == 0


def test_an_update_that_encodes_a_row_puts_it_in_the_index(sqlite_url: str) -> None:
    """A row rewritten into an escaped value later is found (the index follows updates)."""
    with ThreadStore(sqlite_url, remote=FakeRemote()) as store:
        thread = store.create_thread(user_id="u1")
        message = store.add_message(thread.thread_id, "ordinary")
        set_row(store, messages, message.message_id, content="plain:plain:looks encoded")
        (row,) = _jsonl(store, "messages")
        assert row["content"] == "plain:looks encoded"
        assert declared_kind("messages").encrypted == ("content", "metadata")


def test_a_database_failure_during_the_check_is_reported_as_itself(db_url: str) -> None:
    """The check failing (its transaction aborted, on PostgreSQL) is one StoreError naming it.

    Asked before a fast path only: SQLite's JSONL, PostgreSQL's CSV (``COPY``).
    MySQL/MariaDB have no fast path, never ask, and export as usual.
    """
    with ThreadStore(db_url, remote=FakeRemote()) as store:
        thread = store.create_thread(user_id="u1")
        store.add_message(thread.thread_id, "hello")
        dialect = store.engine.dialect.name
        fmt = "csv" if dialect == "postgresql" else "jsonl"

        def fail_the_check(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            if "LIKE" in statement and "fernet:" in statement.replace("%%", "%"):
                if dialect == "postgresql":  # abort the transaction, as a server failure would
                    with contextlib.suppress(Exception):
                        cursor.execute("SELECT 1/0")
                raise OperationalError(statement, {}, Exception("disk gone (injected)"))

        event.listen(store.engine, "before_cursor_execute", fail_the_check)
        try:
            if dialect in PARTIAL_INDEX_DIALECTS:
                with pytest.raises(StoreError, match="disk gone"):
                    store.export(io.StringIO(), table="messages", fmt=fmt)
            else:
                assert store.export(io.StringIO(), table="messages", fmt=fmt) == 1
        finally:
            event.remove(store.engine, "before_cursor_execute", fail_the_check)
        assert store.export(io.StringIO(), table="messages", fmt=fmt) == 1
