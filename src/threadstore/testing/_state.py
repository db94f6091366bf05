"""The emulator's in-memory DashScope: threads, messages, runs, steps, assistants.

No HTTP here: :mod:`threadstore.testing.emulator` parses requests and calls
:meth:`DashScopeState.execute` under its lock. An operation returns the JSON
object DashScope would answer, or, for a streaming run, the list of
``(event, object)`` pairs DashScope would send as server-sent events.

Runs: a run is ``queued`` when created and moves on when it is looked at
(retrieve, list, wait) once ``run_delay`` seconds have passed. A run whose
tools include a ``function`` asks for it first (``requires_action`` with one
tool call per function tool); ``submit_tool_outputs`` continues it. Otherwise
it ends in ``run_status``: ``completed`` adds the reply ``"Echo: <last user
message>"`` (with the tool outputs, if any) and token usage. A streaming run
runs to its end (or to ``requires_action``) within the request.
"""

from __future__ import annotations

import copy
import json
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from .faults import DEFAULT_CODES

JSON = dict[str, Any]
Events = list[tuple[str, JSON]]

RUN_STATUSES: tuple[str, ...] = ("completed", "failed", "requires_action", "expired", "cancelled")
"""Values accepted by ``Emulator.run_status``."""

_RUN_NULLS = (
    "started_at",
    "completed_at",
    "failed_at",
    "cancelled_at",
    "expires_at",
    "last_error",
    "required_action",
    "usage",
)
"""Run fields that stay null until the run reaches the matching state."""

_SAMPLING = ("top_p", "top_k", "temperature", "max_tokens")
_ACTIVE = ("queued", "in_progress")


def now_ms() -> int:
    return int(time.time() * 1000)


def tokens(chars: int) -> int:
    """Deterministic token estimate: one token per four characters, at least one."""
    return max(1, (chars + 3) // 4)


class ApiError(Exception):
    """An error answered as DashScope's ``{"code", "message", "request_id"}`` JSON."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code or DEFAULT_CODES.get(status, "Error")
        self.message = message


def json_body(raw: bytes) -> JSON:
    """Parse a request body; empty bodies and the SDK's ``""`` body count as ``{}``."""
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ApiError(400, "request body is not valid JSON") from exc
    if data in ("", None):
        return {}
    if not isinstance(data, dict):
        raise ApiError(400, "request body must be a JSON object")
    return data


def _metadata(value: Any) -> JSON:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ApiError(400, "metadata must be an object")
    return dict(value)


def _list(value: Any, what: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ApiError(400, f"{what} must be a list")
    return list(value)


def _message_fields(item: Any) -> tuple[str, str, JSON, list[str]]:
    """Validate one input message and return (role, text, metadata, file_ids)."""
    if not isinstance(item, dict):
        raise ApiError(400, "each message must be an object")
    role, content = item.get("role", "user"), item.get("content")
    if role not in ("user", "assistant"):
        raise ApiError(400, f"invalid message role: {role!r}")
    if not isinstance(content, str) or not content:
        raise ApiError(400, "message content must be a non-empty string")
    return role, content, _metadata(item.get("metadata")), _list(item.get("file_ids"), "file_ids")


def text_of(message: JSON) -> str:
    return "".join(
        part["text"]["value"] for part in message["content"] if part.get("type") == "text"
    )


def paginate(items: list[JSON], query: dict[str, str]) -> JSON:
    """OpenAI-style paging: ``limit`` 1..100 (20), ``order`` desc|asc, ``after``/``before``."""
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise ApiError(400, "order must be 'asc' or 'desc'")
    try:
        limit = int(query.get("limit", "20"))
    except ValueError as exc:
        raise ApiError(400, "limit must be an integer") from exc
    if not 1 <= limit <= 100:
        raise ApiError(400, "limit must be between 1 and 100")
    seq = items if order == "asc" else items[::-1]
    position = {item["id"]: i for i, item in enumerate(seq)}
    after, before = query.get("after"), query.get("before")
    for cursor in (after, before):
        if cursor is not None and cursor not in position:
            raise ApiError(400, f"unknown cursor: {cursor}")
    start = position[after] + 1 if after is not None else 0
    end = position[before] if before is not None else len(seq)
    window = seq[start:end]
    # `before` alone asks for the page just before the cursor.
    page = window[-limit:] if before is not None and after is None else window[:limit]
    return {
        "object": "list",
        "data": page,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
        "has_more": len(window) > limit,
    }


def _function_tools(tools: list[Any]) -> list[str]:
    names = []
    for tool in tools:
        if isinstance(tool, dict) and tool.get("type") == "function":
            function = tool.get("function") or {}
            names.append(str(function.get("name") or "function"))
    return names


@dataclass
class Run:
    obj: JSON
    started: float  # time.monotonic() when it was (re)queued, for run_delay
    echo: str  # text of the last user message when the run was created
    prompt_chars: int
    functions: list[str]
    steps: list[JSON] = field(default_factory=list)
    step_index: dict[str, JSON] = field(default_factory=dict)
    tool_outputs: list[str] | None = None  # set once submit_tool_outputs continued it


@dataclass
class Thread:
    obj: JSON
    workspace: str | None
    messages: list[JSON] = field(default_factory=list)
    message_index: dict[str, JSON] = field(default_factory=dict)
    runs: dict[str, Run] = field(default_factory=dict)


@dataclass
class Request:
    op: str
    workspace: str | None
    thread_id: str | None
    item_id: str | None
    sub_id: str | None
    query: dict[str, str]
    body: bytes


class DashScopeState:
    """The emulated service's objects and operations; the caller holds the lock.

    ``id_seed`` makes ids reproducible (two emulators given the same requests
    hand out the same ids), for tests that compare the requests of two runs.
    """

    def __init__(self, *, id_seed: int | None = None) -> None:
        self.threads: dict[str, Thread] = {}
        self.assistants: dict[str, tuple[JSON, str | None]] = {}
        self.run_delay = 0.0
        self.run_status = "completed"
        self._id_seed = id_seed
        self._ids = random.Random(id_seed)
        self._ops: dict[str, Any] = {
            "threads.create": self._threads_create,
            "threads.retrieve": self._threads_retrieve,
            "threads.update": self._threads_update,
            "threads.delete": self._threads_delete,
            "threads.create_and_run": self._threads_create_and_run,
            "messages.create": self._messages_create,
            "messages.list": self._messages_list,
            "messages.retrieve": self._messages_retrieve,
            "messages.update": self._messages_update,
            "runs.create": self._runs_create,
            "runs.retrieve": self._runs_retrieve,
            "runs.list": self._runs_list,
            "runs.update": self._runs_update,
            "runs.cancel": self._runs_cancel,
            "runs.submit_tool_outputs": self._runs_submit_tool_outputs,
            "steps.list": self._steps_list,
            "steps.retrieve": self._steps_retrieve,
            "assistants.create": self._assistants_create,
            "assistants.retrieve": self._assistants_retrieve,
            "assistants.list": self._assistants_list,
            "assistants.update": self._assistants_update,
            "assistants.delete": self._assistants_delete,
        }

    def clear(self) -> None:
        self.threads.clear()
        self.assistants.clear()
        self._ids.seed(self._id_seed)

    def execute(self, req: Request) -> JSON | Events:
        """Run one operation; the result is a private copy (safe to serialize unlocked)."""
        result: JSON | Events = self._ops[req.op](req)
        return copy.deepcopy(result)

    def new_id(self, prefix: str) -> str:
        if self._id_seed is None:
            return f"{prefix}_{uuid.uuid4().hex}"
        return f"{prefix}_{self._ids.getrandbits(128):032x}"

    # ------------------------------------------------------------------ threads

    def thread(self, req: Request) -> Thread:
        thread = self.threads.get(req.thread_id or "")
        if thread is None or thread.workspace != req.workspace:
            raise ApiError(404, f"thread not found: {req.thread_id}")
        return thread

    def create_thread(self, metadata: Any, messages: Any, workspace: str | None) -> Thread:
        meta = _metadata(metadata)
        if messages is not None and not isinstance(messages, list):
            raise ApiError(400, "messages must be a list")
        inputs = [_message_fields(m) for m in messages or []]
        tid = self.new_id("thread")
        thread = Thread(
            obj={"id": tid, "object": "thread", "created_at": now_ms(), "metadata": meta},
            workspace=workspace,
        )
        for role, text, msg_meta, file_ids in inputs:
            self.add_message(thread, role, text, metadata=msg_meta, file_ids=file_ids)
        self.threads[tid] = thread
        return thread

    def add_message(
        self,
        thread: Thread,
        role: str,
        text: str,
        *,
        metadata: JSON | None = None,
        file_ids: list[str] | None = None,
        run: JSON | None = None,
    ) -> JSON:
        message: JSON = {
            "id": self.new_id("message"),
            "object": "thread.message",
            "created_at": now_ms(),
            "thread_id": thread.obj["id"],
            "role": role,
            "content": [{"type": "text", "text": {"value": text, "annotations": []}}],
            "metadata": metadata or {},
            "file_ids": file_ids or [],
            "assistant_id": run["assistant_id"] if run else None,
            "run_id": run["id"] if run else None,
        }
        thread.messages.append(message)
        thread.message_index[message["id"]] = message
        return message

    def _threads_create(self, req: Request) -> JSON:
        body = json_body(req.body)
        thread = self.create_thread(body.get("metadata"), body.get("messages"), req.workspace)
        req.thread_id = thread.obj["id"]
        return thread.obj

    def _threads_retrieve(self, req: Request) -> JSON:
        return self.thread(req).obj

    def _threads_update(self, req: Request) -> JSON:
        thread = self.thread(req)
        body = json_body(req.body)
        if body.get("metadata") is not None:  # null keeps the current metadata
            thread.obj["metadata"] = _metadata(body["metadata"])
        return thread.obj

    def _threads_delete(self, req: Request) -> JSON:
        thread = self.thread(req)
        del self.threads[thread.obj["id"]]
        return {"id": thread.obj["id"], "object": "thread.deleted", "deleted": True}

    def _threads_create_and_run(self, req: Request) -> JSON | Events:
        body = json_body(req.body)
        spec = body.get("thread") or {}
        if not isinstance(spec, dict):
            raise ApiError(400, "thread must be an object")
        self._check_assistant_id(body)
        thread = self.create_thread(spec.get("metadata"), spec.get("messages"), req.workspace)
        req.thread_id = thread.obj["id"]
        run = self._new_run(thread, body, req.workspace)
        if body.get("stream"):
            events: Events = [("thread.created", thread.obj)]
            return events + self._stream_run(thread, run, created=True)
        return run.obj

    # ------------------------------------------------------------------ messages

    def _message(self, req: Request) -> JSON:
        message = self.thread(req).message_index.get(req.item_id or "")
        if message is None:
            raise ApiError(404, f"message not found: {req.item_id}")
        return message

    def _messages_create(self, req: Request) -> JSON:
        thread = self.thread(req)
        role, text, metadata, file_ids = _message_fields(json_body(req.body))
        return self.add_message(thread, role, text, metadata=metadata, file_ids=file_ids)

    def _messages_list(self, req: Request) -> JSON:
        return paginate(self.thread(req).messages, req.query)

    def _messages_retrieve(self, req: Request) -> JSON:
        return self._message(req)

    def _messages_update(self, req: Request) -> JSON:
        message = self._message(req)
        body = json_body(req.body)
        if body.get("metadata") is not None:
            message["metadata"] = _metadata(body["metadata"])
        return message

    # ------------------------------------------------------------------ runs

    @staticmethod
    def _check_assistant_id(body: JSON) -> str:
        assistant_id = body.get("assistant_id")
        if not isinstance(assistant_id, str) or not assistant_id:
            raise ApiError(400, "assistant_id is required")
        return assistant_id

    def _new_run(self, thread: Thread, body: JSON, workspace: str | None) -> Run:
        assistant_id = self._check_assistant_id(body)
        known = self.assistants.get(assistant_id)
        assistant = known[0] if known is not None and known[1] == workspace else {}
        instructions = body.get("instructions") or assistant.get("instructions") or ""
        if body.get("additional_instructions"):
            instructions = f"{instructions}\n{body['additional_instructions']}".strip()
        tools = _list(body.get("tools"), "tools") or list(assistant.get("tools") or [])
        run: JSON = {
            "id": self.new_id("run"),
            "object": "thread.run",
            "thread_id": thread.obj["id"],
            "assistant_id": assistant_id,
            "model": body.get("model") or assistant.get("model") or "qwen-max",
            "instructions": instructions,
            "tools": tools,
            "metadata": _metadata(body.get("metadata")),
            "file_ids": [],
            "status": "queued",
            "created_at": now_ms(),
            **dict.fromkeys(_RUN_NULLS),
        }
        for key in _SAMPLING:
            if body.get(key) is not None:
                run[key] = body[key]
        users = [m for m in thread.messages if m["role"] == "user"]
        entry = Run(
            obj=run,
            started=time.monotonic(),
            echo=text_of(users[-1]) if users else "",
            prompt_chars=len(str(instructions)) + sum(len(text_of(m)) for m in thread.messages),
            functions=_function_tools(tools),
        )
        thread.runs[run["id"]] = entry
        return entry

    def _run(self, req: Request, *, advance: bool = True) -> tuple[Thread, Run]:
        thread = self.thread(req)
        run = thread.runs.get(req.item_id or "")
        if run is None:
            raise ApiError(404, f"run not found: {req.item_id}")
        if advance:
            self.advance(thread, run)
        return thread, run

    def _runs_create(self, req: Request) -> JSON | Events:
        thread = self.thread(req)
        body = json_body(req.body)
        run = self._new_run(thread, body, req.workspace)
        if body.get("stream"):
            return self._stream_run(thread, run, created=True)
        return run.obj

    def _runs_retrieve(self, req: Request) -> JSON:
        return self._run(req)[1].obj

    def _runs_list(self, req: Request) -> JSON:
        thread = self.thread(req)
        for run in thread.runs.values():
            self.advance(thread, run)
        return paginate([run.obj for run in thread.runs.values()], req.query)

    def _runs_update(self, req: Request) -> JSON:
        _, run = self._run(req, advance=False)
        body = json_body(req.body)
        if body.get("metadata") is not None:
            run.obj["metadata"] = _metadata(body["metadata"])
        return run.obj

    def _runs_cancel(self, req: Request) -> JSON:
        _, run = self._run(req, advance=False)
        obj = run.obj
        if obj["status"] not in (*_ACTIVE, "requires_action"):
            raise ApiError(400, f"cannot cancel a run that is {obj['status']}")
        obj["status"] = "cancelled"
        obj["cancelled_at"] = now_ms()
        obj["required_action"] = None
        for step in run.steps:
            if step["status"] == "in_progress":
                step["status"] = "cancelled"
                step["cancelled_at"] = obj["cancelled_at"]
        return obj

    def _runs_submit_tool_outputs(self, req: Request) -> JSON | Events:
        thread, run = self._run(req, advance=False)
        obj = run.obj
        if obj["status"] != "requires_action":
            raise ApiError(400, f"run {obj['id']} is {obj['status']}, not requires_action")
        body = json_body(req.body)
        outputs = _list(body.get("tool_outputs"), "tool_outputs")
        calls = obj["required_action"]["submit_tool_outputs"]["tool_calls"]
        by_id: dict[str, str] = {}
        for item in outputs:
            if not isinstance(item, dict) or not isinstance(item.get("output"), str):
                raise ApiError(400, "each tool output needs a string 'output'")
            by_id[str(item.get("tool_call_id"))] = item["output"]
        missing = [c["id"] for c in calls if c["id"] not in by_id]
        if missing:
            raise ApiError(400, f"missing tool outputs for {missing}")
        step = next(
            s for s in run.steps if s["type"] == "tool_calls" and s["status"] == "in_progress"
        )
        for call in step["step_details"]["tool_calls"]:
            call["function"]["output"] = by_id.get(call["id"])
        step["status"] = "completed"
        step["completed_at"] = now_ms()
        run.tool_outputs = [by_id[c["id"]] for c in calls]
        obj["required_action"] = None
        obj["status"] = "queued"
        run.started = time.monotonic()
        if body.get("stream"):
            events: Events = [("thread.run.step.completed", copy.deepcopy(step))]
            return events + self._stream_run(thread, run, created=False)
        return obj

    def _step(self, run: Run, status: str, details: JSON) -> JSON:
        obj = run.obj
        step: JSON = {
            "id": self.new_id("step"),
            "object": "thread.run.step",
            "type": details["type"],
            "status": status,
            "run_id": obj["id"],
            "thread_id": obj["thread_id"],
            "assistant_id": obj["assistant_id"],
            "created_at": now_ms(),
            "completed_at": None,
            "cancelled_at": None,
            "failed_at": None,
            "expired_at": None,
            "last_error": None,
            "metadata": {},
            "step_details": details,
            "usage": None,
        }
        run.steps.append(step)
        run.step_index[step["id"]] = step
        return step

    def advance(self, thread: Thread, run: Run) -> Events:
        """Move a pending run on once ``run_delay`` passed; returns the events that happened.

        A run ends (or asks for tools) exactly once per turn.
        """
        obj = run.obj
        if obj["status"] not in _ACTIVE:
            return []
        events: Events = []
        now = now_ms()
        obj["started_at"] = obj["started_at"] or now
        if obj["status"] == "queued":
            obj["status"] = "in_progress"
            events.append(("thread.run.in_progress", copy.deepcopy(obj)))
        if time.monotonic() - run.started < self.run_delay:
            return events
        wants_tools = run.functions or self.run_status == "requires_action"
        if wants_tools and run.tool_outputs is None:
            names = run.functions or ["emulated_tool"]
            calls = [
                {
                    "id": self.new_id("call"),
                    "type": "function",
                    "function": {"name": name, "arguments": json.dumps({"input": run.echo})},
                }
                for name in names
            ]
            step = self._step(
                run,
                "in_progress",
                {"type": "tool_calls", "tool_calls": copy.deepcopy(calls)},
            )
            events.append(("thread.run.step.created", copy.deepcopy(step)))
            obj["status"] = "requires_action"
            obj["required_action"] = {
                "type": "submit_tool_outputs",
                "submit_tool_outputs": {"tool_calls": calls},
            }
            events.append(("thread.run.requires_action", copy.deepcopy(obj)))
            return events
        status = "completed" if self.run_status == "requires_action" else self.run_status
        if status == "completed":
            events += self._complete(thread, run, now)
            return events
        obj["status"] = status
        if status == "failed":
            obj["failed_at"] = now
            obj["last_error"] = {"code": "server_error", "message": "emulated run failure"}
        elif status == "expired":
            obj["expires_at"] = now
        else:
            obj["cancelled_at"] = now
        events.append((f"thread.run.{status}", copy.deepcopy(obj)))
        return events

    def _complete(self, thread: Thread, run: Run, now: int) -> Events:
        obj = run.obj
        reply = f"Echo: {run.echo}"
        if run.tool_outputs:
            reply += " (tools: " + "; ".join(run.tool_outputs) + ")"
        message = self.add_message(thread, "assistant", reply, run=obj)
        prompt, completion = tokens(run.prompt_chars), tokens(len(reply))
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        step = self._step(
            run,
            "in_progress",
            {"type": "message_creation", "message_creation": {"message_id": message["id"]}},
        )
        events: Events = [
            ("thread.run.step.created", copy.deepcopy(step)),
            ("thread.run.step.in_progress", copy.deepcopy(step)),
        ]
        empty = {**message, "status": "in_progress", "content": []}
        events.append(("thread.message.created", copy.deepcopy(empty)))
        events.append(("thread.message.in_progress", copy.deepcopy(empty)))
        words = reply.split(" ")
        for i, word in enumerate(words):
            chunk = word if i == len(words) - 1 else word + " "
            delta = {
                "id": message["id"],
                "object": "thread.message.delta",
                "delta": {
                    "role": "assistant",
                    "content": [
                        {"index": 0, "type": "text", "text": {"value": chunk, "annotations": []}}
                    ],
                },
            }
            events.append(("thread.message.delta", delta))
        events.append(("thread.message.completed", {**message, "status": "completed"}))
        step.update(status="completed", completed_at=now, usage=dict(usage))
        events.append(("thread.run.step.completed", copy.deepcopy(step)))
        obj.update(status="completed", completed_at=now, usage=usage)
        events.append(("thread.run.completed", copy.deepcopy(obj)))
        return events

    def _stream_run(self, thread: Thread, run: Run, *, created: bool) -> Events:
        """The whole run as events: it is not subject to ``run_delay``."""
        events: Events = []
        if created:
            events.append(("thread.run.created", copy.deepcopy(run.obj)))
        events.append(("thread.run.queued", copy.deepcopy(run.obj)))
        delay, self.run_delay = self.run_delay, 0.0
        try:
            events += self.advance(thread, run)
        finally:
            self.run_delay = delay
        return events

    def _steps_list(self, req: Request) -> JSON:
        return paginate(self._run(req)[1].steps, req.query)

    def _steps_retrieve(self, req: Request) -> JSON:
        _, run = self._run(req)
        step = run.step_index.get(req.sub_id or "")
        if step is None:
            raise ApiError(404, f"step not found: {req.sub_id}")
        return step

    # ------------------------------------------------------------------ assistants

    def _assistant(self, req: Request) -> JSON:
        found = self.assistants.get(req.item_id or "")
        if found is None or found[1] != req.workspace:
            raise ApiError(404, f"assistant not found: {req.item_id}")
        return found[0]

    @staticmethod
    def _assistant_fields(body: JSON, target: JSON) -> None:
        for key in ("model", "name", "description", "instructions"):
            if body.get(key) is not None:
                if not isinstance(body[key], str):
                    raise ApiError(400, f"{key} must be a string")
                target[key] = body[key]
        if body.get("tools") is not None:
            target["tools"] = _list(body["tools"], "tools")
        if body.get("file_ids") is not None:
            target["file_ids"] = _list(body["file_ids"], "file_ids")
        if body.get("metadata") is not None:
            target["metadata"] = _metadata(body["metadata"])
        for key in _SAMPLING:
            if body.get(key) is not None:
                target[key] = body[key]

    def _assistants_create(self, req: Request) -> JSON:
        body = json_body(req.body)
        if not isinstance(body.get("model"), str) or not body["model"]:
            raise ApiError(400, "model is required")
        assistant: JSON = {
            "id": self.new_id("asst"),
            "object": "assistant",
            "created_at": now_ms(),
            "model": body["model"],
            "name": None,
            "description": None,
            "instructions": None,
            "tools": [],
            "file_ids": [],
            "metadata": {},
        }
        self._assistant_fields(body, assistant)
        self.assistants[assistant["id"]] = (assistant, req.workspace)
        return assistant

    def _assistants_retrieve(self, req: Request) -> JSON:
        return self._assistant(req)

    def _assistants_list(self, req: Request) -> JSON:
        mine = [a for a, ws in self.assistants.values() if ws == req.workspace]
        return paginate(mine, req.query)

    def _assistants_update(self, req: Request) -> JSON:
        assistant = self._assistant(req)
        self._assistant_fields(json_body(req.body), assistant)
        return assistant

    def _assistants_delete(self, req: Request) -> JSON:
        assistant = self._assistant(req)
        del self.assistants[assistant["id"]]
        return {"id": assistant["id"], "object": "assistant.deleted", "deleted": True}
