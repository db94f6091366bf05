"""A stdlib-only HTTP emulator of DashScope's Assistant API.

It answers every request the real ``dashscope`` SDK's Assistant API sends —
assistants, threads, messages, runs (streaming too, as server-sent events),
run steps, tool calls — keeps all state in memory, and lets tests inject
failures, latency and slow runs, then count what was called::

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

Faults, operation names and the call log are the ones
:class:`~threadstore.testing.FakeRemote` uses (:mod:`threadstore.testing.faults`).
How runs behave is described in :mod:`threadstore.testing._state`.

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
import re
import select
import socket
import threading
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ._state import RUN_STATUSES, ApiError, DashScopeState, Events, Request, json_body
from .faults import DROPPED, OPS, Fault, FaultPlan, FaultSteering, check_op

__all__ = ["OPS", "RUN_STATUSES", "CapturedRequest", "Emulator", "Fault"]

JSON = dict[str, Any]

API_PREFIX = "/api/v1/"
ADMIN_PREFIX = "/_emulator/"

_TID = r"(?P<tid>[^/]+)"
_ITEM = r"(?P<item>[^/]+)"
_SUB = r"(?P<sub>[^/]+)"
_ROUTES: tuple[tuple[str, re.Pattern[str], str], ...] = tuple(
    (method, re.compile(pattern), op)
    for method, pattern, op in (
        ("POST", r"threads", "threads.create"),
        ("POST", r"threads/runs", "threads.create_and_run"),
        ("GET", rf"threads/{_TID}", "threads.retrieve"),
        ("POST", rf"threads/{_TID}", "threads.update"),
        ("DELETE", rf"threads/{_TID}", "threads.delete"),
        ("POST", rf"threads/{_TID}/messages", "messages.create"),
        ("GET", rf"threads/{_TID}/messages", "messages.list"),
        ("GET", rf"threads/{_TID}/messages/{_ITEM}", "messages.retrieve"),
        ("POST", rf"threads/{_TID}/messages/{_ITEM}", "messages.update"),
        ("POST", rf"threads/{_TID}/runs", "runs.create"),
        ("GET", rf"threads/{_TID}/runs", "runs.list"),
        ("GET", rf"threads/{_TID}/runs/{_ITEM}", "runs.retrieve"),
        ("POST", rf"threads/{_TID}/runs/{_ITEM}", "runs.update"),
        ("POST", rf"threads/{_TID}/runs/{_ITEM}/cancel", "runs.cancel"),
        ("POST", rf"threads/{_TID}/runs/{_ITEM}/submit_tool_outputs", "runs.submit_tool_outputs"),
        ("GET", rf"threads/{_TID}/runs/{_ITEM}/steps", "steps.list"),
        ("GET", rf"threads/{_TID}/runs/{_ITEM}/steps/{_SUB}", "steps.retrieve"),
        ("POST", r"assistants", "assistants.create"),
        ("GET", r"assistants", "assistants.list"),
        ("GET", rf"assistants/{_ITEM}", "assistants.retrieve"),
        ("POST", rf"assistants/{_ITEM}", "assistants.update"),
        ("DELETE", rf"assistants/{_ITEM}", "assistants.delete"),
    )
)


@dataclass(frozen=True)
class CapturedRequest:
    """One API request as it arrived (kept when ``Emulator(capture=True)``)."""

    method: str
    path: str  # with the query string
    headers: tuple[tuple[str, str], ...]
    body: bytes
    op: str


class Emulator(FaultSteering):
    """In-memory DashScope Assistant API served over HTTP on a background thread.

    ``api_key=None`` disables the bearer check; ``latency`` is added to every request;
    ``seed`` makes ``rate=`` faults deterministic; ``id_seed`` makes ids reproducible;
    ``capture`` keeps every API request in :attr:`requests`; ``verbose`` logs each
    request to stderr.
    """

    def __init__(
        self,
        api_key: str | None = "test-key",
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        latency: float = 0.0,
        seed: int = 0,
        id_seed: int | None = None,
        capture: bool = False,
        verbose: bool = False,
    ) -> None:
        self.api_key = api_key
        self.host = host
        self.verbose = verbose
        self.capture = capture
        self._requested_port = port
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._latency = latency
        self._op_latency: dict[str, float] = {}
        self._state = DashScopeState(id_seed=id_seed)
        self._plan = FaultPlan(seed)
        self._requests: list[CapturedRequest] = []
        self._connections: set[socket.socket] = set()
        self._server: _Server | None = None
        self._loop_thread: threading.Thread | None = None

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
    # fail(), clear_faults(), count() and calls are FaultSteering's: one fault model
    # for both doubles.

    def set_latency(self, seconds: float, op: str | None = None) -> None:
        """Set the global base latency, or an extra latency for one op (added to it)."""
        if op is not None:
            check_op(op, wildcard=False)
        with self._lock:
            if op is None:
                self._latency = max(0.0, seconds)
            else:
                self._op_latency[op] = max(0.0, seconds)

    @property
    def run_status(self) -> str:
        """Status that runs end in: completed, failed, requires_action, expired, cancelled."""
        return self._state.run_status

    @run_status.setter
    def run_status(self, value: str) -> None:
        if value not in RUN_STATUSES:
            raise ValueError(f"run_status must be one of {RUN_STATUSES}")
        self._state.run_status = value

    @property
    def run_delay(self) -> float:
        """Seconds after creation before a run becomes terminal (``in_progress`` until then)."""
        return self._state.run_delay

    @run_delay.setter
    def run_delay(self, value: float) -> None:
        self._state.run_delay = max(0.0, float(value))

    def reset(self) -> None:
        """Forget all objects, faults and counters (latency and run settings are kept)."""
        self.clear_faults()
        with self._lock:
            self._state.clear()
            self._requests.clear()
        self._plan.reseed()
        self.reset_counters()

    @property
    def requests(self) -> tuple[CapturedRequest, ...]:
        """The API requests received while :attr:`capture` was on, oldest first."""
        with self._lock:
            return tuple(self._requests)

    def reset_counters(self) -> None:
        """Clear ``calls``, ``count()``, the stats counters and captured requests."""
        super().reset_counters()
        with self._lock:
            self._requests.clear()

    def stats(self) -> JSON:
        """The ``GET /_emulator/stats`` document."""
        with self._lock:
            threads = len(self._state.threads)
        return {
            "counts": self._plan.counts(),
            "threads": threads,
            "deletes_by_thread": self._plan.deletes_by_thread(),
        }

    # ------------------------------------------------------------------ state
    def thread_exists(self, thread_id: str, workspace: str | None = None) -> bool:
        """Whether the thread exists in ``workspace`` (None = the no-workspace scope)."""
        with self._lock:
            thread = self._state.threads.get(thread_id)
            return thread is not None and thread.workspace == workspace

    def thread_ids(self, workspace: str | None = None) -> list[str]:
        """Ids of the threads in ``workspace`` (None = the no-workspace scope), oldest first."""
        with self._lock:
            return [tid for tid, t in self._state.threads.items() if t.workspace == workspace]

    def seed_thread(
        self,
        metadata: JSON | None = None,
        messages: list[JSON] | None = None,
        workspace: str | None = None,
    ) -> str:
        """Create a thread directly (uncounted); ``messages`` are ``{"role", "content"}``."""
        with self._lock:
            try:
                return str(self._state.create_thread(metadata, messages, workspace).obj["id"])
            except ApiError as exc:
                raise ValueError(exc.message) from exc

    def messages_of(self, thread_id: str, workspace: str | None = None) -> list[JSON]:
        """Copies of the thread's stored messages, oldest first (KeyError if absent)."""
        with self._lock:
            thread = self._state.threads.get(thread_id)
            if thread is None or thread.workspace != workspace:
                raise KeyError(thread_id)
            return copy.deepcopy(thread.messages)

    def assistant_ids(self, workspace: str | None = None) -> list[str]:
        """Ids of the assistants in ``workspace`` (None = the no-workspace scope)."""
        with self._lock:
            return [aid for aid, (_, ws) in self._state.assistants.items() if ws == workspace]

    # ------------------------------------------------------------------ request plumbing
    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def _pick_fault(self, op: str, thread_id: str | None, workspace: str | None) -> Fault | None:
        return self._plan.pick(op, thread_id, workspace)

    def _base_latency(self, op: str) -> float:
        with self._lock:
            return self._latency + self._op_latency.get(op, 0.0)

    def _record(self, op: str, thread_id: str | None, status: int) -> None:
        self._plan.record(op, thread_id, status)

    def _capture(self, request: CapturedRequest) -> None:
        if self.capture:
            with self._lock:
                self._requests.append(request)

    def _execute(self, req: Request) -> JSON | Events:
        """Run one API operation under the state lock; returns a private copy."""
        with self._lock:
            return self._state.execute(req)

    def _admin(self, method: str, path: str, raw: bytes) -> JSON:
        route = path[len(ADMIN_PREFIX) :].strip("/")
        if route == "faults" and method == "POST":
            body = json_body(raw)
            op = body.pop("op", None)
            unknown = set(body) - _FAULT_KWARGS
            if not isinstance(op, str) or unknown:
                raise ApiError(400, f"need a string 'op'; unknown keys: {sorted(unknown)}")
            try:
                return {"id": self.fail(op, **body).id}
            except (TypeError, ValueError) as exc:
                raise ApiError(400, str(exc)) from exc
        if route == "faults" and method == "DELETE":
            self.clear_faults()
            return {"cleared": True}
        if route == "stats" and method == "GET":
            return self.stats()
        if route == "reset" and method == "POST":
            self.reset()
            return {"reset": True}
        if route == "latency" and method == "POST":
            body = json_body(raw)
            try:
                self.set_latency(float(body.get("seconds", 0.0)), body.get("op"))
            except (TypeError, ValueError) as exc:
                raise ApiError(400, str(exc)) from exc
            return {"ok": True}
        if route == "runs" and method == "POST":
            body = json_body(raw)
            try:
                if "status" in body:
                    self.run_status = body["status"]
                if "delay" in body:
                    self.run_delay = float(body["delay"])
            except (TypeError, ValueError) as exc:
                raise ApiError(400, str(exc)) from exc
            return {"status": self.run_status, "delay": self.run_delay}
        raise ApiError(404, f"no admin route {method} {path}")


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
            except ApiError as exc:
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
        req = Request(
            op, workspace, params.get("tid"), params.get("item"), params.get("sub"), query, raw
        )
        emu._capture(
            CapturedRequest(self.command, self.path, tuple(self.headers.items()), raw, op)
        )
        if op == "unknown":
            emu._record(op, None, 404)
            if path.startswith(API_PREFIX):
                self._send_error(ApiError(404, f"no route for {self.command} {url.path}"))
            else:
                # Outside /api/v1 no DashScope service answers: the gateway does,
                # with its own page and none of DashScope's error JSON (what a base
                # URL missing its /api/v1 meets).
                self._send_gateway_404()
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
            self._send_error(ApiError(401, "Invalid API-key provided."))
            return
        try:
            payload = emu._execute(req)
        except ApiError as exc:
            emu._record(op, req.thread_id, exc.status)
            self._send_error(exc)
            return
        except Exception as exc:  # noqa: BLE001 - a bug must still produce an HTTP answer
            emu._record(op, req.thread_id, 500)
            self._send_error(ApiError(500, f"emulator error: {exc!r}"))
            return
        emu._record(op, req.thread_id, 200)
        if isinstance(payload, list):
            self._send_events(payload)
        else:
            self._send(200, payload)

    def _answer_fault(self, fault: Fault, req: Request) -> bool:
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
        self._send_error(ApiError(fault.status, fault.message or "", fault.code), headers)
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

    def _send_events(self, events: Events) -> None:
        """A streaming answer: one SSE event per pair, then ``[DONE]``, as DashScope sends.

        The SDK's parser wants ``event:``/``data:`` with no space after the colon,
        and skips the data of an ``event:done``.
        """
        request_id = str(uuid.uuid4())
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("X-Request-Id", request_id)
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        chunks = [
            f"id:{i}\nevent:{event}\ndata:{json.dumps(obj, separators=(',', ':'))}\n\n"
            for i, (event, obj) in enumerate(events, start=1)
        ]
        chunks.append(f"id:{len(events) + 1}\nevent:done\ndata:[DONE]\n\n")
        with contextlib.suppress(OSError):  # a client that stopped reading
            self.wfile.write("".join(chunks).encode("utf-8"))
            self.wfile.flush()

    def _send_error(self, error: ApiError, headers: dict[str, str] | None = None) -> None:
        self._send(error.status, {"code": error.code, "message": error.message}, headers)

    def _send_gateway_404(self) -> None:
        data = (
            b"<html>\r\n<head><title>404 Not Found</title></head>\r\n<body>\r\n"
            b"<center><h1>404 Not Found</h1></center>\r\n</body>\r\n</html>\r\n"
        )
        self.send_response(404)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

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
