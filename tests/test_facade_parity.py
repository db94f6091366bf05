"""Parity: a chatbot written for the plain SDK behaves identically through the facade.

The same chatbot (assistant with a function tool, streaming with function calling, a
polling loop on ``Runs.retrieve``, message and step listing) runs twice, each time
against a fresh emulator that hands out the same ids: once with ``dashscope``'s
classes, once with ``threadstore.dashscope``'s. The answers must be identical, every
request byte-identical and none extra; afterwards the mirror holds every object.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import dashscope
import pytest
import requests

from threadstore import ThreadStore
from threadstore.testing import Emulator, FakeRemote

pytestmark = pytest.mark.filterwarnings("ignore:The Assistants API:DeprecationWarning")

KEY = "sk-parity"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
DONE = ("completed", "failed", "cancelled", "expired", "requires_action")


def chatbot(ds: Any) -> list[Any]:
    """A small weather chatbot, written against the SDK's API; returns what it saw."""
    seen: list[Any] = []
    helper = ds.Assistants.create(model="qwen-max", name="weather", instructions="Be brief.",
                                  tools=[WEATHER], api_key=KEY)
    plain = ds.Assistants.create(model="qwen-plus", name="chat", api_key=KEY)
    thread = ds.Threads.create(metadata={"channel": "web"}, api_key=KEY)
    seen.append(("thread", thread.status_code, thread.id, thread.metadata))

    # Turn 1: streamed, with function calling.
    ds.Messages.create(thread.id, content="Weather in Paris?", api_key=KEY)
    for event, obj in ds.Runs.create(thread.id, assistant_id=helper.id, stream=True, api_key=KEY):
        seen.append(event)
        if event == "thread.run.requires_action":
            calls = obj.required_action.submit_tool_outputs.tool_calls
            seen += [(c.function.name, c.function.arguments) for c in calls]
            outputs = [{"tool_call_id": c.id, "output": "sunny, 21C"} for c in calls]
            for again, part in ds.Runs.submit_tool_outputs(
                obj.id, thread_id=thread.id, tool_outputs=outputs, stream=True, api_key=KEY
            ):
                seen.append(again)
                if again == "thread.message.delta":
                    seen.append(part.delta.content.text.value)

    # Turn 2: the classic polling loop.
    ds.Messages.create(thread.id, content="Thanks!", metadata={"turn": "2"}, api_key=KEY)
    run = ds.Runs.create(thread.id, assistant_id=plain.id, temperature=0.2, api_key=KEY)
    while run.status not in DONE:
        run = ds.Runs.retrieve(run.id, thread_id=thread.id, api_key=KEY)
    seen.append((run.status, run.usage))

    # Read back what happened.
    page = ds.Messages.list(thread.id, order="asc", limit=10, api_key=KEY)
    seen += [(m.id, m.role, m.content[0].text.value) for m in page.data]
    steps = ds.Steps.list(run.id, thread_id=thread.id, api_key=KEY)
    seen += [(s.id, s.type, s.status) for s in steps.data]
    seen += [(r.id, r.status) for r in ds.Runs.list(thread.id, api_key=KEY).data]
    seen.append(ds.Threads.retrieve(thread.id, api_key=KEY).metadata)
    return seen


def _run(ds: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[list[Any], list[Any], Emulator]:
    emu = Emulator(api_key=KEY, id_seed=42, capture=True).start()
    try:
        monkeypatch.setattr(dashscope, "base_http_api_url", emu.url)
        seen = chatbot(ds)
        sent = [(r.method, r.path, r.body, _headers(r.headers)) for r in emu.requests]
        return seen, sent, emu
    finally:
        emu.stop()


def _headers(headers: tuple[tuple[str, str], ...]) -> list[tuple[str, str]]:
    return [(k, v) for k, v in headers if k.lower() != "host"]  # the emulator's port


@pytest.fixture
def facade(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[ModuleType, str]]:
    url = f"sqlite:///{tmp_path / 'parity.db'}"
    monkeypatch.setenv("THREADSTORE_DATABASE_URL", url)
    from threadstore import dashscope as facade_module

    yield facade_module, url
    facade_module.close_stores()


def test_chatbot_answers_and_requests_are_identical_through_the_facade(
    facade: tuple[ModuleType, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same answers, byte-identical requests, no extra request; the mirror holds it all."""
    module, url = facade
    plain = SimpleNamespace(**{n: getattr(dashscope, n) for n in
                               ("Assistants", "Threads", "Messages", "Runs", "Steps")})
    expected, plain_requests, _ = _run(plain, monkeypatch)
    got, facade_requests, _ = _run(module, monkeypatch)

    assert got == expected
    assert len(facade_requests) == len(plain_requests)
    for ours, theirs in zip(facade_requests, plain_requests, strict=True):
        assert ours == theirs

    thread_id = expected[0][2]
    assert module.flush(timeout=10)
    with ThreadStore(url, remote=FakeRemote()) as store:
        thread = store.get_thread(thread_id)
        assert thread.metadata == {"channel": "web"}
        listed = [(t[1], t[2]) for t in expected
                  if isinstance(t, tuple) and len(t) == 3 and t[1] in ("user", "assistant")]
        assert len(listed) == 4
        assert [(m.role, m.content) for m in store.messages(thread_id)] == listed
        runs = store.runs(thread_id)
        assert [r.status for r in runs] == ["completed", "completed"]
        assert all(r.total_tokens for r in runs)
        assert [(c["name"], c["output"]) for c in runs[0].tool_calls] == [
            ("get_weather", "sunny, 21C")]
        assert [(s.type, s.status) for s in store.steps(thread_id)] == [
            ("tool_calls", "completed"), ("message_creation", "completed"),
            ("message_creation", "completed")]
        assert sorted(a.name or "" for a in store.assistants()) == ["chat", "weather"]


def failures(ds: Any, emu: Emulator) -> list[Any]:
    """DashScope saying no, and the network failing, as an app sees them."""
    seen: list[Any] = []
    thread = ds.Threads.create(api_key=KEY)
    emu.fail("threads.create", status=500, times=1)
    emu.fail("messages.create", status=429, retry_after=3, times=1)
    emu.fail("runs.retrieve", status=503, times=1)
    for result in (
        ds.Threads.create(metadata={"a": "b"}, api_key=KEY),
        ds.Messages.create(thread.id, content="x", api_key=KEY),
        ds.Runs.retrieve("run_missing", thread_id=thread.id, api_key=KEY),
        ds.Runs.retrieve("run_missing", thread_id=thread.id, api_key=KEY),
        ds.Threads.delete("thread_missing", api_key=KEY),
        ds.Assistants.retrieve("asst_missing", api_key=KEY),
        ds.Steps.list("run_missing", thread_id=thread.id, api_key=KEY),
    ):
        seen.append((type(result).__name__, result.status_code, result.code, result.message))
    emu.fail("runs.create", drop=True, times=1)
    with pytest.raises(requests.ConnectionError) as caught:
        ds.Runs.create(thread.id, assistant_id="asst_1", api_key=KEY)
    seen.append(type(caught.value).__name__)
    return seen


def test_failures_look_exactly_like_the_sdks(
    facade: tuple[ModuleType, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Error objects and exceptions through the facade are the SDK's, request for request."""
    module, _ = facade
    plain = SimpleNamespace(**{n: getattr(dashscope, n) for n in
                               ("Assistants", "Threads", "Messages", "Runs", "Steps")})
    results = []
    for ds in (plain, module):
        emu = Emulator(api_key=KEY, id_seed=7, capture=True).start()
        try:
            monkeypatch.setattr(dashscope, "base_http_api_url", emu.url)
            results.append((failures(ds, emu), [(r.method, r.path, r.body) for r in emu.requests]))
        finally:
            emu.stop()
    assert results[1] == results[0]
    assert results[0][0][0][1:3] == (500, "InternalError")
