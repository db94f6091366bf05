"""The emulator answers the whole Assistant API surface of the SDK (driven by the real SDK)."""

from __future__ import annotations

import json

import dashscope
import pytest
from dashscope import Assistants, Messages, Runs, Steps, Threads

from conftest import API_KEY
from threadstore.testing import OPS, Emulator

pytestmark = pytest.mark.filterwarnings("ignore:The Assistants API:DeprecationWarning")

KEY = API_KEY
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def test_assistants_crud_is_workspace_scoped(emu: Emulator) -> None:
    """Assistants create/retrieve/list/update/delete; ids live in their workspace."""
    made = Assistants.create(model="qwen-max", name="helper", instructions="Be brief.",
                             tools=[WEATHER], metadata={"team": "a"}, api_key=KEY)
    assert made.status_code == 200
    assert made.id.startswith("asst_")
    assert made.tools[0].function.name == "get_weather"
    assert Assistants.retrieve(made.id, api_key=KEY).name == "helper"
    assert Assistants.retrieve(made.id, workspace="ws-x", api_key=KEY).status_code == 404
    updated = Assistants.update(made.id, name="helper2", api_key=KEY)
    assert (updated.name, updated.model, updated.metadata) == ("helper2", "qwen-max", {"team": "a"})
    listed = Assistants.list(api_key=KEY)
    assert [a.id for a in listed.data] == [made.id]
    gone = Assistants.delete(made.id, api_key=KEY)
    assert (gone.status_code, gone.deleted) == (200, True)
    assert Assistants.delete(made.id, api_key=KEY).status_code == 404


def test_messages_retrieve_and_update(emu: Emulator) -> None:
    """Messages.update replaces metadata; retrieve sees it; unknown ids are 404."""
    tid = emu.seed_thread()
    msg = Messages.create(tid, content="hi", file_ids=["file_1"], api_key=KEY)
    assert msg.file_ids == ["file_1"]
    updated = Messages.update(msg.id, thread_id=tid, metadata={"seen": "yes"}, api_key=KEY)
    assert updated.metadata == {"seen": "yes"}
    assert Messages.retrieve(msg.id, thread_id=tid, api_key=KEY).metadata == {"seen": "yes"}
    assert Messages.retrieve("message_nope", thread_id=tid, api_key=KEY).status_code == 404


def test_runs_update_cancel_and_list(emu: Emulator) -> None:
    """Runs.update sets metadata; cancel ends an active run; a finished one refuses (400)."""
    emu.run_delay = 60
    tid = emu.seed_thread(messages=[{"role": "user", "content": "hi"}])
    run = Runs.create(tid, assistant_id="asst_1", temperature=0.2, api_key=KEY)
    assert run.temperature == 0.2
    assert Runs.update(run.id, thread_id=tid, metadata={"k": "v"}, api_key=KEY).metadata == {
        "k": "v"
    }
    cancelled = Runs.cancel(run.id, thread_id=tid, api_key=KEY)
    assert (cancelled.status, cancelled.cancelled_at is not None) == ("cancelled", True)
    assert Runs.cancel(run.id, thread_id=tid, api_key=KEY).status_code == 400
    assert [r.status for r in Runs.list(tid, api_key=KEY).data] == ["cancelled"]


def test_function_tools_require_action_and_submit_continues(emu: Emulator) -> None:
    """A run with a function tool asks for it; submit_tool_outputs completes the run."""
    assistant = Assistants.create(model="qwen-max", tools=[WEATHER], api_key=KEY)
    tid = emu.seed_thread(messages=[{"role": "user", "content": "weather in Paris?"}])
    run = Runs.create(tid, assistant_id=assistant.id, api_key=KEY)
    waiting = Runs.wait(run.id, thread_id=tid, api_key=KEY)
    assert waiting.status == "requires_action"
    call = waiting.required_action.submit_tool_outputs.tool_calls[0]
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"input": "weather in Paris?"}
    steps = Steps.list(run.id, thread_id=tid, api_key=KEY).data
    assert [(s.type, s.status) for s in steps] == [("tool_calls", "in_progress")]

    bad = Runs.submit_tool_outputs(run.id, thread_id=tid,
                                   tool_outputs=[{"tool_call_id": "x", "output": "?"}], api_key=KEY)
    assert bad.status_code == 400
    resumed = Runs.submit_tool_outputs(
        run.id, thread_id=tid, tool_outputs=[{"tool_call_id": call.id, "output": "sunny"}],
        api_key=KEY,
    )
    assert resumed.status == "queued"
    done = Runs.wait(run.id, thread_id=tid, api_key=KEY)
    assert done.status == "completed"
    assert done.usage["total_tokens"] > 0
    reply = Messages.list(tid, limit=1, api_key=KEY).data[0]
    assert reply.content[0].text.value == "Echo: weather in Paris? (tools: sunny)"
    steps = Steps.list(run.id, thread_id=tid, order="asc", api_key=KEY).data
    assert [(s.type, s.status) for s in steps] == [
        ("tool_calls", "completed"), ("message_creation", "completed")
    ]
    assert steps[0].step_details.tool_calls[0].function.output == "sunny"
    one = Steps.retrieve(steps[1].id, thread_id=tid, run_id=run.id, api_key=KEY)
    assert one.step_details.message_creation.message_id == reply.id
    assert Steps.retrieve("step_nope", thread_id=tid, run_id=run.id, api_key=KEY).status_code == 404


def test_streaming_run_events_in_dashscope_order(emu: Emulator) -> None:
    """stream=True yields the SDK's typed events: run created … message deltas … completed."""
    tid = emu.seed_thread(messages=[{"role": "user", "content": "tell me a joke"}])
    events = list(Runs.create(tid, assistant_id="asst_1", stream=True, api_key=KEY))
    names = [name for name, _ in events]
    assert names[:3] == ["thread.run.created", "thread.run.queued", "thread.run.in_progress"]
    assert names[-1] == "thread.run.completed"
    assert "thread.message.completed" in names
    deltas = [o.delta.content.text.value for n, o in events if n == "thread.message.delta"]
    assert "".join(deltas) == "Echo: tell me a joke"
    done = events[-1][1]
    assert done.status == "completed"
    assert done.usage["total_tokens"] > 0
    assert Runs.retrieve(done.id, thread_id=tid, api_key=KEY).status == "completed"


def test_streaming_tool_call_then_streaming_submit(emu: Emulator) -> None:
    """A streamed run stops at requires_action; a streamed submit finishes it."""
    tid = emu.seed_thread(messages=[{"role": "user", "content": "weather?"}])
    events = list(Runs.create(tid, assistant_id="asst_1", tools=[WEATHER], stream=True,
                              api_key=KEY))
    assert events[-1][0] == "thread.run.requires_action"
    run = events[-1][1]
    call = run.required_action.submit_tool_outputs.tool_calls[0]
    more = list(Runs.submit_tool_outputs(
        run.id, thread_id=tid, tool_outputs=[{"tool_call_id": call.id, "output": "rain"}],
        stream=True, api_key=KEY,
    ))
    assert more[0][0] == "thread.run.step.completed"
    assert more[-1][0] == "thread.run.completed"


def test_create_thread_and_run_streams_the_thread_first(emu: Emulator) -> None:
    """create_thread_and_run makes the thread and its run; streamed, thread.created comes first."""
    run = Runs.create_thread_and_run(
        assistant_id="asst_1", thread={"messages": [{"role": "user", "content": "a"}]},
        api_key=KEY,
    )
    assert run.status == "queued"
    assert emu.thread_exists(run.thread_id)
    events = list(Runs.create_thread_and_run(
        assistant_id="asst_1", thread={"metadata": {"k": "v"}}, stream=True, api_key=KEY,
    ))
    assert events[0][0] == "thread.created"
    assert events[0][1].metadata == {"k": "v"}
    again = Threads.create_and_run(assistant_id="asst_1", api_key=KEY)
    assert again.status_code == 200


def test_every_operation_takes_faults(emu: Emulator) -> None:
    """A fault on any op name is answered; unknown names are refused up front."""
    for op in OPS:
        emu.fail(op, status=503, times=1)
    tid = emu.seed_thread()
    assert Steps.list("run_x", thread_id=tid, api_key=KEY).status_code == 503
    assert Assistants.list(api_key=KEY).status_code == 503
    assert Messages.update("m", thread_id=tid, metadata={}, api_key=KEY).status_code == 503
    with pytest.raises(ValueError, match="unknown op"):
        emu.fail("thread.delete")


def test_capture_keeps_the_exact_requests() -> None:
    """capture=True records method, path, headers and body bytes of each API request."""
    saved = dashscope.base_http_api_url
    with Emulator(api_key=KEY, capture=True, id_seed=7) as emulator:
        dashscope.base_http_api_url = emulator.url
        try:
            Threads.create(metadata={"a": "b"}, api_key=KEY)
        finally:
            dashscope.base_http_api_url = saved
        (req,) = emulator.requests
    assert (req.method, req.path, req.op) == ("POST", "/api/v1/threads", "threads.create")
    assert json.loads(req.body) == {"metadata": {"a": "b"}}
    assert dict(req.headers)["Authorization"] == f"Bearer {KEY}"
