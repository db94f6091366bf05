"""A stdlib-only HTTP emulator of DashScope's Assistant API (threads, messages, runs).

It answers the requests the real ``dashscope`` SDK sends, keeps all state in memory,
and lets tests inject failures, latency and slow runs, then count what was called::

    import dashscope
    from dashscope import Threads
    from threadstore.testing.emulator import Emulator

    with Emulator(api_key="test-key") as emu:
        dashscope.base_http_api_url = emu.url          # or base_address=emu.url per call
        thread = Threads.create(metadata={"user": "u1"}, api_key="test-key")
        emu.fail("threads.delete", status=500, times=1)  # the next delete fails ...
        Threads.delete(thread.id, api_key="test-key")    # ... status_code == 500
        Threads.delete(thread.id, api_key="test-key")    # deleted
        assert emu.count("threads.delete", status=200) == 1

A separately running emulator (``threadstore emulator``) is steered over HTTP; these
admin routes need no key and are not counted::

    POST   /_emulator/faults    {"op": "threads.delete", "status": 429, "retry_after": 1}
    DELETE /_emulator/faults
    GET    /_emulator/stats     {"counts": {op: {status: n}}, "threads": n, "deletes_by_thread": {}}
    POST   /_emulator/reset     clear state, faults and counters
    POST   /_emulator/latency   {"seconds": 0.05, "op": null}
    POST   /_emulator/runs      {"status": "failed", "delay": 0.5}
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import json
import random
import re
import select
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = ["OPS", "RUN_STATUSES", "Emulator", "Fault"]

JSON = dict[str, Any]

OPS: tuple[str, ...] = (
    "threads.create",
    "threads.retrieve",
    "threads.update",
    "threads.delete",
    "messages.create",
    "messages.list",
    "messages.retrieve",
    "runs.create",
    "runs.retrieve",
    "runs.list",
    "steps.list",
)
"""Operation names used by faults, latency and counters."""

RUN_STATUSES: tuple[str, ...] = ("completed", "failed", "requires_action", "expired", "cancelled")
"""Values accepted by :attr:`Emulator.run_status`."""

API_PREFIX = "/api/v1/"
ADMIN_PREFIX = "/_emulator/"
DROPPED = 0
"""Status recorded in the counters for requests that got no HTTP answer (drop/hang)."""

_DEFAULT_CODES: dict[int, str] = {
    400: "InvalidParameter",
    401: "InvalidApiKey",
    403: "AccessDenied",
    404: "NotFound",
    408: "RequestTimeOut",
    429: "Throttling",
    500: "InternalError",
    502: "BadGateway",
    503: "ServiceUnavailable",
    504: "GatewayTimeout",
}

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

_TID = r"(?P<tid>[^/]+)"
_ITEM = r"(?P<item>[^/]+)"
_ROUTES: tuple[tuple[str, re.Pattern[str], str], ...] = tuple(
    (method, re.compile(pattern), op)
    for method, pattern, op in (
        ("POST", r"threads", "threads.create"),
        ("GET", rf"threads/{_TID}", "threads.retrieve"),
        ("POST", rf"threads/{_TID}", "threads.update"),
        ("DELETE", rf"threads/{_TID}", "threads.delete"),
        ("POST", rf"threads/{_TID}/messages", "messages.create"),
        ("GET", rf"threads/{_TID}/messages", "messages.list"),
        ("GET", rf"threads/{_TID}/messages/{_ITEM}", "messages.retrieve"),
        ("POST", rf"threads/{_TID}/runs", "runs.create"),
        ("GET", rf"threads/{_TID}/runs", "runs.list"),
        ("GET", rf"threads/{_TID}/runs/{_ITEM}", "runs.retrieve"),
        ("GET", rf"threads/{_TID}/runs/{_ITEM}/steps", "steps.list"),
    )
)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def _tokens(chars: int) -> int:
    """Deterministic token estimate: one token per four characters, at least one."""
    return max(1, (chars + 3) // 4)


class _ApiError(Exception):
    """An error answered as DashScope's ``{"code", "message", "request_id"}`` JSON."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code or _DEFAULT_CODES.get(status, "Error")
        self.message = message


def _json_body(raw: bytes) -> JSON:
    """Parse a request body; empty bodies and the SDK's ``""`` body count as ``{}``."""
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise _ApiError(400, "request body is not valid JSON") from exc
    if data in ("", None):
        return {}
    if not isinstance(data, dict):
        raise _ApiError(400, "request body must be a JSON object")
    return data


def _metadata(value: Any) -> JSON:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _ApiError(400, "metadata must be an object")
    return dict(value)


def _message_fields(item: Any) -> tuple[str, str, JSON, list[str]]:
    """Validate one input message and return (role, text, metadata, file_ids)."""
    if not isinstance(item, dict):
        raise _ApiError(400, "each message must be an object")
    role, content = item.get("role", "user"), item.get("content")
    if role not in ("user", "assistant"):
        raise _ApiError(400, f"invalid message role: {role!r}")
    if not isinstance(content, str) or not content:
        raise _ApiError(400, "message content must be a non-empty string")
    file_ids = item.get("file_ids") or []
    if not isinstance(file_ids, list):
        raise _ApiError(400, "file_ids must be a list")
    return role, content, _metadata(item.get("metadata")), list(file_ids)


def _text_of(message: JSON) -> str:
    return "".join(
        part["text"]["value"] for part in message["content"] if part.get("type") == "text"
    )


def _paginate(items: list[JSON], query: dict[str, str]) -> JSON:
    """OpenAI-style paging: ``limit`` 1..100 (20), ``order`` desc|asc, ``after``/``before``."""
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise _ApiError(400, "order must be 'asc' or 'desc'")
    try:
        limit = int(query.get("limit", "20"))
    except ValueError as exc:
        raise _ApiError(400, "limit must be an integer") from exc
    if not 1 <= limit <= 100:
        raise _ApiError(400, "limit must be between 1 and 100")
    seq = items if order == "asc" else items[::-1]
    position = {item["id"]: i for i, item in enumerate(seq)}
    after, before = query.get("after"), query.get("before")
    for cursor in (after, before):
        if cursor is not None and cursor not in position:
            raise _ApiError(400, f"unknown cursor: {cursor}")
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


@dataclass(eq=False)
class Fault:
    """One injected failure rule, created by :meth:`Emulator.fail`.

    ``hits`` counts the requests it affected; ``cancel()`` disables it.
    """

    id: str
    op: str
    status: int | None = 500
    code: str | None = None
    message: str | None = None
    times: int | None = None
    rate: float | None = None
    thread_id: str | None = None
    workspace: str | None = None
    retry_after: float | None = None
    latency: float | None = None
    hang: bool = False
    drop: bool = False
    hits: int = 0
    cancelled: bool = False

    def __post_init__(self) -> None:
        if self.op != "*" and self.op not in OPS:
            raise ValueError(f"unknown op {self.op!r}; expected one of {OPS} or '*'")
        if self.status is not None and not 100 <= self.status <= 599:
            raise ValueError(f"invalid HTTP status {self.status}")
        if self.times is not None and self.times < 1:
            raise ValueError("times must be >= 1")
        if self.rate is not None and not 0.0 <= self.rate <= 1.0:
            raise ValueError("rate must be within [0, 1]")
        if self.hang and self.drop:
            raise ValueError("hang and drop are mutually exclusive")
        if self.status is not None:
            self.code = self.code or _DEFAULT_CODES.get(self.status, "Error")
            self.message = self.message or f"injected fault: {self.code}"

    @property
    def active(self) -> bool:
        """False once cancelled or once ``times`` requests were affected."""
        return not self.cancelled and (self.times is None or self.hits < self.times)

    def cancel(self) -> None:
        """Stop applying this fault."""
        self.cancelled = True

    def _matches(self, op: str, thread_id: str | None, workspace: str | None) -> bool:
        return (
            self.active
            and self.op in ("*", op)
            and (self.thread_id is None or self.thread_id == thread_id)
            and (self.workspace is None or self.workspace == workspace)
        )


@dataclass
class _Run:
    obj: JSON
    started: float  # time.monotonic() at creation, for run_delay
    echo: str  # text of the last user message when the run was created
    prompt_chars: int
    steps: list[JSON] = field(default_factory=list)


@dataclass
class _Thread:
    obj: JSON
    workspace: str | None
    messages: list[JSON] = field(default_factory=list)
    message_index: dict[str, JSON] = field(default_factory=dict)
    runs: dict[str, _Run] = field(default_factory=dict)


@dataclass
class _Request:
    op: str
    workspace: str | None
    thread_id: str | None
    item_id: str | None
    query: dict[str, str]
    body: bytes


class Emulator:
    """In-memory DashScope Assistant API served over HTTP on a background thread.

    ``api_key=None`` disables the bearer check; ``latency`` is added to every request;
    ``seed`` makes ``rate=`` faults deterministic; ``verbose`` logs each request to stderr.
    """

    def __init__(
        self,
        api_key: str | None = "test-key",
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        latency: float = 0.0,
        seed: int = 0,
        verbose: bool = False,
    ) -> None:
        self.api_key = api_key
        self.host = host
        self.verbose = verbose
        self.run_delay = 0.0
        """Seconds after creation before a run becomes terminal (``in_progress`` until then)."""
        self._requested_port = port
        self._seed = seed
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._latency = latency
        self._op_latency: dict[str, float] = {}
        self._run_status = "completed"
        self._threads: dict[str, _Thread] = {}
        self._faults: list[Fault] = []
        self._fault_seq = 0
        self._calls: list[tuple[str, str | None, int]] = []
        self._counts: dict[str, dict[int, int]] = {}
        self._deletes: dict[str, int] = {}
        self._connections: set[socket.socket] = set()
        self._server: _Server | None = None
        self._loop_thread: threading.Thread | None = None
        self._handlers: dict[str, Callable[[_Request], JSON]] = {
            "threads.create": self._threads_create,
            "threads.retrieve": self._threads_retrieve,
            "threads.update": self._threads_update,
            "threads.delete": self._threads_delete,
            "messages.create": self._messages_create,
            "messages.list": self._messages_list,
            "messages.retrieve": self._messages_retrieve,
            "runs.create": self._runs_create,
            "runs.retrieve": self._runs_retrieve,
            "runs.list": self._runs_list,
            "steps.list": self._steps_list,
        }

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Emulator:
        """Serve in a background daemon thread and return ``self``."""
        server = self._bind()
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"dashscope-emulator:{self.port}",
            daemon=True,
        )
        self._loop_thread = thread
        thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in the calling thread until :meth:`stop` or Ctrl-C."""
        server = self._bind()
        self._loop_thread = threading.current_thread()
        try:
            server.serve_forever(poll_interval=0.05)
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    def stop(self) -> None:
        """Stop serving; releases hanging/slow requests and closes open connections."""
        self._stopping.set()
        server, loop = self._server, self._loop_thread
        self._server = self._loop_thread = None
        if server is None:
            return
        if loop is not None and loop is not threading.current_thread():
            server.shutdown()
            loop.join(timeout=2.0)
        server.server_close()
        with self._lock:
            connections = list(self._connections)
            self._connections.clear()
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _bind(self) -> _Server:
        if self._server is not None:
            raise RuntimeError("emulator already started")
        self._stopping.clear()
        self._server = _Server((self.host, self._requested_port), self)
        return self._server

    @property
    def port(self) -> int:
        """The bound TCP port (useful with ``port=0``)."""
        if self._server is None:
            raise RuntimeError("emulator is not running")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """Base URL for ``dashscope.base_http_api_url`` / ``base_address=``."""
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host  # noqa: S104
        return f"http://{host}:{self.port}{API_PREFIX.rstrip('/')}"

    # ------------------------------------------------------------------ steering
    def fail(
        self,
        op: str,
        *,
        status: int | None = 500,
        code: str | None = None,
        message: str | None = None,
        times: int | None = None,
        rate: float | None = None,
        thread_id: str | None = None,
        workspace: str | None = None,
        retry_after: float | None = None,
        latency: float | None = None,
        hang: bool = False,
        drop: bool = False,
    ) -> Fault:
        """Inject a fault for ``op`` (or ``"*"``); the first matching active fault wins.

        ``code``/``message`` default from ``status`` (429 -> ``Throttling`` ...).
        ``status=None`` without ``hang``/``drop`` only adds ``latency``.
        """
        with self._lock:
            self._fault_seq += 1
            fault = Fault(
                f"fault_{self._fault_seq}",
                op,
                status=status,
                code=code,
                message=message,
                times=times,
                rate=rate,
                thread_id=thread_id,
                workspace=workspace,
                retry_after=retry_after,
                latency=latency,
                hang=hang,
                drop=drop,
            )
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        """Cancel and forget every fault."""
        with self._lock:
            for fault in self._faults:
                fault.cancel()
            self._faults.clear()

    def set_latency(self, seconds: float, op: str | None = None) -> None:
        """Set the global base latency, or an extra latency for one op (added to it)."""
        if op is not None and op not in OPS:
            raise ValueError(f"unknown op {op!r}")
        with self._lock:
            if op is None:
                self._latency = max(0.0, seconds)
            else:
                self._op_latency[op] = max(0.0, seconds)

    @property
    def run_status(self) -> str:
        """Status that runs end in: completed, failed, requires_action, expired, cancelled."""
        return self._run_status

    @run_status.setter
    def run_status(self, value: str) -> None:
        if value not in RUN_STATUSES:
            raise ValueError(f"run_status must be one of {RUN_STATUSES}")
        self._run_status = value

    def reset(self) -> None:
        """Forget all threads, faults and counters (latency and run settings are kept)."""
        self.clear_faults()
        with self._lock:
            self._threads.clear()
            self._rng.seed(self._seed)
        self.reset_counters()

    # ------------------------------------------------------------------ counters
    def count(
        self, op: str | None = None, thread_id: str | None = None, status: int | None = None
    ) -> int:
        """Requests answered, filtered by op, thread id and HTTP status (0 = drop/hang)."""
        with self._lock:
            return sum(
                1
                for o, t, s in self._calls
                if (op is None or o == op)
                and (thread_id is None or t == thread_id)
                and (status is None or s == status)
            )

    @property
    def calls(self) -> tuple[tuple[str, str | None, int], ...]:
        """Snapshot of ``(op, thread_id, status)`` per request, oldest first."""
        with self._lock:
            return tuple(self._calls)

    def reset_counters(self) -> None:
        """Clear ``calls``, ``count()`` and the stats counters."""
        with self._lock:
            self._calls.clear()
            self._counts.clear()
            self._deletes.clear()

    def stats(self) -> JSON:
        """The ``GET /_emulator/stats`` document."""
        with self._lock:
            return {
                "counts": {
                    op: {str(status): n for status, n in sorted(by.items())}
                    for op, by in self._counts.items()
                },
                "threads": len(self._threads),
                "deletes_by_thread": dict(self._deletes),
            }

    # ------------------------------------------------------------------ state
    def thread_exists(self, thread_id: str, workspace: str | None = None) -> bool:
        """Whether the thread exists in ``workspace`` (None = the no-workspace scope)."""
        with self._lock:
            thread = self._threads.get(thread_id)
            return thread is not None and thread.workspace == workspace

    def thread_ids(self, workspace: str | None = None) -> list[str]:
        """Ids of the threads in ``workspace`` (None = the no-workspace scope), oldest first."""
        with self._lock:
            return [tid for tid, t in self._threads.items() if t.workspace == workspace]

    def seed_thread(
        self,
        metadata: JSON | None = None,
        messages: list[JSON] | None = None,
        workspace: str | None = None,
    ) -> str:
        """Create a thread directly (uncounted); ``messages`` are ``{"role", "content"}``."""
        with self._lock:
            try:
                return self._create_thread(metadata, messages, workspace)
            except _ApiError as exc:
                raise ValueError(exc.message) from exc

    def messages_of(self, thread_id: str, workspace: str | None = None) -> list[JSON]:
        """Copies of the thread's stored messages, oldest first (KeyError if absent)."""
        with self._lock:
            thread = self._threads.get(thread_id)
            if thread is None or thread.workspace != workspace:
                raise KeyError(thread_id)
            return copy.deepcopy(thread.messages)

    # ------------------------------------------------------------------ request plumbing
    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def _pick_fault(self, op: str, thread_id: str | None, workspace: str | None) -> Fault | None:
        with self._lock:
            self._faults = [f for f in self._faults if f.active]
            for fault in self._faults:
                if not fault._matches(op, thread_id, workspace):
                    continue
                if fault.rate is not None and self._rng.random() >= fault.rate:
                    continue
                fault.hits += 1
                return fault
            return None

    def _base_latency(self, op: str) -> float:
        with self._lock:
            return self._latency + self._op_latency.get(op, 0.0)

    def _record(self, op: str, thread_id: str | None, status: int) -> None:
        with self._lock:
            self._calls.append((op, thread_id, status))
            by_status = self._counts.setdefault(op, {})
            by_status[status] = by_status.get(status, 0) + 1
            if op == "threads.delete" and status == 200 and thread_id:
                self._deletes[thread_id] = self._deletes.get(thread_id, 0) + 1

    def _execute(self, req: _Request) -> JSON:
        """Run one API operation under the state lock; returns a private copy."""
        with self._lock:
            return copy.deepcopy(self._handlers[req.op](req))

    def _admin(self, method: str, path: str, raw: bytes) -> JSON:
        route = path[len(ADMIN_PREFIX) :].strip("/")
        if route == "faults" and method == "POST":
            body = _json_body(raw)
            op = body.pop("op", None)
            unknown = set(body) - _FAULT_KWARGS
            if not isinstance(op, str) or unknown:
                raise _ApiError(400, f"need a string 'op'; unknown keys: {sorted(unknown)}")
            try:
                return {"id": self.fail(op, **body).id}
            except (TypeError, ValueError) as exc:
                raise _ApiError(400, str(exc)) from exc
        if route == "faults" and method == "DELETE":
            self.clear_faults()
            return {"cleared": True}
        if route == "stats" and method == "GET":
            return self.stats()
        if route == "reset" and method == "POST":
            self.reset()
            return {"reset": True}
        if route == "latency" and method == "POST":
            body = _json_body(raw)
            try:
                self.set_latency(float(body.get("seconds", 0.0)), body.get("op"))
            except (TypeError, ValueError) as exc:
                raise _ApiError(400, str(exc)) from exc
            return {"ok": True}
        if route == "runs" and method == "POST":
            body = _json_body(raw)
            try:
                if "status" in body:
                    self.run_status = body["status"]
                if "delay" in body:
                    self.run_delay = float(body["delay"])
            except (TypeError, ValueError) as exc:
                raise _ApiError(400, str(exc)) from exc
            return {"status": self.run_status, "delay": self.run_delay}
        raise _ApiError(404, f"no admin route {method} {path}")

    # ------------------------------------------------------------------ operations (lock held)
    def _thread(self, req: _Request) -> _Thread:
        thread = self._threads.get(req.thread_id or "")
        if thread is None or thread.workspace != req.workspace:
            raise _ApiError(404, f"thread not found: {req.thread_id}")
        return thread

    def _create_thread(self, metadata: Any, messages: Any, workspace: str | None) -> str:
        meta = _metadata(metadata)
        if messages is not None and not isinstance(messages, list):
            raise _ApiError(400, "messages must be a list")
        inputs = [_message_fields(m) for m in messages or []]
        tid = _new_id("thread")
        thread = _Thread(
            obj={"id": tid, "object": "thread", "created_at": _now_ms(), "metadata": meta},
            workspace=workspace,
        )
        for role, text, msg_meta, file_ids in inputs:
            self._add_message(thread, role, text, metadata=msg_meta, file_ids=file_ids)
        self._threads[tid] = thread
        return tid

    def _add_message(
        self,
        thread: _Thread,
        role: str,
        text: str,
        *,
        metadata: JSON | None = None,
        file_ids: list[str] | None = None,
        run: JSON | None = None,
    ) -> JSON:
        message: JSON = {
            "id": _new_id("message"),
            "object": "thread.message",
            "created_at": _now_ms(),
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

    def _threads_create(self, req: _Request) -> JSON:
        body = _json_body(req.body)
        tid = self._create_thread(body.get("metadata"), body.get("messages"), req.workspace)
        req.thread_id = tid
        return self._threads[tid].obj

    def _threads_retrieve(self, req: _Request) -> JSON:
        return self._thread(req).obj

    def _threads_update(self, req: _Request) -> JSON:
        thread = self._thread(req)
        body = _json_body(req.body)
        if body.get("metadata") is not None:  # null keeps the current metadata
            thread.obj["metadata"] = _metadata(body["metadata"])
        return thread.obj

    def _threads_delete(self, req: _Request) -> JSON:
        thread = self._thread(req)
        del self._threads[thread.obj["id"]]
        return {"id": thread.obj["id"], "object": "thread.deleted", "deleted": True}

    def _messages_create(self, req: _Request) -> JSON:
        thread = self._thread(req)
        role, text, metadata, file_ids = _message_fields(_json_body(req.body))
        return self._add_message(thread, role, text, metadata=metadata, file_ids=file_ids)

    def _messages_list(self, req: _Request) -> JSON:
        return _paginate(self._thread(req).messages, req.query)

    def _messages_retrieve(self, req: _Request) -> JSON:
        message = self._thread(req).message_index.get(req.item_id or "")
        if message is None:
            raise _ApiError(404, f"message not found: {req.item_id}")
        return message

    def _runs_create(self, req: _Request) -> JSON:
        thread = self._thread(req)
        body = _json_body(req.body)
        assistant_id = body.get("assistant_id")
        if not isinstance(assistant_id, str) or not assistant_id:
            raise _ApiError(400, "assistant_id is required")
        if body.get("stream"):
            raise _ApiError(400, "the emulator does not support streaming runs")
        instructions = body.get("instructions") or ""
        run: JSON = {
            "id": _new_id("run"),
            "object": "thread.run",
            "thread_id": thread.obj["id"],
            "assistant_id": assistant_id,
            "model": body.get("model") or "qwen-max",
            "instructions": instructions,
            "tools": body.get("tools") or [],
            "metadata": _metadata(body.get("metadata")),
            "file_ids": [],
            "status": "queued",
            "created_at": _now_ms(),
            **dict.fromkeys(_RUN_NULLS),
        }
        for key in ("top_p", "top_k", "temperature", "max_tokens"):
            if body.get(key) is not None:
                run[key] = body[key]
        users = [m for m in thread.messages if m["role"] == "user"]
        thread.runs[run["id"]] = _Run(
            obj=run,
            started=time.monotonic(),
            echo=_text_of(users[-1]) if users else "",
            prompt_chars=len(str(instructions)) + sum(len(_text_of(m)) for m in thread.messages),
        )
        return run

    def _run(self, req: _Request) -> tuple[_Thread, _Run]:
        thread = self._thread(req)
        run = thread.runs.get(req.item_id or "")
        if run is None:
            raise _ApiError(404, f"run not found: {req.item_id}")
        self._advance(thread, run)
        return thread, run

    def _advance(self, thread: _Thread, run: _Run) -> None:
        """Move a pending run on; it becomes terminal exactly once, after ``run_delay``."""
        obj = run.obj
        if obj["status"] not in ("queued", "in_progress"):
            return
        now = _now_ms()
        obj["started_at"] = obj["started_at"] or now
        if time.monotonic() - run.started < self.run_delay:
            obj["status"] = "in_progress"
            return
        status = obj["status"] = self._run_status
        if status == "completed":
            reply = f"Echo: {run.echo}"
            message = self._add_message(thread, "assistant", reply, run=obj)
            prompt, completion = _tokens(run.prompt_chars), _tokens(len(reply))
            obj["usage"] = {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            }
            obj["completed_at"] = now
            run.steps.append(
                {
                    "id": _new_id("step"),
                    "object": "thread.run.step",
                    "type": "message_creation",
                    "status": "completed",
                    "run_id": obj["id"],
                    "thread_id": obj["thread_id"],
                    "assistant_id": obj["assistant_id"],
                    "created_at": now,
                    "completed_at": now,
                    "step_details": {
                        "type": "message_creation",
                        "message_creation": {"message_id": message["id"]},
                    },
                    "usage": dict(obj["usage"]),
                }
            )
        elif status == "failed":
            obj["failed_at"] = now
            obj["last_error"] = {"code": "server_error", "message": "emulated run failure"}
        elif status == "requires_action":
            call = {
                "id": _new_id("call"),
                "type": "function",
                "function": {"name": "emulated_tool", "arguments": "{}"},
            }
            obj["required_action"] = {
                "type": "submit_tool_outputs",
                "submit_tool_outputs": {"tool_calls": [call]},
            }
        elif status == "expired":
            obj["expires_at"] = now
        else:
            obj["cancelled_at"] = now

    def _runs_retrieve(self, req: _Request) -> JSON:
        return self._run(req)[1].obj

    def _runs_list(self, req: _Request) -> JSON:
        thread = self._thread(req)
        for run in thread.runs.values():
            self._advance(thread, run)
        return _paginate([run.obj for run in thread.runs.values()], req.query)

    def _steps_list(self, req: _Request) -> JSON:
        return _paginate(self._run(req)[1].steps, req.query)


# Keyword arguments of Emulator.fail(), accepted by POST /_emulator/faults.
_FAULT_KWARGS = frozenset(inspect.signature(Emulator.fail).parameters) - {"self", "op"}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], emulator: Emulator) -> None:
        self.emulator = emulator
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Stay quiet about client disconnects unless verbose."""
        if self.emulator.verbose:
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "DashScopeEmulator/1.0"
    disable_nagle_algorithm = True
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.emulator._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.emulator._track(self.connection, add=False)

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_DELETE = do_PUT = do_PATCH = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.emulator.verbose:
            super().log_message(format, *args)

    # --------------------------------------------------------------------------
    def _dispatch(self) -> None:
        emu = self.server.emulator
        url = urlsplit(self.path)
        path = url.path.rstrip("/") or "/"
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if path.startswith(ADMIN_PREFIX):
            try:
                self._send(200, emu._admin(self.command, path, raw))
            except _ApiError as exc:
                self._send_error(exc)
            return
        op, params = "unknown", {}
        if path.startswith(API_PREFIX):
            for method, pattern, name in _ROUTES:
                match = pattern.fullmatch(path[len(API_PREFIX) :])
                if method == self.command and match:
                    op, params = name, match.groupdict()
                    break
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        workspace = self.headers.get("X-DashScope-WorkSpace") or None
        req = _Request(op, workspace, params.get("tid"), params.get("item"), query, raw)
        if op == "unknown":
            emu._record(op, None, 404)
            self._send_error(_ApiError(404, f"no route for {self.command} {url.path}"))
            return
        fault = emu._pick_fault(op, req.thread_id, workspace)
        delay = emu._base_latency(op) + ((fault.latency or 0.0) if fault else 0.0)
        if delay > 0 and emu._stopping.wait(delay):
            emu._record(op, req.thread_id, DROPPED)
            self._drop()
            return
        if fault is not None and self._answer_fault(fault, req):
            return
        auth = self.headers.get("Authorization")
        if emu.api_key is not None and auth != f"Bearer {emu.api_key}":
            emu._record(op, req.thread_id, 401)
            self._send_error(_ApiError(401, "Invalid API-key provided."))
            return
        try:
            payload = emu._execute(req)
        except _ApiError as exc:
            emu._record(op, req.thread_id, exc.status)
            self._send_error(exc)
            return
        except Exception as exc:  # noqa: BLE001 - a bug must still produce an HTTP answer
            emu._record(op, req.thread_id, 500)
            self._send_error(_ApiError(500, f"emulator error: {exc!r}"))
            return
        emu._record(op, req.thread_id, 200)
        self._send(200, payload)

    def _answer_fault(self, fault: Fault, req: _Request) -> bool:
        """Answer with the fault's hang/drop/error; False if it only added latency."""
        emu = self.server.emulator
        if fault.hang or fault.drop:
            emu._record(req.op, req.thread_id, DROPPED)
            if fault.hang:
                self._hang()
            self._drop()
            return True
        if fault.status is None:
            return False
        emu._record(req.op, req.thread_id, fault.status)
        headers = {}
        if fault.retry_after is not None:
            seconds = float(fault.retry_after)
            headers["Retry-After"] = str(int(seconds) if seconds.is_integer() else seconds)
        self._send_error(_ApiError(fault.status, fault.message or "", fault.code), headers)
        return True

    def _send(self, status: int, payload: JSON, headers: dict[str, str] | None = None) -> None:
        request_id = str(uuid.uuid4())
        data = json.dumps({**payload, "request_id": request_id}).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Request-Id", request_id)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _send_error(self, error: _ApiError, headers: dict[str, str] | None = None) -> None:
        self._send(error.status, {"code": error.code, "message": error.message}, headers)

    def _drop(self) -> None:
        """Close the socket without any HTTP response."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _hang(self) -> None:
        """Hold the request until the client disconnects or the emulator stops."""
        while not self.server.emulator._stopping.wait(0.05):
            try:
                readable, _, _ = select.select([self.connection], [], [], 0)
                if readable and not self.connection.recv(1, socket.MSG_PEEK):
                    return
            except (OSError, ValueError):
                return
