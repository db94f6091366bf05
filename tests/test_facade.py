"""The one-import facade: the SDK's signatures, arguments, answers and streams, all mirrored."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterator
from types import ModuleType

import dashscope
import pytest
import requests

from threadstore import ThreadStore
from threadstore.testing import Emulator, FakeRemote

pytestmark = pytest.mark.filterwarnings("ignore:The Assistants API:DeprecationWarning")

WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}},
}


@pytest.fixture
def facade(
    emulator: Emulator, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[ModuleType, str]]:
    """The facade module, mirroring into a fresh store on every backend."""
    url = db_url
    monkeypatch.setenv("THREADSTORE_DATABASE_URL", url)
    from threadstore import dashscope as facade_module

    yield facade_module, url
    facade_module.close_stores()


def _mirror(url: str) -> ThreadStore:
    """The mirror as another reader sees it, once the facade's writes are flushed."""
    from threadstore.dashscope import flush

    assert flush(timeout=10)
    return ThreadStore(url, remote=FakeRemote())


@pytest.mark.parametrize("name", ["Assistants", "Threads", "Messages", "Runs", "Steps"])
def test_every_public_method_has_the_sdks_parameters(name: str) -> None:
    """Each public method of the SDK class exists with the same parameter names, kinds, defaults."""
    import threadstore.dashscope as facade_module

    sdk_class, ours = getattr(dashscope, name), getattr(facade_module, name)
    public = [m for m in dir(sdk_class) if m[0] != "_" and callable(getattr(sdk_class, m))]
    assert public
    for method in public:
        theirs = inspect.signature(getattr(sdk_class, method)).parameters.values()
        mine = inspect.signature(getattr(ours, method)).parameters.values()
        assert [(p.name, p.kind, p.default) for p in mine] == [
            (p.name, p.kind, p.default) for p in theirs
        ], f"{name}.{method}"


def test_unwrapped_names_are_the_sdks() -> None:
    """Names the facade does not wrap resolve to the SDK's own objects."""
    import threadstore.dashscope as facade_module

    assert facade_module.Files is dashscope.Files
    assert facade_module.Run is dashscope.Run
    with pytest.raises(AttributeError):
        _ = facade_module.NoSuchName


def test_create_message_run_return_sdk_objects_and_are_mirrored(
    facade: tuple[ModuleType, str], emulator: Emulator
) -> None:
    """Threads/Messages/Runs return the SDK's objects; thread, message and run are mirrored."""
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
        assert (rec.user_id, rec.metadata) == ("u1", {"created_by": "u1"})
        assert [m.content for m in store.messages(thread.id)] == ["hello"]
        (stored,) = store.runs(thread.id)
        assert (stored.status, stored.total_tokens) == ("completed", done.usage["total_tokens"])
    # The reply is mirrored once the app reads it: the facade sends nothing of its own.
    Messages.list(thread.id)
    with _mirror(url) as store:
        assert [m.role for m in store.messages(thread.id)] == ["user", "assistant"]


def test_user_id_and_every_argument_pass_through_unchanged(
    facade: tuple[ModuleType, str], emulator: Emulator
) -> None:
    """tools, temperature, file_ids … reach DashScope; user_id never does."""
    from threadstore.dashscope import Messages, Runs, Threads

    emulator.capture = True
    thread = Threads.create(metadata={"a": "b"}, user_id="u9")
    Messages.create(thread.id, content="hi", file_ids=["file_1"])
    run = Runs.create(thread.id, assistant_id="asst_1", tools=[WEATHER], temperature=0.3,
                      top_p=0.9, max_tokens=64, additional_instructions="be brief")
    bodies = [r.body for r in emulator.requests]
    assert b"u9" not in b"".join(bodies)
    assert b'"file_ids": ["file_1"]' in bodies[1]
    for part in (b'"temperature": 0.3', b'"top_p": 0.9', b'"max_tokens": 64', b"get_weather",
                 b"be brief"):
        assert part in bodies[2]
    assert run.temperature == 0.3
    assert run.tools[0].function.name == "get_weather"


def test_update_without_metadata_sends_what_the_sdk_sends(
    facade: tuple[ModuleType, str], emulator: Emulator
) -> None:
    """Threads.update(tid) keeps the thread's metadata, remotely and in the mirror."""
    from threadstore.dashscope import Threads

    _, url = facade
    thread = Threads.create(metadata={"keep": "me"})
    emulator.capture = True
    assert Threads.update(thread.id).metadata == {"keep": "me"}
    assert emulator.requests[-1].body == b'{"metadata": null}'
    with _mirror(url) as store:
        assert store.get_thread(thread.id).metadata == {"keep": "me"}


def test_errors_come_back_like_the_sdk_and_change_nothing(
    facade: tuple[ModuleType, str], emulator: Emulator
) -> None:
    """A 500 returns the SDK's error object (no raise); nothing is mirrored, no intent kept."""
    from threadstore.dashscope import Messages, Threads

    _, url = facade
    emulator.fail("threads.create", status=500, times=1)
    result = Threads.create(metadata={"a": "b"})
    assert (result.status_code, result.code) == (500, "InternalError")
    thread = Threads.create()
    emulator.fail("messages.create", status=429, times=1)
    refused = Messages.create(thread.id, content="x")
    assert refused.status_code == 429
    with _mirror(url) as store:
        assert [t.thread_id for t in store.list_threads()] == [thread.id]
        assert store.messages(thread.id) == []
        assert store.stats().threads_creating == 0


def test_network_errors_raise_like_the_sdk(
    facade: tuple[ModuleType, str], emulator: Emulator
) -> None:
    """A dropped connection raises requests' exception; the create's intent row is kept."""
    from threadstore.dashscope import Threads

    _, url = facade
    emulator.fail("threads.create", drop=True, times=1)
    with pytest.raises(requests.ConnectionError):
        Threads.create(metadata={"a": "b"})
    with _mirror(url) as store:
        assert store.stats().threads_creating == 1


def test_workspace_is_the_callers_on_every_call(
    facade: tuple[ModuleType, str], emulator: Emulator
) -> None:
    """A later call in another workspace gets DashScope's 404 and touches nothing."""
    from threadstore.dashscope import Messages, Threads

    _, url = facade
    thread = Threads.create(workspace="ws-a")
    assert Messages.create(thread.id, content="x", workspace="ws-b").status_code == 404
    assert Threads.delete(thread.id, workspace="ws-b").status_code == 404
    assert emulator.thread_exists(thread.id, workspace="ws-a")
    with _mirror(url) as store:
        assert store.get_thread(thread.id).workspace == "ws-a"
        assert store.messages(thread.id) == []
    assert Threads.delete(thread.id, workspace="ws-a").deleted is True


def test_delete_is_remote_first_and_returns_the_sdks_answer(
    facade: tuple[ModuleType, str], emulator: Emulator
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
    assert (ok.status_code, ok.deleted) == (200, True)
    assert not emulator.thread_exists(thread.id)
    with _mirror(url) as store:
        assert store.list_threads() == []


def test_one_store_per_database_url_whatever_the_key(
    facade: tuple[ModuleType, str], emulator: Emulator
) -> None:
    """Per-call api_key goes to DashScope as given; the facade keeps a single store."""
    from threadstore import dashscope as facade_module

    assert facade_module.Threads.create(api_key="wrong").status_code == 401
    for i in range(5):
        facade_module.Threads.create(api_key=f"sk-{i}")
    assert len(facade_module._stores) == 1


def test_sdk_settings_made_in_code_are_honoured(
    facade: tuple[ModuleType, str], emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """dashscope.api_key and dashscope.base_http_api_url set in code decide, as in the SDK."""
    from threadstore.dashscope import Threads

    monkeypatch.delenv("DASHSCOPE_API_KEY")
    monkeypatch.setattr(dashscope, "api_key", "not-the-key")
    assert Threads.create().status_code == 401
    with Emulator(api_key="not-the-key") as other:
        monkeypatch.setattr(dashscope, "base_http_api_url", other.url)
        thread = Threads.create()
        assert thread.status_code == 200
        assert other.thread_exists(thread.id)


def test_streaming_yields_the_sdks_events_and_mirrors_them(
    facade: tuple[ModuleType, str], emulator: Emulator
) -> None:
    """stream=True: the same events as the SDK, in order; the run and reply land in the mirror."""
    from threadstore.dashscope import Runs, Threads

    _, url = facade
    thread = Threads.create(messages=[{"role": "user", "content": "hi"}])
    events = list(Runs.create(thread.id, assistant_id="asst_1", stream=True))
    assert events[0][0] == "thread.run.created"
    assert events[-1][0] == "thread.run.completed"
    with _mirror(url) as store:
        (run,) = store.runs(thread.id)
        assert run.status == "completed"
        assert run.total_tokens == events[-1][1].usage["total_tokens"]
        assert [m.content for m in store.messages(thread.id)] == ["Echo: hi"]


def test_an_abandoned_stream_leaves_the_last_state_seen(
    facade: tuple[ModuleType, str], emulator: Emulator
) -> None:
    """Breaking out of a stream after in_progress leaves the run in_progress, nothing broken."""
    from threadstore.dashscope import Runs, Threads

    _, url = facade
    thread = Threads.create(messages=[{"role": "user", "content": "hi"}])
    for event, _ in Runs.create(thread.id, assistant_id="asst_1", stream=True):
        if event == "thread.run.in_progress":
            break
    with _mirror(url) as store:
        assert [r.status for r in store.runs(thread.id)] == ["in_progress"]
        assert store.messages(thread.id) == []


def test_a_stale_answer_never_sets_a_run_back(
    facade: tuple[ModuleType, str], emulator: Emulator
) -> None:
    """After completed is mirrored, an older in_progress snapshot does not overwrite it."""
    from threadstore.dashscope import Runs, Threads

    _, url = facade
    thread = Threads.create(messages=[{"role": "user", "content": "hi"}])
    events = list(Runs.create(thread.id, assistant_id="asst_1", stream=True))
    in_progress = next(obj for name, obj in events if name == "thread.run.in_progress")
    from threadstore import dashscope as facade_module

    facade_module._observe("test", "record", workspace=None, runs_seen=[in_progress],
                           thread_id=thread.id)
    with _mirror(url) as store:
        assert [r.status for r in store.runs(thread.id)] == ["completed"]


def test_function_calling_is_mirrored_with_its_later_states(
    facade: tuple[ModuleType, str], emulator: Emulator
) -> None:
    """requires_action is mirrored; submit_tool_outputs and the completed run land too."""
    from threadstore.dashscope import Runs, Threads

    _, url = facade
    thread = Threads.create(messages=[{"role": "user", "content": "weather?"}])
    run = Runs.create(thread.id, assistant_id="asst_1", tools=[WEATHER])
    waiting = Runs.wait(run.id, thread_id=thread.id)
    assert waiting.status == "requires_action"
    with _mirror(url) as store:
        assert [r.status for r in store.runs(thread.id)] == ["requires_action"]
    call = waiting.required_action.submit_tool_outputs.tool_calls[0]
    Runs.submit_tool_outputs(run.id, thread_id=thread.id,
                             tool_outputs=[{"tool_call_id": call.id, "output": "sunny"}])
    assert Runs.wait(run.id, thread_id=thread.id).status == "completed"
    with _mirror(url) as store:
        assert [r.status for r in store.runs(thread.id)] == ["completed"]


def test_create_and_run_in_sdk_2_0_2_fails_the_same_way_when_streamed(
    facade: tuple[ModuleType, str], emulator: Emulator
) -> None:
    """Threads.create_and_run(stream=True) raises the SDK's TypeError; unstreamed it is mirrored."""
    from threadstore.dashscope import Runs, Threads

    _, url = facade
    with pytest.raises(TypeError):
        Threads.create_and_run(assistant_id="asst_1", stream=True)
    run = Runs.create_thread_and_run(
        assistant_id="asst_1", thread={"metadata": {"k": "v"}}, user_id="u2"
    )
    with _mirror(url) as store:
        rec = store.get_thread(run.thread_id)
        assert (rec.user_id, rec.metadata) == ("u2", {"k": "v"})
        assert [r.run_id for r in store.runs(run.thread_id)] == [run.id]


def test_mirror_failures_are_logged_and_counted_never_raised(
    facade: tuple[ModuleType, str], emulator: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    """With the mirror's tables gone, DashScope's answer still comes back unchanged."""
    from sqlalchemy import text

    from threadstore import dashscope as facade_module
    from threadstore.dashscope import Messages, Threads

    thread = Threads.create()
    store, _ = facade_module._store()
    with store.engine.begin() as conn:
        conn.execute(text("DROP TABLE messages"))
    before = facade_module.mirror_failures().get("messages.create", 0)
    with caplog.at_level(logging.WARNING, logger="threadstore.dashscope"):
        msg = Messages.create(thread.id, content="still sent")
        assert facade_module.flush(timeout=10)
    assert (msg.status_code, msg.content[0].text.value) == (200, "still sent")
    assert facade_module.mirror_failures()["messages.create"] == before + 1
    assert "mirror write failed" in caplog.text


def test_a_create_the_mirror_cannot_record_is_never_sent(
    facade: tuple[ModuleType, str], emulator: Emulator
) -> None:
    """With the database unusable, Threads.create raises StoreError and sends nothing."""
    from sqlalchemy import text

    from threadstore import dashscope as facade_module
    from threadstore.errors import StoreError

    store, _ = facade_module._store()
    with store.engine.begin() as conn:
        for table in ("run_steps", "messages", "runs", "threads"):  # children first
            conn.execute(text(f"DROP TABLE {table}"))
    emulator.capture = True
    with pytest.raises(StoreError):
        facade_module.Threads.create(metadata={"a": "b"})
    assert emulator.requests == ()
    assert emulator.thread_ids() == []


def test_a_404_for_a_thread_in_a_workspace_seen_working_drops_the_row_without_a_canary(
    facade: tuple[ModuleType, str], emulator: Emulator
) -> None:
    """Gone behind the facade's back: the SDK's 404 comes back, the row goes, nothing extra sent."""
    from threadstore.dashscope import Messages, Threads

    _, url = facade
    thread = Threads.create(workspace="ws-a")
    Messages.create(thread.id, content="hi", workspace="ws-a")
    assert dashscope.Threads.delete(thread.id, workspace="ws-a").deleted is True
    emulator.capture = True
    gone = Threads.delete(thread.id, workspace="ws-a")
    assert gone.status_code == 404
    assert [r.op for r in emulator.requests] == ["threads.delete"]
    with _mirror(url) as store:
        assert store.list_threads() == []


def test_a_created_thread_is_named_in_the_mirror_before_create_returns(
    facade: tuple[ModuleType, str], emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Promise 1: once Threads.create returns, a kill -9 cannot leave a nameless intent row.

    The background writer is held busy; the settle must not wait in its queue.
    """
    import threading

    from threadstore.dashscope import Threads

    module, url = facade
    mirror = module._store()[1]
    gate = threading.Event()
    monkeypatch.setattr(mirror, "stall", lambda tx: gate.wait(10), raising=False)
    mirror.submit("test.stall", "stall", {})
    release = threading.Timer(0.5, gate.set)
    release.start()
    try:
        thread = Threads.create(metadata={"k": "v"})
        assert thread.status_code == 200
        with ThreadStore(url, remote=FakeRemote()) as reader:
            assert reader.get_thread(thread.id).metadata == {"k": "v"}
            assert reader.stats().threads_creating == 0
    finally:
        gate.set()
        release.cancel()
