"""The one-import facade: SDK signatures and objects, every call mirrored."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from threadstore import ThreadStore
from threadstore.testing import Emulator, FakeRemote


@pytest.fixture
def facade(
    emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[object, str]]:
    url = f"sqlite:///{tmp_path / 'facade.db'}"
    monkeypatch.setenv("THREADSTORE_DATABASE_URL", url)
    from threadstore import dashscope as facade_module

    yield facade_module, url
    facade_module.close_stores()


def _mirror(url: str) -> ThreadStore:
    return ThreadStore(url, remote=FakeRemote())


def test_create_message_run_are_mirrored_and_return_sdk_objects(
    facade: tuple[object, str], emulator: Emulator
) -> None:
    """Threads/Messages/Runs return the SDK's objects and fill the mirror."""
    from dashscope.threads.thread_types import Run, Thread, ThreadMessage

    from threadstore.dashscope import Messages, Runs, Threads

    _, url = facade
    thread = Threads.create(metadata={"created_by": "u1"}, user_id="u1")
    assert isinstance(thread, Thread)
    assert thread.status_code == 200
    msg = Messages.create(thread.id, content="hello")
    assert isinstance(msg, ThreadMessage)
    run = Runs.create(thread.id, assistant_id="asst_1")
    assert isinstance(run, Run)
    done = Runs.wait(run.id, thread_id=thread.id)
    assert done.status == "completed"
    with _mirror(url) as store:
        rec = store.get_thread(thread.id)
        assert rec.user_id == "u1"
        assert rec.metadata == {"created_by": "u1"}
        assert [m.role for m in store.messages(thread.id)] == ["user", "assistant"]
        assert store.runs(thread.id)[0].status == "completed"


def test_errors_come_back_like_the_sdk_and_change_nothing(
    facade: tuple[object, str], emulator: Emulator
) -> None:
    """A 500 returns the SDK's error object (no raise), and nothing is mirrored."""
    from threadstore.dashscope import Threads

    _, url = facade
    emulator.fail("threads.create", status=500, times=1)
    result = Threads.create(metadata={"a": "b"})
    assert result.status_code == 500
    with _mirror(url) as store:
        assert store.list_threads() == []


def test_delete_is_remote_first_and_returns_a_delete_response(
    facade: tuple[object, str], emulator: Emulator
) -> None:
    """Threads.delete removes remote then local; a failure keeps the row for a retry."""
    from threadstore.dashscope import Threads

    _, url = facade
    thread = Threads.create()
    emulator.fail("threads.delete", status=500, times=1)
    failed = Threads.delete(thread.id)
    assert failed.status_code == 500
    with _mirror(url) as store:
        assert store.get_thread(thread.id)
    ok = Threads.delete(thread.id)
    assert ok.status_code == 200
    assert ok.deleted is True
    assert not emulator.thread_exists(thread.id)
    with _mirror(url) as store:
        assert store.list_threads() == []


def test_threads_created_elsewhere_are_adopted_on_first_use(
    facade: tuple[object, str], emulator: Emulator
) -> None:
    """A message on a thread the store never saw adopts the thread first."""
    from threadstore.dashscope import Messages

    _, url = facade
    tid = emulator.seed_thread(messages=[{"role": "user", "content": "old"}])
    Messages.create(tid, content="new")
    with _mirror(url) as store:
        assert [m.content for m in store.messages(tid)] == ["old", "new"]
