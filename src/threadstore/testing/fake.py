"""``FakeRemote``: an in-memory :class:`~threadstore.remote.Remote` for fast tests.

It behaves like DashScope as threadstore sees it — ids, workspaces, messages,
runs that complete at once with an assistant reply and token usage — and can be
told to fail with the same faults as the :class:`~threadstore.testing.Emulator`
(one fault model: :mod:`threadstore.testing.faults`)::

    fake = FakeRemote()
    store = ThreadStore("sqlite://", remote=fake)
    fake.fail("threads.delete", status=500, times=1)      # next delete: 500
    fake.fail("threads.delete", status=429, rate=0.3, retry_after=2)
    fake.fail("threads.create", drop=True, times=1)       # outcome unknown
    fake.count("threads.delete", status=200)              # successful deletes

A ``hang`` or ``drop`` fault raises :class:`~threadstore.errors.RemoteUnavailable`
with ``outcome_unknown`` set, as the real remote does when a request goes out and
no answer comes back; the operation itself does not happen. It is thread-safe,
like the real remote.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

from ..errors import RemoteError, RemoteUnavailable
from ..remote import RemoteMessage, RemoteRun, RemoteThread, error_from_status
from ._state import tokens
from .faults import DROPPED, FaultPlan, FaultSteering

__all__ = ["FakeRemote"]

T = TypeVar("T")


@dataclass
class _Thread:
    id: str
    workspace: str | None
    metadata: dict[str, Any]
    created_at: datetime
    messages: list[RemoteMessage] = field(default_factory=list)
    runs: dict[str, RemoteRun] = field(default_factory=dict)


class FakeRemote(FaultSteering):
    """In-memory DashScope; see the module docstring."""

    def __init__(self, *, seed: int = 0, run_status: str = "completed") -> None:
        self._lock = threading.Lock()
        self._threads: dict[str, _Thread] = {}
        self._plan = FaultPlan(seed)
        self._clock = itertools.count()
        self.run_status = run_status
        self.closed = False

    def thread_exists(self, thread_id: str, workspace: str | None = None) -> bool:
        """Whether the thread exists in ``workspace`` (None = the no-workspace scope)."""
        with self._lock:
            thread = self._threads.get(thread_id)
            return thread is not None and thread.workspace == workspace

    def thread_ids(self, workspace: str | None = None) -> list[str]:
        """Ids of the threads in ``workspace`` (None = the no-workspace scope), oldest first."""
        with self._lock:
            return [tid for tid, t in self._threads.items() if t.workspace == workspace]

    def seed_thread(self, metadata: Mapping[str, Any] | None = None,
                    messages: Sequence[Mapping[str, Any]] | None = None,
                    workspace: str | None = None) -> str:
        """A thread that exists only remotely (as if created by another app); uncounted."""
        with self._lock:
            return self._new_thread(messages or (), metadata, workspace).id

    # -- internals

    def _now(self) -> datetime:
        # Strictly increasing, so message order is stable even within a millisecond.
        return datetime.now(timezone.utc) + timedelta(microseconds=next(self._clock))

    def _call(self, op: str, thread_id: str | None, workspace: str | None,
              fn: Callable[[], T]) -> T:
        """Apply the fault plan, run ``fn`` under the lock, log the call."""
        fault = self._plan.pick(op, thread_id, workspace)
        if fault is not None:
            if fault.latency:
                time.sleep(fault.latency)
            if fault.unanswered:
                self._plan.record(op, thread_id, DROPPED)
                raise RemoteUnavailable(
                    f"{op}{f' for {thread_id}' if thread_id else ''}: no answer "
                    f"(injected {'hang' if fault.hang else 'drop'})",
                    operation=op, thread_id=thread_id, outcome_unknown=True,
                )
            if fault.status is not None:
                self._plan.record(op, thread_id, fault.status)
                raise error_from_status(
                    fault.status, code=fault.code, message=fault.message,
                    operation=op, thread_id=thread_id, retry_after=fault.retry_after,
                )
        try:
            with self._lock:
                result = fn()
        except RemoteError as exc:
            self._plan.record(op, thread_id, exc.status_code or 500)
            raise
        self._plan.record(op, thread_id, 200)
        return result

    @staticmethod
    def _not_found(op: str, thread_id: str | None, what: str = "thread") -> RemoteError:
        return error_from_status(404, code="NotFound", message=f"no such {what}",
                                 operation=op, thread_id=thread_id)

    def _get(self, op: str, thread_id: str, workspace: str | None) -> _Thread:
        thread = self._threads.get(thread_id)
        if thread is None or thread.workspace != workspace:
            raise self._not_found(op, thread_id)
        return thread

    def _message(self, thread: _Thread, content: str, role: str,
                 metadata: Mapping[str, Any] | None = None, run_id: str | None = None,
                 assistant_id: str | None = None) -> RemoteMessage:
        msg = RemoteMessage(
            message_id=f"message_{uuid.uuid4().hex}", thread_id=thread.id, role=role,
            content=content, created_at=self._now(), run_id=run_id, assistant_id=assistant_id,
            metadata=dict(metadata or {}),
        )
        thread.messages.append(msg)
        return msg

    def _new_thread(self, messages: Sequence[Mapping[str, Any]],
                    metadata: Mapping[str, Any] | None, workspace: str | None) -> _Thread:
        thread = _Thread(f"thread_{uuid.uuid4().hex}", workspace, dict(metadata or {}),
                         self._now())
        self._threads[thread.id] = thread
        for m in messages:
            self._message(thread, str(m["content"]), str(m.get("role", "user")))
        return thread

    # -- Remote protocol

    def create_thread(self, *, messages: Sequence[Mapping[str, Any]] | None = None,
                      metadata: Mapping[str, Any] | None = None,
                      workspace: str | None = None) -> RemoteThread:
        def op() -> RemoteThread:
            thread = self._new_thread(messages or (), metadata, workspace)
            return RemoteThread(thread.id, thread.created_at, dict(thread.metadata))

        return self._call("threads.create", None, workspace, op)

    def retrieve_thread(self, thread_id: str, *, workspace: str | None = None) -> RemoteThread:
        def op() -> RemoteThread:
            t = self._get("threads.retrieve", thread_id, workspace)
            return RemoteThread(t.id, t.created_at, dict(t.metadata))

        return self._call("threads.retrieve", thread_id, workspace, op)

    def update_thread(self, thread_id: str, *, metadata: Mapping[str, Any],
                      workspace: str | None = None) -> RemoteThread:
        def op() -> RemoteThread:
            t = self._get("threads.update", thread_id, workspace)
            t.metadata = dict(metadata)
            return RemoteThread(t.id, t.created_at, dict(t.metadata))

        return self._call("threads.update", thread_id, workspace, op)

    def delete_thread(self, thread_id: str, *, workspace: str | None = None) -> None:
        def op() -> None:
            self._get("threads.delete", thread_id, workspace)
            del self._threads[thread_id]

        self._call("threads.delete", thread_id, workspace, op)

    def create_message(self, thread_id: str, content: str, *, role: str = "user",
                       metadata: Mapping[str, Any] | None = None,
                       workspace: str | None = None) -> RemoteMessage:
        def op() -> RemoteMessage:
            t = self._get("messages.create", thread_id, workspace)
            return self._message(t, content, role, metadata)

        return self._call("messages.create", thread_id, workspace, op)

    def list_messages(self, thread_id: str, *, after: str | None = None, limit: int = 100,
                      workspace: str | None = None) -> tuple[list[RemoteMessage], bool]:
        def op() -> tuple[list[RemoteMessage], bool]:
            t = self._get("messages.list", thread_id, workspace)
            ids = [m.id for m in t.messages]
            start = ids.index(after) + 1 if after in ids else 0
            page = t.messages[start : start + limit]
            return list(page), start + limit < len(t.messages)

        return self._call("messages.list", thread_id, workspace, op)

    def create_run(self, thread_id: str, *, assistant_id: str, model: str | None = None,
                   instructions: str | None = None, metadata: Mapping[str, Any] | None = None,
                   workspace: str | None = None) -> RemoteRun:
        def op() -> RemoteRun:
            t = self._get("runs.create", thread_id, workspace)
            run = RemoteRun(run_id=f"run_{uuid.uuid4().hex}", thread_id=thread_id, status="queued",
                            assistant_id=assistant_id, model=model or "qwen-max",
                            created_at=self._now())
            t.runs[run.id] = run
            return run

        return self._call("runs.create", thread_id, workspace, op)

    def retrieve_run(self, run_id: str, *, thread_id: str,
                     workspace: str | None = None) -> RemoteRun:
        def op() -> RemoteRun:
            t = self._get("runs.retrieve", thread_id, workspace)
            run = t.runs.get(run_id)
            if run is None:
                raise self._not_found("runs.retrieve", thread_id, "run")
            if run.status == "queued":
                run = self._finish(t, run)
            return run

        return self._call("runs.retrieve", thread_id, workspace, op)

    def _finish(self, t: _Thread, run: RemoteRun) -> RemoteRun:
        last_user = next((m.content for m in reversed(t.messages) if m.role == "user"), "")
        now = self._now()
        if self.run_status != "completed":
            done = replace(run, status=self.run_status, started_at=now, failed_at=now,
                           last_error="server_error: the fake run failed")
        else:
            reply = f"Echo: {last_user}"
            # The emulator's estimate (threadstore.testing._state.tokens), on the same text.
            prompt = tokens(sum(len(m.content) for m in t.messages))
            completion = tokens(len(reply))
            self._message(t, reply, "assistant", run_id=run.id, assistant_id=run.assistant_id)
            done = replace(run, status="completed", started_at=now, completed_at=now,
                           prompt_tokens=prompt, completion_tokens=completion,
                           total_tokens=prompt + completion)
        t.runs[run.id] = done
        return done

    def close(self) -> None:
        self.closed = True
