"""What must hold on every backend, with MySQL/MariaDB's usual traps in mind.

MySQL's defaults compare strings case- and trailing-space-insensitively, store
``DATETIME`` to the second, cap ``TEXT`` at 64 KiB and sum integers into
``DECIMAL``. threadstore behaves as on PostgreSQL regardless: these tests run on
every backend; the schema checks are MySQL-only.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import create_engine, insert, text

from threadstore import ThreadStore, db
from threadstore.models import threads
from threadstore.testing import FakeRemote

OWNERS = ["alice", "Alice", "alice ", "ALICE", "alicé"]
EXACT = {("utf8mb4", "utf8mb4_nopad_bin"), ("utf8mb4", "utf8mb4_0900_bin")}


def test_user_and_workspace_filters_are_case_and_space_exact(db_url: str) -> None:
    """`alice`, `Alice`, `alice ` are three users; each filter returns only its own."""
    with ThreadStore(db_url, remote=FakeRemote()) as store:
        ids = {
            owner: store.create_thread(user_id=owner, workspace=f"ws-{owner}").thread_id
            for owner in OWNERS
        }
        for owner, tid in ids.items():
            assert [t.thread_id for t in store.list_threads(user_id=owner)] == [tid]
            assert [t.thread_id for t in store.list_threads(workspace=f"ws-{owner}")] == [tid]
            out = io.StringIO()
            assert store.export(out, user_id=owner) == 1
            assert json.loads(out.getvalue())["thread_id"] == tid


def test_emoji_and_cjk_round_trip(db_url: str) -> None:
    """Four-byte emoji and CJK text come back unchanged in ids, metadata and messages."""
    text_ = "你好 世界 🧵🚀 こんにちは 𠜎"
    with ThreadStore(db_url, remote=FakeRemote()) as store:
        t = store.create_thread(user_id="用户🙂", workspace="工作区", metadata={"topic": text_},
                                messages=[{"role": "user", "content": text_}])
        store.add_message(t.thread_id, text_ * 3, role="assistant")
        again = store.get_thread(t.thread_id)
        assert (again.user_id, again.workspace, again.metadata) == (
            "用户🙂", "工作区", {"topic": text_}
        )
        assert [m.content for m in store.messages(t.thread_id)] == [text_, text_ * 3]
        assert [r.thread_id for r in store.list_threads(user_id="用户🙂")] == [t.thread_id]


def test_long_message_is_kept_whole(db_url: str) -> None:
    """A 200 KB message (more than MySQL's TEXT holds) is stored and read back whole."""
    content = "长" * 100_000  # 300 KB in UTF-8
    with ThreadStore(db_url, remote=FakeRemote()) as store:
        t = store.create_thread(user_id="u")
        store.add_message(t.thread_id, content)
        assert [m.content for m in store.messages(t.thread_id)] == [content]


def test_microseconds_are_kept_and_initial_messages_stay_in_order(db_url: str) -> None:
    """Timestamps keep their microseconds, so a thread's first messages keep their order."""
    at = datetime(2026, 5, 1, 12, 0, 0, 123456, tzinfo=timezone.utc)
    with ThreadStore(db_url, remote=FakeRemote()) as store:
        contents = [f"message {i}" for i in range(12)]
        t = store.create_thread(
            user_id="u", messages=[{"role": "user", "content": c} for c in contents]
        )
        assert [m.content for m in store.messages(t.thread_id)] == contents
        store.touch(t.thread_id, at=at + timedelta(days=3650))
        later = store.get_thread(t.thread_id).last_active
        assert later.microsecond == 123456


def test_export_counts_are_integers_in_every_text_format(db_url: str) -> None:
    """Sums and counts in a threads export are JSON integers, not decimals or strings."""
    with ThreadStore(db_url, remote=FakeRemote()) as store:
        t = store.create_thread(user_id="u", messages=[{"role": "user", "content": "hi"}])
        out = io.StringIO()
        store.export(out)
        row = json.loads(out.getvalue())
        assert row["thread_id"] == t.thread_id
        for name in ("message_count", "run_count", "prompt_tokens", "total_tokens"):
            assert type(row[name]) is int, name
        assert row["message_count"] == 1
        csv_out = io.StringIO()
        store.export(csv_out, fmt="csv")
        fields = next(csv.DictReader(io.StringIO(csv_out.getvalue())))
        assert (fields["message_count"], fields["prompt_tokens"]) == ("1", "0")


# ------------------------------------------------------------------ MySQL only


@pytest.mark.mysql
def test_every_mysql_column_is_exact_utf8mb4_and_microsecond(mysql_url: str) -> None:
    """In a MySQL store every text column is utf8mb4_bin and every datetime DATETIME(6).

    The database itself has the server's default (case-insensitive) collation:
    the columns must carry their own. Covers every table threadstore creates.
    """
    with ThreadStore(mysql_url, remote=FakeRemote()):
        pass
    engine = create_engine(mysql_url)
    try:
        with engine.connect() as conn:
            columns = conn.execute(
                text(
                    "SELECT TABLE_NAME, COLUMN_NAME, DATA_TYPE, CHARACTER_SET_NAME, "
                    "COLLATION_NAME, DATETIME_PRECISION FROM information_schema.COLUMNS "
                    "WHERE TABLE_SCHEMA = DATABASE()"
                )
            ).all()
    finally:
        engine.dispose()
    assert {c[0] for c in columns} >= {"threads", "messages", "runs", "deletions"}
    wrong = [
        c for c in columns
        if not c[0].endswith("alembic_version")
        and (
            (c[3] is not None and (c[3], c[4]) not in EXACT)
            or (c[2] in ("datetime", "timestamp") and c[5] != 6)
            or c[2] in ("text", "tinytext", "mediumtext")
        )
    ]
    assert wrong == []


@pytest.mark.mysql
def test_a_01_mysql_store_is_brought_to_exact_types_keeping_its_rows(mysql_url: str) -> None:
    """A store made by 0.1 (revision 0001: default collation, TEXT, DATETIME) upgrades in place."""
    engine = db.open_engine(mysql_url)
    try:
        db.upgrade(engine, "0001")
        when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
        with engine.begin() as conn:
            conn.execute(
                insert(threads),
                [{"thread_id": "thread_old", "user_id": "Bob", "workspace": None,
                  "created_at": when, "last_active": when, "metadata": '{"k": "v"}'}],
            )
    finally:
        engine.dispose()
    with ThreadStore(mysql_url, remote=FakeRemote()) as store:
        old = store.get_thread("thread_old")
        assert (old.user_id, old.last_active, old.metadata) == ("Bob", when, {"k": "v"})
        assert store.list_threads(user_id="bob") == []
        t = store.create_thread(user_id="bob")
        assert [r.thread_id for r in store.list_threads(user_id="bob")] == [t.thread_id]
