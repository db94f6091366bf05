"""``FakeRemote``: an in-memory :class:`~threadstore.remote.Remote` for fast tests.

It behaves like DashScope as threadstore sees it — ids, workspaces, messages,
runs that complete at once with an assistant reply and token usage — and can be
told to fail::

    fake = FakeRemote()
    store = ThreadStore("sqlite://", remote=fake)
    fake.fail("threads.delete", status=500, times=1)      # next delete: 500
    fake.fail("threads.delete", status=429, rate=0.3, retry_after=2)
    fake.count("threads.delete", status=200)              # successful deletes

It is thread-safe, like the real remote.
"""

from __future__ import annotations

import itertools
import random
import threading
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Any

from ..remote import RemoteMessage, RemoteRun, RemoteThread, error_from_status

__all__ = ["FakeRemote"]


@dataclass
class _Fault:
    op: str
    status: int
    thread_id: str | None
    times: int | None
    rate: float | None
    retry_after: float | None
    hits: int = 0

    def matches(self, op: str, thread_id: str | None, rng: random.Random) -> bool:
        if self.op not in ("*", op) or (self.thread_id and self.thread_id != thread_id):
            return False
        if self.times is not None and self.hits >= self.times:
            return False
        return self.rate is None or rng.random() < self.rate


@dataclass
class _Thread:
    id: str
    workspace: str | None
    metadata: dict[str, Any]
    created_at: datetime
    messages: list[RemoteMessage] = field(default_factory=list)
    runs: dict[str, RemoteRun] = field(default_factory=dict)


class FakeRemote:
    """In-memory DashScope; see the module docstring."""

    def __init__(self, *, seed: int = 0, run_status: str = "completed") -> None:
        self._lock = threading.Lock()
        self._threads: dict[str, _Thread] = {}
        self._faults: list[_Fault] = []
        self._rng = random.Random(seed)
        self._clock = itertools.count()
        self.run_status = run_status
        self.calls: list[tuple[str, str | None, int]] = []
        self.closed = False

    # -- steering

    def fail(
        self,
        op: str,
        *,
        status: int = 500,
        thread_id: str | None = None,
        times: int | None = None,
        rate: float | None = None,
        retry_after: float | None = None,
    ) -> None:
        """Make matching calls fail with ``status`` (``op`` like ``threads.delete`` or ``*``)."""
        with self._lock:
            self._faults.append(_Fault(op, status, thread_id, times, rate, retry_after))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def count(self, op: str | None = None, *, thread_id: str | None = None,
              status: int | None = None) -> int:
        with self._lock:
            return sum(
                1
                for o, t, s in self.calls
                if (op is None or o == op)
                and (thread_id is None or t == thread_id)
                and (status is None or s == status)
            )

    def thread_exists(self, thread_id: str) -> bool:
        with self._lock:
            return thread_id in self._threads

    def thread_ids(self) -> list[str]:
        with self._lock:
            return list(self._threads)

    def seed_thread(self, *, metadata: Mapping[str, Any] | None = None,
                    messages: Sequence[Mapping[str, Any]] = (),
                    workspace: str | None = None) -> str:
        """A thread that exists only remotely (as if created by another app)."""
        return self.create_thread(messages=messages, metadata=metadata, workspace=workspace,
                                  _record=False).id

    # -- internals

    def _now(self) -> datetime:
        # Strictly increasing, so message order is stable even within a millisecond.
        return datetime.now(timezone.utc) + timedelta(microseconds=next(self._clock))

    def _enter(self, op: str, thread_id: str | None, record: bool = True) -> None:
        """Apply faults; call with the lock held."""
        for fault in self._faults:
            if fault.matches(op, thread_id, self._rng):
                fault.hits += 1
                if record:
                    self.calls.append((op, thread_id, fault.status))
                raise error_from_status(
                    fault.status, code="Injected", message="injected fault",
                    operation=op, thread_id=thread_id, retry_after=fault.retry_after,
                )
        if record:
            self.calls.append((op, thread_id, 200))

    def _get(self, op: str, thread_id: str, workspace: str | None) -> _Thread:
        thread = self._threads.get(thread_id)
        if thread is None or thread.workspace != workspace:
            self.calls[-1] = (op, thread_id, 404)
            raise error_from_status(404, code="NotFound", message="no such thread",
                                    operation=op, thread_id=thread_id)
        return thread

    def _message(self, thread: _Thread, content: str, role: str,
                 metadata: Mapping[str, Any] | None = None, run_id: str | None = None,
                 assistant_id: str | None = None) -> RemoteMessage:
        msg = RemoteMessage(
            id=f"message_{uuid.uuid4().hex}", thread_id=thread.id, role=role, content=content,
            created_at=self._now(), run_id=run_id, assistant_id=assistant_id,
            metadata=dict(metadata or {}),
        )
        thread.messages.append(msg)
        return msg

    # -- Remote protocol

    def create_thread(self, *, messages: Sequence[Mapping[str, Any]] | None = None,
                      metadata: Mapping[str, Any] | None = None,
                      workspace: str | None = None, _record: bool = True) -> RemoteThread:
        with self._lock:
            self._enter("threads.create", None, _record)
            thread = _Thread(f"thread_{uuid.uuid4().hex}", workspace, dict(metadata or {}),
                             self._now())
            self._threads[thread.id] = thread
            for m in messages or ():
                self._message(thread, str(m["content"]), str(m.get("role", "user")))
            return RemoteThread(thread.id, thread.created_at, dict(thread.metadata))

    def retrieve_thread(self, thread_id: str, *, workspace: str | None = None) -> RemoteThread:
        with self._lock:
            self._enter("threads.retrieve", thread_id)
            t = self._get("threads.retrieve", thread_id, workspace)
            return RemoteThread(t.id, t.created_at, dict(t.metadata))

    def update_thread(self, thread_id: str, *, metadata: Mapping[str, Any],
                      workspace: str | None = None) -> RemoteThread:
        with self._lock:
            self._enter("threads.update", thread_id)
            t = self._get("threads.update", thread_id, workspace)
            t.metadata = dict(metadata)
            return RemoteThread(t.id, t.created_at, dict(t.metadata))

    def delete_thread(self, thread_id: str, *, workspace: str | None = None) -> None:
        with self._lock:
            self._enter("threads.delete", thread_id)
            self._get("threads.delete", thread_id, workspace)
            del self._threads[thread_id]

    def create_message(self, thread_id: str, content: str, *, role: str = "user",
                       metadata: Mapping[str, Any] | None = None,
                       workspace: str | None = None) -> RemoteMessage:
        with self._lock:
            self._enter("messages.create", thread_id)
            t = self._get("messages.create", thread_id, workspace)
            return self._message(t, content, role, metadata)

    def list_messages(self, thread_id: str, *, after: str | None = None, limit: int = 100,
                      workspace: str | None = None) -> tuple[list[RemoteMessage], bool]:
        with self._lock:
            self._enter("messages.list", thread_id)
            t = self._get("messages.list", thread_id, workspace)
            ids = [m.id for m in t.messages]
            start = ids.index(after) + 1 if after in ids else 0
            page = t.messages[start : start + limit]
            return list(page), start + limit < len(t.messages)

    def create_run(self, thread_id: str, *, assistant_id: str, model: str | None = None,
                   instructions: str | None = None, metadata: Mapping[str, Any] | None = None,
                   workspace: str | None = None) -> RemoteRun:
        with self._lock:
            self._enter("runs.create", thread_id)
            t = self._get("runs.create", thread_id, workspace)
            run = RemoteRun(id=f"run_{uuid.uuid4().hex}", thread_id=thread_id, status="queued",
                            assistant_id=assistant_id, model=model or "qwen-max",
                            created_at=self._now())
            t.runs[run.id] = run
            return run

    def retrieve_run(self, run_id: str, *, thread_id: str,
                     workspace: str | None = None) -> RemoteRun:
        with self._lock:
            self._enter("runs.retrieve", thread_id)
            t = self._get("runs.retrieve", thread_id, workspace)
            run = t.runs.get(run_id)
            if run is None:
                raise error_from_status(404, operation="runs.retrieve", thread_id=thread_id)
            if run.status == "queued":
                run = self._finish(t, run)
            return run

    def _finish(self, t: _Thread, run: RemoteRun) -> RemoteRun:
        last_user = next((m.content for m in reversed(t.messages) if m.role == "user"), "")
        now = self._now()
        if self.run_status != "completed":
            done = replace(run, status=self.run_status, started_at=now, failed_at=now,
                           last_error="server_error: the fake run failed")
        else:
            reply = f"Echo: {last_user}"
            self._message(t, reply, "assistant", run_id=run.id, assistant_id=run.assistant_id)
            prompt = sum(len(m.content) for m in t.messages) // 4 + 1
            completion = len(reply) // 4 + 1
            done = replace(run, status="completed", started_at=now, completed_at=now,
                           prompt_tokens=prompt, completion_tokens=completion,
                           total_tokens=prompt + completion)
        t.runs[run.id] = done
        return done

    def close(self) -> None:
        self.closed = True




