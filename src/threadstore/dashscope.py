"""Drop-in replacement for ``dashscope.Threads``, ``Messages`` and ``Runs``.

Change one import line and every thread your code creates is mirrored::

    # from dashscope import Threads, Messages, Runs
    from threadstore.dashscope import Threads, Messages, Runs

    thread = Threads.create(metadata={"created_by": "u1"}, user_id="u1")
    Messages.create(thread.id, content="hello")
    run = Runs.create(thread.id, assistant_id="asst_…")
    run = Runs.wait(run.id, thread_id=thread.id)   # mirrors the run and its reply

The calls keep the SDK's signatures (plus an optional ``user_id=`` on
``Threads.create``) and return the SDK's own objects — including its error
objects: like the SDK, a failed call returns an object whose ``status_code`` is
404/429/500…, and network failures raise ``requests`` exceptions. What changes
is that successful calls are mirrored into the store at
``THREADSTORE_DATABASE_URL`` (default ``sqlite:///threadstore.db``), and that a
thread DashScope knows but the store does not is adopted on first use.

Two differences are deliberate: ``Threads.delete`` deletes the local row only
once DashScope confirmed (so a failed delete can be retried), and writes to a
thread that a sweep is deleting raise :class:`~threadstore.errors.ThreadExpired`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from . import db
from .errors import RemoteError, ThreadNotFound
from .remote import (
    DashScopeRemote,
    RemoteMessage,
    RemoteRun,
    RemoteThread,
    sdk_delete_response,
)
from .store import ENV_URL, ThreadStore

__all__ = ["Messages", "Runs", "Threads", "close_stores"]

T = TypeVar("T")

_lock = threading.Lock()
_stores: dict[tuple[str, str | None], tuple[ThreadStore, _CapturingRemote]] = {}


class _CapturingRemote(DashScopeRemote):
    """Remembers, per calling thread, the SDK object behind the last result."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.last = threading.local()

    def _keep(self, result: T) -> T:
        self.last.raw = getattr(result, "raw", None)
        return result

    def create_thread(self, **kw: Any) -> RemoteThread:
        return self._keep(super().create_thread(**kw))

    def retrieve_thread(self, thread_id: str, **kw: Any) -> RemoteThread:
        return self._keep(super().retrieve_thread(thread_id, **kw))

    def update_thread(self, thread_id: str, **kw: Any) -> RemoteThread:
        return self._keep(super().update_thread(thread_id, **kw))

    def create_message(self, thread_id: str, content: str, **kw: Any) -> RemoteMessage:
        return self._keep(super().create_message(thread_id, content, **kw))

    def create_run(self, thread_id: str, **kw: Any) -> RemoteRun:
        return self._keep(super().create_run(thread_id, **kw))

    def retrieve_run(self, run_id: str, **kw: Any) -> RemoteRun:
        return self._keep(super().retrieve_run(run_id, **kw))


def _store(api_key: str | None) -> tuple[ThreadStore, _CapturingRemote]:
    url = os.environ.get(ENV_URL) or db.DEFAULT_URL
    key = (url, api_key)
    with _lock:
        if key not in _stores:
            remote = _CapturingRemote(api_key=api_key)
            _stores[key] = (ThreadStore(url, remote=remote), remote)
        return _stores[key]


def close_stores() -> None:
    """Close the stores the facade opened (tests, or before the process forks)."""
    with _lock:
        for store, _ in _stores.values():
            store.close()
        _stores.clear()


def _sdk_result(call: Callable[[], Any], remote: _CapturingRemote) -> Any:
    """Run a store call and return what the SDK itself would have returned."""
    remote.last.raw = None
    try:
        call()
    except RemoteError as exc:
        if exc.response is not None:
            return exc.response  # the SDK's error object, as the SDK returns it
        if exc.__cause__ is not None:
            raise exc.__cause__ from None  # requests' exception, as the SDK raises it
        raise
    return remote.last.raw


def _mirrored(
    store: ThreadStore, thread_id: str, workspace: str | None, call: Callable[[], Any]
) -> Any:
    """``call``; if the thread is not mirrored yet, adopt it first."""
    try:
        return call()
    except ThreadNotFound:
        store.adopt(thread_id, workspace=workspace)
        return call()


class Threads:
    """``dashscope.Threads`` with every create, update and delete mirrored."""

    @classmethod
    def create(
        cls,
        *,
        messages: list[dict[str, Any]] | None = None,
        metadata: dict[str, Any] | None = None,
        workspace: str | None = None,
        api_key: str | None = None,
        user_id: str | None = None,
        **kwargs: Any,
    ) -> Any:
        store, remote = _store(api_key)
        return _sdk_result(
            lambda: store.create_thread(
                user_id=user_id, metadata=metadata, messages=messages, workspace=workspace
            ),
            remote,
        )

    call = create

    @classmethod
    def retrieve(
        cls, thread_id: str, *, workspace: str | None = None, api_key: str | None = None,
        **kwargs: Any,
    ) -> Any:
        _, remote = _store(api_key)
        return _sdk_result(lambda: remote.retrieve_thread(thread_id, workspace=workspace), remote)

    get = retrieve

    @classmethod
    def update(
        cls,
        thread_id: str,
        *,
        metadata: dict[str, Any] | None = None,
        workspace: str | None = None,
        api_key: str | None = None,
        **kwargs: Any,
    ) -> Any:
        store, remote = _store(api_key)
        return _sdk_result(
            lambda: _mirrored(
                store, thread_id, workspace,
                lambda: store.update_thread(thread_id, metadata=metadata or {}),
            ),
            remote,
        )

    @classmethod
    def delete(
        cls, thread_id: str, *, workspace: str | None = None, api_key: str | None = None,
        **kwargs: Any,
    ) -> Any:
        store, _ = _store(api_key)
        try:
            try:
                store.delete_thread(thread_id)
            except ThreadNotFound:
                # Not mirrored: nothing local to keep in step, delete remotely only.
                store.remote.delete_thread(thread_id, workspace=workspace)
        except RemoteError as exc:
            if exc.response is None and exc.status_code is None and exc.__cause__ is not None:
                raise exc.__cause__ from None
            return exc.response if exc.response is not None else sdk_delete_response(thread_id, exc)
        return sdk_delete_response(thread_id)


class Messages:
    """``dashscope.Messages`` with every created message mirrored."""

    @classmethod
    def create(
        cls,
        thread_id: str,
        *,
        content: str,
        role: str = "user",
        metadata: dict[str, Any] | None = None,
        workspace: str | None = None,
        api_key: str | None = None,
        **kwargs: Any,
    ) -> Any:
        store, remote = _store(api_key)
        return _sdk_result(
            lambda: _mirrored(
                store, thread_id, workspace,
                lambda: store.add_message(thread_id, content, role=role, metadata=metadata),
            ),
            remote,
        )

    call = create


class Runs:
    """``dashscope.Runs``: runs and the messages they add are mirrored."""

    @classmethod
    def create(
        cls,
        thread_id: str,
        *,
        assistant_id: str,
        model: str | None = None,
        instructions: str | None = None,
        metadata: dict[str, Any] | None = None,
        workspace: str | None = None,
        api_key: str | None = None,
        **kwargs: Any,
    ) -> Any:
        store, remote = _store(api_key)
        return _sdk_result(
            lambda: _mirrored(
                store, thread_id, workspace,
                lambda: store.start_run(
                    thread_id, assistant_id=assistant_id, model=model,
                    instructions=instructions, metadata=metadata,
                ),
            ),
            remote,
        )

    call = create

    @classmethod
    def retrieve(
        cls, run_id: str, *, thread_id: str, workspace: str | None = None,
        api_key: str | None = None, **kwargs: Any,
    ) -> Any:
        _, remote = _store(api_key)
        return _sdk_result(
            lambda: remote.retrieve_run(run_id, thread_id=thread_id, workspace=workspace), remote
        )

    get = retrieve

    @classmethod
    def wait(
        cls, run_id: str, *, thread_id: str, timeout_seconds: float = float("inf"),
        workspace: str | None = None, api_key: str | None = None, **kwargs: Any,
    ) -> Any:
        """Wait for the run to end; mirrors it and the messages it added."""
        store, remote = _store(api_key)
        return _sdk_result(
            lambda: _mirrored(
                store, thread_id, workspace,
                lambda: store.wait_run(
                    run_id, thread_id=thread_id, timeout=min(timeout_seconds, 24 * 3600.0),
                    poll_interval=1.0,
                ),
            ),
            remote,
        )
