"""ThreadStore through the real dashscope SDK and the emulator, on every backend."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.exc import OperationalError

from conftest import API_KEY
from threadstore import (
    ConfigError,
    DashScopeRemote,
    RemoteAuthError,
    RemoteNotFound,
    RemoteRateLimited,
    RemoteUnavailable,
    StoreError,
    ThreadNotFound,
    ThreadStore,
)
from threadstore.models import deletions, messages, threads
from threadstore.testing import Emulator, backdate


def _count(store: ThreadStore, table: Any) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def _later(store: ThreadStore, tid: str, before: datetime) -> None:
    assert store.get_thread(tid).last_active > before


def test_create_mirrors_thread_and_initial_messages(store: ThreadStore, emulator: Emulator) -> None:
    """create_thread makes the remote thread and a local row with its messages."""
    t = store.create_thread(
        user_id="u1",
        metadata={"topic": "billing"},
        messages=[{"role": "user", "content": "hello"}],
        ttl=timedelta(days=3),
    )
    assert emulator.thread_exists(t.thread_id)
    got = store.get_thread(t.thread_id)
    assert got.user_id == "u1"
    assert got.metadata == {"topic": "billing"}
    assert got.status == "active"
    assert got.ttl == timedelta(days=3)
    assert got.last_active.tzinfo is not None
    assert [m.content for m in store.messages(t.thread_id)] == ["hello"]


def test_message_update_and_run_mirror_and_move_last_active(
    store: ThreadStore, emulator: Emulator
) -> None:
    """Each write lands in the mirror and moves last_active forward."""
    t = store.create_thread(user_id="u1")
    before = store.get_thread(t.thread_id).last_active
    time.sleep(0.01)
    msg = store.add_message(t.thread_id, "what is my balance?")
    _later(store, t.thread_id, before)
    assert [m.message_id for m in store.messages(t.thread_id)] == [msg.message_id]

    before = store.get_thread(t.thread_id).last_active
    time.sleep(0.01)
    updated = store.update_thread(t.thread_id, metadata={"stage": "2"})
    assert updated.metadata == {"stage": "2"}
    _later(store, t.thread_id, before)

    before = store.get_thread(t.thread_id).last_active
    time.sleep(0.01)
    run = store.run(t.thread_id, assistant_id="asst_demo", poll_interval=0.05)
    assert run.status == "completed"
    assert run.total_tokens
    assert run.total_tokens == (run.prompt_tokens or 0) + (run.completion_tokens or 0)
    assert [m.role for m in run.messages] == ["assistant"]
    assert store.runs(t.thread_id)[0].total_tokens == run.total_tokens
    assert [m.role for m in store.messages(t.thread_id)] == ["user", "assistant"]
    _later(store, t.thread_id, before)


def test_failed_run_is_mirrored_with_its_error(store: ThreadStore, emulator: Emulator) -> None:
    """A run that fails is mirrored as failed, with its error text."""
    emulator.run_status = "failed"
    t = store.create_thread()
    run = store.run(t.thread_id, assistant_id="asst_demo", poll_interval=0.05)
    assert run.status == "failed"
    assert run.last_error
    assert store.runs(t.thread_id)[0].status == "failed"


@pytest.mark.parametrize(
    ("status", "error"),
    [(500, RemoteUnavailable), (429, RemoteRateLimited), (503, RemoteUnavailable)],
)
def test_remote_failure_on_create_leaves_no_local_trace(
    store: ThreadStore, emulator: Emulator, status: int, error: type[Exception]
) -> None:
    """A 5xx/429 on create raises the typed error; no row, not even the intent."""
    emulator.fail("threads.create", status=status, times=1)
    with pytest.raises(error) as info:
        store.create_thread(user_id="u1")
    assert getattr(info.value, "status_code", None) == status
    assert _count(store, threads) == 0
    assert emulator.thread_ids() == []


def test_remote_failure_on_message_changes_nothing(store: ThreadStore, emulator: Emulator) -> None:
    """A 429 on add_message leaves messages and last_active as they were."""
    t = store.create_thread(user_id="u1")
    before = store.get_thread(t.thread_id)
    emulator.fail("messages.create", status=429, times=1)
    with pytest.raises(RemoteRateLimited):
        store.add_message(t.thread_id, "hi")
    assert store.messages(t.thread_id) == []
    assert store.get_thread(t.thread_id).last_active == before.last_active


def test_remote_failure_on_update_keeps_old_metadata(
    store: ThreadStore, emulator: Emulator
) -> None:
    """A 500 on update_thread keeps the mirrored metadata unchanged."""
    t = store.create_thread(metadata={"v": 1})
    emulator.fail("threads.update", status=500, times=1)
    with pytest.raises(RemoteUnavailable):
        store.update_thread(t.thread_id, metadata={"v": 2})
    assert store.get_thread(t.thread_id).metadata == {"v": 1}


def test_local_write_failure_during_create_leaves_no_remote_thread(
    store: ThreadStore, emulator: Emulator
) -> None:
    """If the final local write fails, the remote thread is deleted again."""

    def boom(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("UPDATE THREADS") and "status" in statement:
            raise OperationalError(statement, {}, Exception("disk I/O error (injected)"))

    event.listen(store.engine, "before_cursor_execute", boom)
    try:
        with pytest.raises(StoreError):
            store.create_thread(user_id="u1", messages=[{"role": "user", "content": "x"}])
    finally:
        event.remove(store.engine, "before_cursor_execute", boom)
    assert emulator.count("threads.create", status=200) == 1
    assert emulator.thread_ids() == []  # compensated
    assert _count(store, threads) == 0


def test_dead_database_means_nothing_created_remotely(
    store: ThreadStore, emulator: Emulator
) -> None:
    """If the intent row cannot be written, DashScope is never called."""

    def boom(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO THREADS"):
            raise OperationalError(statement, {}, Exception("database is down (injected)"))

    event.listen(store.engine, "before_cursor_execute", boom)
    try:
        with pytest.raises(StoreError):
            store.create_thread(user_id="u1")
    finally:
        event.remove(store.engine, "before_cursor_execute", boom)
    assert emulator.count("threads.create") == 0


def test_unknown_thread_raises_thread_not_found(store: ThreadStore, emulator: Emulator) -> None:
    """Reads and writes on an id the store does not know raise ThreadNotFound, no remote call."""
    for call in (
        lambda: store.get_thread("thread_nope"),
        lambda: store.messages("thread_nope"),
        lambda: store.add_message("thread_nope", "hi"),
        lambda: store.update_thread("thread_nope", metadata={}),
        lambda: store.delete_thread("thread_nope"),
        lambda: store.pin("thread_nope"),
    ):
        with pytest.raises(ThreadNotFound) as info:
            call()
        assert info.value.thread_id == "thread_nope"
    assert emulator.count() == 0


def test_bad_input_is_refused_before_any_remote_call(
    store: ThreadStore, emulator: Emulator
) -> None:
    """Non-JSON metadata, bad roles and bad TTLs raise ConfigError and call nothing."""
    with pytest.raises(ConfigError):
        store.create_thread(metadata={"when": datetime.now(timezone.utc)})
    with pytest.raises(ConfigError):
        store.create_thread(messages=[{"role": "system", "content": "x"}])
    with pytest.raises(ConfigError):
        store.create_thread(ttl=timedelta(seconds=-1))
    t = store.create_thread()
    with pytest.raises(ConfigError):
        store.add_message(t.thread_id, "x", metadata={"bad": {1, 2}})
    with pytest.raises(ConfigError):
        store.touch(t.thread_id, at=datetime(2020, 1, 1))  # naive
    assert emulator.count() == 1  # only the one good create


def test_delete_thread_removes_remote_then_local(store: ThreadStore, emulator: Emulator) -> None:
    """delete_thread deletes remotely, then the row, messages, and logs the deletion."""
    t = store.create_thread(user_id="u1")
    store.add_message(t.thread_id, "hi")
    store.delete_thread(t.thread_id)
    assert not emulator.thread_exists(t.thread_id)
    with pytest.raises(ThreadNotFound):
        store.get_thread(t.thread_id)
    assert _count(store, messages) == 0
    with store.engine.connect() as conn:
        row = conn.execute(select(deletions)).mappings().one()
    assert (row["thread_id"], row["reason"], row["remote_result"]) == (
        t.thread_id,
        "manual",
        "deleted",
    )
    assert row["message_count"] == 1


def test_delete_thread_refuses_a_lease_its_delete_could_outlive(
    store: ThreadStore, emulator: Emulator
) -> None:
    """A lease not above twice the remote timeout (or not a lease): ConfigError, nothing sent."""
    t = store.create_thread()
    timeout = store.remote.timeout  # type: ignore[attr-defined]
    for lease in (timedelta(seconds=2 * timeout), timedelta(0), timedelta(days=2), 60):
        with pytest.raises(ConfigError, match="lease"):
            store.delete_thread(t.thread_id, lease=lease)  # type: ignore[arg-type]
    assert emulator.count("threads.delete") == 0
    assert emulator.thread_exists(t.thread_id)
    store.delete_thread(t.thread_id, lease=timedelta(seconds=2 * timeout + 1))
    assert not emulator.thread_exists(t.thread_id)


def test_failed_remote_delete_keeps_the_row(store: ThreadStore, emulator: Emulator) -> None:
    """A 500 on delete raises and keeps the local row; a retry then succeeds."""
    t = store.create_thread()
    emulator.fail("threads.delete", status=500, times=1)
    with pytest.raises(RemoteUnavailable):
        store.delete_thread(t.thread_id)
    assert emulator.thread_exists(t.thread_id)
    assert store.get_thread(t.thread_id).thread_id == t.thread_id
    store.delete_thread(t.thread_id)  # lease released: a retry works at once
    assert not emulator.thread_exists(t.thread_id)


def test_delete_of_remotely_vanished_thread_completes(
    store: ThreadStore, emulator: Emulator
) -> None:
    """DashScope's 404 on delete means already gone once another thread of ours proves
    the workspace: the local row goes too."""
    store.create_thread()  # a live thread of the same workspace: the canary
    t = store.create_thread()
    emulator.fail("threads.delete", status=404, times=1)
    store.delete_thread(t.thread_id)
    with pytest.raises(ThreadNotFound):
        store.get_thread(t.thread_id)
    with store.engine.connect() as conn:
        assert conn.execute(select(deletions.c.remote_result)).scalar_one() == "already_gone"


def test_adopt_mirrors_a_foreign_thread_with_all_its_messages(
    store: ThreadStore, emulator: Emulator
) -> None:
    """adopt pages through every message of a thread created elsewhere."""
    tid = emulator.seed_thread(
        metadata={"src": "legacy"},
        messages=[{"role": "user", "content": f"m{i}"} for i in range(250)],
    )
    rec = store.adopt(tid, user_id="u9")
    assert rec.metadata == {"src": "legacy"}
    assert [m.content for m in store.messages(tid)] == [f"m{i}" for i in range(250)]
    store.adopt(tid)  # adopting again adds nothing twice
    assert len(store.messages(tid)) == 250
    with pytest.raises(RemoteNotFound):
        store.adopt("thread_does_not_exist")


def test_workspace_scopes_every_call(store: ThreadStore, emulator: Emulator) -> None:
    """A thread created in a workspace is written and deleted in that workspace."""
    t = store.create_thread(workspace="ws-a")
    assert emulator.thread_exists(t.thread_id, workspace="ws-a")
    assert not emulator.thread_exists(t.thread_id)
    store.add_message(t.thread_id, "hi")
    assert store.list_threads(workspace="ws-a")[0].thread_id == t.thread_id
    assert store.list_threads(workspace="ws-b") == []
    store.delete_thread(t.thread_id)
    assert not emulator.thread_exists(t.thread_id, workspace="ws-a")


def test_pin_ttl_touch_and_list_filters(store: ThreadStore) -> None:
    """pin/unpin/set_ttl/touch change only local fields; list_threads filters on them."""
    old, new = store.create_thread(user_id="a"), store.create_thread(user_id="b")
    ten_days_ago = datetime.now(timezone.utc) - timedelta(days=10)
    assert backdate(store, old.thread_id, ten_days_ago).last_active == ten_days_ago
    assert [t.thread_id for t in store.list_threads(inactive_for=timedelta(days=7))] == [
        old.thread_id
    ]
    assert [t.thread_id for t in store.list_threads(user_id="b")] == [new.thread_id]
    assert store.pin(old.thread_id).pinned
    assert not store.unpin(old.thread_id).pinned
    assert store.set_ttl(old.thread_id, timedelta(hours=1)).ttl == timedelta(hours=1)
    assert store.set_ttl(old.thread_id, None).ttl is None
    with pytest.raises(ConfigError):
        store.set_ttl(old.thread_id, timedelta(0))


def test_missing_api_key_is_an_auth_error_with_no_local_trace(
    db_url: str, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without any API key, create raises RemoteAuthError and writes nothing."""
    import dashscope

    monkeypatch.setattr(dashscope, "api_key", None)
    monkeypatch.delenv("DASHSCOPE_API_KEY", raising=False)
    monkeypatch.setenv("HOME", "/nonexistent")  # the SDK's ~/.dashscope/api_key fallback
    with ThreadStore(db_url, remote=DashScopeRemote(base_url=emulator.url, timeout=5)) as s:
        with pytest.raises(RemoteAuthError):
            s.create_thread()
        assert _count(s, threads) == 0


def test_wrong_api_key_is_an_auth_error(db_url: str, emulator: Emulator) -> None:
    """A key DashScope refuses gives RemoteAuthError (401) and no local row."""
    remote = DashScopeRemote(api_key="sk-wrong", base_url=emulator.url, timeout=5)
    with ThreadStore(db_url, remote=remote) as s:
        with pytest.raises(RemoteAuthError) as info:
            s.create_thread()
        assert info.value.status_code == 401
        assert _count(s, threads) == 0


def test_reopening_keeps_data_and_schema(db_url: str, remote: DashScopeRemote) -> None:
    """A second ThreadStore on the same URL sees the first one's threads."""
    with ThreadStore(db_url, remote=remote) as s:
        tid = s.create_thread(user_id="u").thread_id
    with ThreadStore(db_url, remote=remote) as s:
        assert s.get_thread(tid).user_id == "u"


@pytest.mark.parametrize("fault", [{"hang": True}, {"drop": True}])
def test_create_whose_answer_is_lost_keeps_its_intent_row(
    db_url: str, emulator: Emulator, fault: dict[str, bool]
) -> None:
    """No answer to a create (timeout, dropped connection): the intent row stays, visible."""
    from threadstore.stats import Stats

    remote = DashScopeRemote(api_key=API_KEY, base_url=emulator.url, timeout=0.5)
    with ThreadStore(db_url, remote=remote) as s:
        emulator.fail("threads.create", times=1, **fault)
        with pytest.raises(RemoteUnavailable) as info:
            s.create_thread(user_id="u1")
        assert info.value.outcome_unknown
        assert s.list_threads() == []  # not a usable thread ...
        stats: Stats = s.stats()
        assert stats.threads_creating == 1  # ... but on record as a possible orphan
        with s.engine.connect() as conn:
            row = conn.execute(select(threads)).mappings().one()
        assert row["status"] == "creating"
        assert row["last_error"].startswith("create outcome unknown")


def test_create_that_never_reached_dashscope_leaves_nothing() -> None:
    """A refused connection is a definite failure: no intent row is kept."""
    remote = DashScopeRemote(api_key=API_KEY, base_url="http://127.0.0.1:9/api/v1", timeout=2)
    with ThreadStore("sqlite://", remote=remote) as s:
        with pytest.raises(RemoteUnavailable) as info:
            s.create_thread()
        assert not info.value.outcome_unknown
        assert _count(s, threads) == 0


def test_database_failure_after_remote_delete_keeps_the_row_for_a_retry(
    store: ThreadStore, emulator: Emulator
) -> None:
    """delete_thread: if the local delete fails, the row stays; a later retry completes it."""
    t = store.create_thread()

    def boom(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("DELETE FROM THREADS"):
            raise OperationalError(statement, {}, Exception("disk full (injected)"))

    event.listen(store.engine, "before_cursor_execute", boom)
    store.remote.timeout = 0.4  # type: ignore[attr-defined]  # a 1 s lease needs < 0.5 s
    try:
        with pytest.raises(StoreError):
            store.delete_thread(t.thread_id, lease=timedelta(seconds=1))
    finally:
        event.remove(store.engine, "before_cursor_execute", boom)
    assert not emulator.thread_exists(t.thread_id)
    assert _count(store, threads) == 1  # never a remote thread without its row
    time.sleep(1.1)
    store.delete_thread(t.thread_id)  # DashScope now says 404: already gone
    assert _count(store, threads) == 0
    with store.engine.connect() as conn:
        assert conn.execute(select(deletions.c.remote_result)).scalar_one() == "already_gone"


def test_thread_counts_per_thread(fake_store: ThreadStore) -> None:
    """thread_counts gives each thread's mirrored message and run counts."""
    a, b = fake_store.create_thread(), fake_store.create_thread()
    fake_store.add_message(a.thread_id, "one")
    fake_store.run(a.thread_id, assistant_id="asst_1", poll_interval=0.01)
    counts = fake_store.thread_counts([a.thread_id, b.thread_id])
    assert (counts[a.thread_id].messages, counts[a.thread_id].runs) == (2, 1)
    assert (counts[b.thread_id].messages, counts[b.thread_id].runs) == (0, 0)
