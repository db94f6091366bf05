"""Drop-in replacement for the ``dashscope`` SDK's Assistant API, with every call mirrored.

Change one import line and everything your code sends and gets back is recorded::

    # from dashscope import Assistants, Threads, Messages, Runs, Steps
    from threadstore.dashscope import Assistants, Threads, Messages, Runs, Steps

    thread = Threads.create(metadata={"created_by": "u1"}, user_id="u1")
    Messages.create(thread.id, content="hello")
    for event, obj in Runs.create(thread.id, assistant_id="asst_…", stream=True):
        ...                                     # the SDK's own events, mirrored as they pass

**Observe, don't reinterpret.** Every method has the SDK's signature, calls the
SDK's method of the same name with the caller's arguments unchanged, and returns
the SDK's own result unchanged — its objects, its error objects (the SDK does not
raise on HTTP errors), its exceptions, its stream (a generator yielding exactly the
SDK's events). It sends no request the SDK would not send. The only addition is
``user_id=`` on thread creation, which travels in ``**kwargs`` and is never
forwarded to DashScope. Names not wrapped here (``Files``, ``Thread``, ``Run`` …)
resolve to the SDK's own.

What is recorded, from which call, into the store at ``THREADSTORE_DATABASE_URL``
(default ``sqlite:///threadstore.db``; one store per database URL, whatever the
``api_key``): see :mod:`threadstore._mirror` and the README. A create's intent row
and its settling (the row taking the remote id) are written before the call
returns; everything else is recorded on a background writer thread (:func:`flush`
waits for it; :func:`close_stores`, also run at exit, flushes). A mirror write that
fails never changes what the caller gets: it is logged on ``threadstore.dashscope``
and counted (:func:`mirror_failures`).

Two orders are kept from :class:`~threadstore.ThreadStore`: a thread create (also
``create_and_run`` / ``create_thread_and_run``) writes its intent row *before* the
request (a dead database raises :class:`~threadstore.errors.StoreError` and nothing
is sent); ``Threads.delete`` removes the local row only once DashScope confirmed
(through :meth:`ThreadStore.delete_thread`'s path, so a failed delete is retried by
the sweep).
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from collections.abc import Iterator
from typing import Any

from . import db
from ._mirror import Mirror
from .errors import ConfigError, RemoteError, StoreError, ThreadExpired, ThreadNotFound
from .remote import _sdk, check_delete_result, outcome_unknown
from .store import ENV_URL, ThreadStore

__all__ = [
    "Assistants",
    "Messages",
    "Runs",
    "Steps",
    "Threads",
    "close_stores",
    "flush",
    "mirror_failures",
]

log = logging.getLogger(__name__)

_lock = threading.Lock()
_stores: dict[str, tuple[ThreadStore, Mirror]] = {}
_failures: dict[str, int] = {}

Json = dict[str, Any]
# Aliases: inside the classes below, ``list`` is the SDK-compatible method of that name.
JsonList = list[Json]
StrList = list[str]


def _store() -> tuple[ThreadStore, Mirror]:
    """The store (and its mirror) for ``THREADSTORE_DATABASE_URL``: one per URL."""
    url = os.environ.get(ENV_URL) or db.DEFAULT_URL
    found = _stores.get(url)
    if found is not None:
        return found
    with _lock:
        if url not in _stores:
            store = ThreadStore(url)
            _stores[url] = (store, Mirror(store.engine, store.codec, on_error=_failed))
        return _stores[url]


def flush(timeout: float | None = None) -> bool:
    """Wait until every object that passed through so far is in the mirror.

    Recording happens on a background thread (it takes no time from your calls);
    a mirror read right after a call — in a test, say — calls this first. False if
    ``timeout`` seconds passed first.
    """
    with _lock:
        mirrors = [mirror for _, mirror in _stores.values()]
    return all(mirror.flush(timeout) for mirror in mirrors)


def close_stores(timeout: float | None = None) -> None:
    """Write what is pending (waiting at most ``timeout`` s each), then close the stores."""
    with _lock:
        opened = list(_stores.values())
        _stores.clear()
    for store, mirror in opened:
        if not mirror.close(timeout):
            log.warning("mirror writes still pending after %ss were abandoned", timeout)
        store.close()


def _forget_after_fork() -> None:
    # A forked child must not share the parent's connections or writer thread.
    _stores.clear()


# At exit, pending writes get a bounded wait: a dead database must not hang the app.
atexit.register(close_stores, timeout=30.0)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


def mirror_failures() -> dict[str, int]:
    """Mirror writes that failed in this process, by operation (``{"messages.create": 1}``)."""
    with _lock:
        return dict(_failures)


def _failed(op: str, exc: BaseException) -> None:
    with _lock:
        _failures[op] = _failures.get(op, 0) + 1
    log.warning("%s: DashScope answered but the mirror write failed: %s", op, exc)


def _ok(result: Any) -> bool:
    """True for a successful SDK answer (the SDK returns errors as objects)."""
    return getattr(result, "status_code", None) in (200, 201)


_THREAD_SCOPED = ("threads.", "messages.", "runs.", "steps.")


def _observe(op: str, method: str, **kwargs: Any) -> None:
    """Queue one mirror write (``Mirror.<method>``); failures are logged and counted.

    Called for DashScope's successful answers only: one about a thread also proves
    that DashScope sees the call's workspace, so a later 404 there is believed
    without a canary request (see :mod:`threadstore.trust`).
    """
    try:
        store, mirror = _store()
        mirror.submit(op, method, kwargs)
        if "workspace" in kwargs and op.startswith(_THREAD_SCOPED):
            store.trust.prove(kwargs["workspace"])
    except Exception as exc:  # noqa: BLE001 - nothing may change what DashScope answered
        _failed(op, exc)


def _prove(workspace: str | None) -> None:
    """DashScope just created a thread in ``workspace``: it sees that scope."""
    try:
        _store()[0].trust.prove(workspace)
    except Exception as exc:  # noqa: BLE001
        _failed("threads.create", exc)


def _data(result: Any) -> list[Any]:
    return list(getattr(result, "data", None) or [])


# --------------------------------------------------------------------------- creates


def _intent(*, user_id: Any, workspace: str | None, metadata: Any) -> str:
    """Write a create's intent row (StoreError, before anything is sent, if it cannot)."""
    return _store()[1].intent(user_id=user_id, workspace=workspace, metadata=metadata)


def _settle_failed_create(op: str, intent_id: str, exc: BaseException) -> None:
    try:
        mirror = _store()[1]
        if outcome_unknown(exc):
            mirror.keep_intent(intent_id, f"{type(exc).__name__}: {exc}")
        else:
            mirror.drop_intent(intent_id)
    except Exception as err:  # noqa: BLE001
        _failed(op, err)


def _drop_intent(op: str, intent_id: str) -> None:
    try:
        _store()[1].drop_intent(intent_id)
    except Exception as exc:  # noqa: BLE001
        _failed(op, exc)


def _settle(op: str, intent_id: str, thread: Any) -> None:
    """Name the created thread in its intent row now, synchronously (never queued).

    The one mirror write a caller waits for besides the intent: until it commits,
    a crash leaves a ``creating`` row that cannot name the remote thread.
    """
    try:
        _store()[1].settle_now(intent_id=intent_id, thread=thread)
    except Exception as exc:  # noqa: BLE001 - nothing may change what DashScope answered
        _failed(op, exc)


def _settle_answer(op: str, intent_id: str, result: Any, thread_id: str | None) -> None:
    if _ok(result) and thread_id:
        _settle(op, intent_id, {"id": thread_id})
    else:
        _drop_intent(op, intent_id)


def _thread_metadata(thread: Any) -> Any:
    """The metadata of a create-and-run's ``thread`` argument."""
    return thread.get("metadata") if isinstance(thread, dict) else None


# --------------------------------------------------------------------------- streams


_RUN_EVENTS = frozenset(
    f"thread.run.{s}"
    for s in (
        "created", "queued", "in_progress", "requires_action", "completed", "failed",
        "cancelled", "expired", "cancelling",
    )
)
_STEP_EVENTS = frozenset(
    f"thread.run.step.{s}"
    for s in ("created", "in_progress", "completed", "failed", "cancelled", "expired")
)
_MESSAGE_EVENTS = frozenset({"thread.message.completed", "thread.message.incomplete"})


def _mirrored_stream(
    op: str,
    events: Any,
    *,
    workspace: str | None,
    thread_id: str | None,
    intent_id: str | None = None,
    outputs: Json | None = None,
) -> Iterator[tuple[Any, Any]]:
    """Yield the SDK's events unchanged, each mirrored before it is handed on.

    Deltas are not written (the completed message and step carry the whole); a
    stream abandoned half-way leaves the mirror at the last complete state seen.
    """
    active = True  # the first write of a run moves last_active
    try:
        for event, obj in events:
            if outputs is not None and event in _RUN_EVENTS | _STEP_EVENTS:
                _observe(op, "record_outputs", **outputs)  # DashScope took them
                outputs = None
            if event == "thread.created" and intent_id is not None:
                new_id = getattr(obj, "id", None)
                if isinstance(new_id, str):
                    _settle(op, intent_id, obj)
                    intent_id, thread_id = None, new_id
            elif event in _RUN_EVENTS:
                tid = getattr(obj, "thread_id", None) or thread_id
                if intent_id is not None and isinstance(tid, str):
                    _settle_answer(op, intent_id, obj, tid)
                    intent_id = None
                _observe(op, "record", workspace=workspace, runs_seen=[obj], thread_id=tid,
                         active=active)
                active = False
            elif event in _STEP_EVENTS:
                _observe(op, "record_steps", workspace=workspace, steps=[obj])
            elif event in _MESSAGE_EVENTS:
                _observe(op, "record", workspace=workspace, messages_seen=[obj],
                         thread_id=thread_id)
            yield event, obj
    finally:
        if intent_id is not None:
            # The stream ended without naming the thread: it may exist all the same.
            _settle_failed_create(op, intent_id, _Unknown("the stream named no thread"))


class _Unknown(Exception):
    """Marks a create whose outcome the facade could not see."""


# --------------------------------------------------------------------------- Threads


class Threads:
    """``dashscope.Threads``: creates, updates and retrieves mirrored; delete remote-first."""

    @classmethod
    def call(
        cls,
        *,
        messages: JsonList | None = None,
        metadata: Json | None = None,
        workspace: str | None = None,
        api_key: str | None = None,
        **kwargs: Any,
    ) -> Any:
        return cls.create(
            messages=messages, metadata=metadata, workspace=workspace, api_key=api_key, **kwargs
        )

    @classmethod
    def create(
        cls,
        *,
        messages: JsonList | None = None,
        metadata: Json | None = None,
        workspace: str | None = None,
        api_key: str | None = None,
        **kwargs: Any,
    ) -> Any:
        """``Threads.create``; ``user_id=`` (not sent) is recorded with the thread.

        Messages passed here are mirrored once a call returns them (DashScope does
        not return their ids on create, and the facade sends nothing extra).
        """
        user_id = kwargs.pop("user_id", None)
        intent_id = _intent(user_id=user_id, workspace=workspace,
                            metadata=metadata)
        try:
            result = _sdk().Threads.create(
                messages=messages, metadata=metadata, workspace=workspace, api_key=api_key,
                **kwargs,
            )
        except BaseException as exc:
            _settle_failed_create("threads.create", intent_id, exc)
            raise
        if _ok(result):
            _settle("threads.create", intent_id, result)
            _prove(workspace)
        else:
            _drop_intent("threads.create", intent_id)
        return result

    @classmethod
    def get(
        cls, thread_id: str, *, workspace: str | None = None, api_key: str | None = None,
        **kwargs: Any,
    ) -> Any:
        result = _sdk().Threads.get(thread_id, workspace=workspace, api_key=api_key, **kwargs)
        _thread_seen("threads.retrieve", result, workspace, active=False)
        return result

    @classmethod
    def retrieve(
        cls, thread_id: str, *, workspace: str | None = None, api_key: str | None = None,
        **kwargs: Any,
    ) -> Any:
        result = _sdk().Threads.retrieve(thread_id, workspace=workspace, api_key=api_key, **kwargs)
        _thread_seen("threads.retrieve", result, workspace, active=False)
        return result

    @classmethod
    def update(
        cls,
        thread_id: str,
        *,
        metadata: Json | None = None,
        workspace: str | None = None,
        api_key: str | None = None,
        **kwargs: Any,
    ) -> Any:
        result = _sdk().Threads.update(
            thread_id, metadata=metadata, workspace=workspace, api_key=api_key, **kwargs
        )
        _thread_seen("threads.update", result, workspace, active=True)
        return result

    @classmethod
    def delete(
        cls, thread_id: Any, *, workspace: str | None = None, api_key: str | None = None,
        **kwargs: Any,
    ) -> Any:
        """``Threads.delete``: DashScope first; the local row goes once DashScope confirmed.

        The delete goes through :meth:`ThreadStore.delete_thread`'s path (claim,
        remote delete, local removal only on confirmation), with the SDK's request.
        """
        answers: list[Any] = []

        def send(_recorded_workspace: str | None) -> None:
            result = _sdk().Threads.delete(
                thread_id, workspace=workspace, api_key=api_key, **kwargs
            )
            answers.append(result)
            check_delete_result(result, thread_id)

        store = _mirrored_store()
        if store is not None and isinstance(thread_id, str):
            flush()  # what passed through before lands before the row may go
            try:
                store._delete_via(thread_id, send, workspace=workspace)
            except (ThreadNotFound, ThreadExpired, ConfigError):
                pass  # not ours to remove here (or a sweep is removing it): just send it
            except RemoteError:
                if not answers:
                    raise
            except StoreError as exc:
                _failed("threads.delete", exc)  # the local row stays; a sweep settles it
            if answers:
                return answers[-1]
        return _sdk().Threads.delete(thread_id, workspace=workspace, api_key=api_key, **kwargs)

    @classmethod
    def create_and_run(
        cls,
        *,
        assistant_id: str,
        thread: Json | None = None,
        model: str | None = None,
        instructions: str | None = None,
        additional_instructions: str | None = None,
        tools: JsonList | None = None,
        metadata: Json | None = None,
        workspace: str | None = None,
        api_key: str | None = None,
        **kwargs: Any,
    ) -> Any:
        user_id = kwargs.pop("user_id", None)
        meta = _thread_metadata(thread)
        intent_id = _intent(user_id=user_id, workspace=workspace,
                            metadata=meta)
        try:
            result = _sdk().Threads.create_and_run(
                assistant_id=assistant_id, thread=thread, model=model, instructions=instructions,
                additional_instructions=additional_instructions, tools=tools, metadata=metadata,
                workspace=workspace, api_key=api_key, **kwargs,
            )
        except BaseException as exc:
            _settle_failed_create("threads.create_and_run", intent_id, exc)
            raise
        _run_created("threads.create_and_run", intent_id, result, workspace)
        return result


def _mirrored_store() -> ThreadStore | None:
    try:
        return _store()[0]
    except Exception as exc:  # noqa: BLE001 - the delete itself must still go out
        _failed("threads.delete", exc)
        return None


def _thread_seen(op: str, result: Any, workspace: str | None, *, active: bool) -> None:
    if _ok(result):
        _observe(op, "record", workspace=workspace, threads_seen=[result], active=active)


def _run_created(op: str, intent_id: str | None, result: Any, workspace: str | None) -> None:
    """Settle a create-and-run's intent with the run's thread, and record the run."""
    tid = getattr(result, "thread_id", None) if _ok(result) else None
    if intent_id is not None:
        _settle_answer(op, intent_id, result, tid if isinstance(tid, str) else None)
    if isinstance(tid, str):
        _observe(op, "record", workspace=workspace, runs_seen=[result], thread_id=tid,
                 active=True, fresh=True)


# --------------------------------------------------------------------------- Messages


def _messages_seen(
    op: str, result: Any, workspace: str | None, thread_id: str, *, active: bool,
    listed: bool = False,
) -> None:
    if _ok(result):
        items = _data(result) if listed else [result]
        _observe(op, "record", workspace=workspace, messages_seen=items,
                 thread_id=thread_id, active=active)


class Messages:
    """``dashscope.Messages``: every message created, listed, retrieved or updated is mirrored."""

    @classmethod
    def call(
        cls,
        thread_id: str,
        *,
        content: str,
        role: str = "user",
        file_ids: StrList = [],  # noqa: B006 - the SDK's own default
        metadata: object | None = None,
        workspace: str | None = None,
        api_key: str | None = None,
        **kwargs: Any,
    ) -> Any:
        # Like the SDK's Messages.call, which does not pass api_key on to create.
        return cls.create(
            thread_id, content=content, role=role, file_ids=file_ids, metadata=metadata,
            workspace=workspace, **kwargs,
        )

    @classmethod
    def create(
        cls,
        thread_id: str,
        *,
        content: str,
        role: str = "user",
        file_ids: StrList = [],  # noqa: B006 - the SDK's own default
        metadata: object | None = None,
        workspace: str | None = None,
        api_key: str | None = None,
        **kwargs: Any,
    ) -> Any:
        result = _sdk().Messages.create(
            thread_id, content=content, role=role, file_ids=file_ids, metadata=metadata,
            workspace=workspace, api_key=api_key, **kwargs,
        )
        _messages_seen("messages.create", result, workspace, thread_id, active=True)
        return result

    @classmethod
    def retrieve(
        cls, message_id: str, *, thread_id: str, workspace: str | None = None,
        api_key: str | None = None, **kwargs: Any,
    ) -> Any:
        result = _sdk().Messages.retrieve(
            message_id, thread_id=thread_id, workspace=workspace, api_key=api_key, **kwargs
        )
        _messages_seen("messages.retrieve", result, workspace, thread_id, active=False)
        return result

    @classmethod
    def get(
        cls, message_id: str, *, thread_id: str, workspace: str | None = None,
        api_key: str | None = None, **kwargs: Any,
    ) -> Any:
        result = _sdk().Messages.get(
            message_id, thread_id=thread_id, workspace=workspace, api_key=api_key, **kwargs
        )
        _messages_seen("messages.retrieve", result, workspace, thread_id, active=False)
        return result

    @classmethod
    def list(
        cls,
        thread_id: str,
        *,
        limit: int | None = None,
        order: str | None = None,
        after: str | None = None,
        before: str | None = None,
        workspace: str | None = None,
        api_key: str | None = None,
        **kwargs: Any,
    ) -> Any:
        result = _sdk().Messages.list(
            thread_id, limit=limit, order=order, after=after, before=before,
            workspace=workspace, api_key=api_key, **kwargs,
        )
        _messages_seen("messages.list", result, workspace, thread_id, active=False, listed=True)
        return result

    @classmethod
    def update(
        cls,
        message_id: str,
        *,
        thread_id: str,
        metadata: Json | None = None,
        workspace: str | None = None,
        api_key: str | None = None,
        **kwargs: Any,
    ) -> Any:
        result = _sdk().Messages.update(
            message_id, thread_id=thread_id, metadata=metadata, workspace=workspace,
            api_key=api_key, **kwargs,
        )
        _messages_seen("messages.update", result, workspace, thread_id, active=True)
        return result


# --------------------------------------------------------------------------- Runs


def _run_answer(
    op: str, result: Any, workspace: str | None, thread_id: str, *, active: bool,
    stream: Any = False, fresh: bool = False,
) -> Any:
    """Record a run answer, or wrap the SDK's stream so its events are recorded."""
    if stream:
        return _mirrored_stream(op, result, workspace=workspace, thread_id=thread_id)
    if _ok(result):
        _observe(op, "record", workspace=workspace, runs_seen=[result],
                 thread_id=thread_id, active=active, fresh=fresh)
    return result


class Runs:
    """``dashscope.Runs``: runs from every call (and stream events) are mirrored."""

    @classmethod
    def create_thread_and_run(
        cls,
        *,
        assistant_id: str,
        thread: Json | None = None,
        model: str | None = None,
        instructions: str | None = None,
        additional_instructions: str | None = None,
        tools: JsonList | None = None,
        stream: bool | None = False,
        metadata: Json | None = None,
        workspace: str | None = None,
        extra_body: Json | None = None,
        api_key: str | None = None,
        **kwargs: Any,
    ) -> Any:
        user_id = kwargs.pop("user_id", None)
        meta = _thread_metadata(thread)
        op = "runs.create_thread_and_run"
        intent_id = _intent(user_id=user_id, workspace=workspace, metadata=meta)
        try:
            result = _sdk().Runs.create_thread_and_run(
                assistant_id=assistant_id, thread=thread, model=model, instructions=instructions,
                additional_instructions=additional_instructions, tools=tools, stream=stream,
                metadata=metadata, workspace=workspace, extra_body=extra_body, api_key=api_key,
                **kwargs,
            )
        except BaseException as exc:
            _settle_failed_create(op, intent_id, exc)
            raise
        if stream:
            return _mirrored_stream(op, result, workspace=workspace, thread_id=None,
                                    intent_id=intent_id)
        _run_created(op, intent_id, result, workspace)
        return result

    @classmethod
    def create(
        cls,
        thread_id: str,
        *,
        assistant_id: str,
        model: str | None = None,
        instructions: str | None = None,
        additional_instructions: str | None = None,
        tools: JsonList | None = None,
        metadata: Json | None = None,
        stream: bool | None = False,
        workspace: str | None = None,
        extra_body: Json | None = None,
        api_key: str | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        **kwargs: Any,
    ) -> Any:
        result = _sdk().Runs.create(
            thread_id, assistant_id=assistant_id, model=model, instructions=instructions,
            additional_instructions=additional_instructions, tools=tools, metadata=metadata,
            stream=stream, workspace=workspace, extra_body=extra_body, api_key=api_key,
            top_p=top_p, top_k=top_k, temperature=temperature, max_tokens=max_tokens, **kwargs,
        )
        return _run_answer("runs.create", result, workspace, thread_id, active=True,
                           stream=stream, fresh=True)

    @classmethod
    def call(
        cls,
        thread_id: str,
        *,
        assistant_id: str,
        model: str | None = None,
        instructions: str | None = None,
        additional_instructions: str | None = None,
        tools: JsonList | None = None,
        stream: bool | None = False,
        metadata: Json | None = None,
        workspace: str | None = None,
        extra_body: Json | None = None,
        api_key: str | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        **kwargs: Any,
    ) -> Any:
        return cls.create(
            thread_id, assistant_id=assistant_id, model=model, instructions=instructions,
            additional_instructions=additional_instructions, tools=tools, stream=stream,
            metadata=metadata, workspace=workspace, extra_body=extra_body, api_key=api_key,
            top_p=top_p, top_k=top_k, temperature=temperature, max_tokens=max_tokens, **kwargs,
        )

    @classmethod
    def list(
        cls,
        thread_id: str,
        *,
        limit: int | None = None,
        order: str | None = None,
        after: str | None = None,
        before: str | None = None,
        workspace: str | None = None,
        api_key: str | None = None,
        **kwargs: Any,
    ) -> Any:
        result = _sdk().Runs.list(
            thread_id, limit=limit, order=order, after=after, before=before,
            workspace=workspace, api_key=api_key, **kwargs,
        )
        if _ok(result):
            items = _data(result)
            _observe("runs.list", "record", workspace=workspace, runs_seen=items,
                     thread_id=thread_id)
        return result

    @classmethod
    def retrieve(
        cls, run_id: str, *, thread_id: str, workspace: str | None = None,
        api_key: str | None = None, **kwargs: Any,
    ) -> Any:
        result = _sdk().Runs.retrieve(
            run_id, thread_id=thread_id, workspace=workspace, api_key=api_key, **kwargs
        )
        return _run_answer("runs.retrieve", result, workspace, thread_id, active=False)

    @classmethod
    def get(
        cls, run_id: str, *, thread_id: str, workspace: str | None = None,
        api_key: str | None = None, **kwargs: Any,
    ) -> Any:
        result = _sdk().Runs.get(
            run_id, thread_id=thread_id, workspace=workspace, api_key=api_key, **kwargs
        )
        return _run_answer("runs.retrieve", result, workspace, thread_id, active=False)

    @classmethod
    def submit_tool_outputs(
        cls,
        run_id: str,
        *,
        thread_id: str,
        tool_outputs: JsonList,
        stream: bool | None = False,
        workspace: str | None = None,
        extra_body: Json | None = None,
        api_key: str | None = None,
        **kwargs: Any,
    ) -> Any:
        result = _sdk().Runs.submit_tool_outputs(
            run_id, thread_id=thread_id, tool_outputs=tool_outputs, stream=stream,
            workspace=workspace, extra_body=extra_body, api_key=api_key, **kwargs,
        )
        op = "runs.submit_tool_outputs"
        outputs = {"run_id": run_id, "thread_id": thread_id, "outputs": list(tool_outputs)}
        if stream:
            return _mirrored_stream(op, result, workspace=workspace, thread_id=thread_id,
                                    outputs=outputs)
        answer = _run_answer(op, result, workspace, thread_id, active=True)
        if _ok(result):
            _observe(op, "record_outputs", **outputs)
        return answer

    @classmethod
    def wait(
        cls,
        run_id: str,
        *,
        thread_id: str,
        timeout_seconds: float = float("inf"),
        workspace: str | None = None,
        api_key: str | None = None,
        **kwargs: Any,
    ) -> Any:
        result = _sdk().Runs.wait(
            run_id, thread_id=thread_id, timeout_seconds=timeout_seconds, workspace=workspace,
            api_key=api_key, **kwargs,
        )
        return _run_answer("runs.wait", result, workspace, thread_id, active=False)

    @classmethod
    def update(
        cls,
        run_id: str,
        *,
        thread_id: str,
        metadata: Json | None = None,
        workspace: str | None = None,
        api_key: str | None = None,
        **kwargs: Any,
    ) -> Any:
        result = _sdk().Runs.update(
            run_id, thread_id=thread_id, metadata=metadata, workspace=workspace,
            api_key=api_key, **kwargs,
        )
        return _run_answer("runs.update", result, workspace, thread_id, active=True)

    @classmethod
    def cancel(
        cls, run_id: str, *, thread_id: str, workspace: str | None = None,
        api_key: str | None = None, **kwargs: Any,
    ) -> Any:
        result = _sdk().Runs.cancel(
            run_id, thread_id=thread_id, workspace=workspace, api_key=api_key, **kwargs
        )
        return _run_answer("runs.cancel", result, workspace, thread_id, active=True)

    @classmethod
    def convert_stream_object(cls, event: Any, item: Any) -> Any:
        return _sdk().Runs.convert_stream_object(event, item)


# --------------------------------------------------------------------------- Steps


class Steps:
    """``dashscope.Steps``: listed and retrieved run steps are mirrored."""

    @classmethod
    def list(
        cls,
        run_id: str,
        *,
        thread_id: str,
        limit: int | None = None,
        order: str | None = None,
        after: str | None = None,
        before: str | None = None,
        workspace: str | None = None,
        api_key: str | None = None,
        **kwargs: Any,
    ) -> Any:
        result = _sdk().Steps.list(
            run_id, thread_id=thread_id, limit=limit, order=order, after=after, before=before,
            workspace=workspace, api_key=api_key, **kwargs,
        )
        if _ok(result):
            items = _data(result)
            _observe("steps.list", "record_steps", workspace=workspace, steps=items)
        return result

    @classmethod
    def retrieve(
        cls, step_id: str, *, thread_id: str, run_id: str, workspace: str | None = None,
        api_key: str | None = None, **kwargs: Any,
    ) -> Any:
        result = _sdk().Steps.retrieve(
            step_id, thread_id=thread_id, run_id=run_id, workspace=workspace, api_key=api_key,
            **kwargs,
        )
        _step_seen("steps.retrieve", result, workspace)
        return result

    @classmethod
    def get(
        cls, step_id: str, *, thread_id: str, run_id: str, workspace: str | None = None,
        api_key: str | None = None, **kwargs: Any,
    ) -> Any:
        result = _sdk().Steps.get(
            step_id, thread_id=thread_id, run_id=run_id, workspace=workspace, api_key=api_key,
            **kwargs,
        )
        _step_seen("steps.retrieve", result, workspace)
        return result


def _step_seen(op: str, result: Any, workspace: str | None) -> None:
    if _ok(result):
        _observe(op, "record_steps", workspace=workspace, steps=[result])


# --------------------------------------------------------------------------- Assistants


def _assistants_seen(op: str, result: Any, workspace: str | None, *, listed: bool = False) -> None:
    if _ok(result):
        items = _data(result) if listed else [result]
        _observe(op, "record_assistants", workspace=workspace, assistants=items)


class Assistants:
    """``dashscope.Assistants``: assistants mirrored; deleted locally once DashScope confirmed."""

    @classmethod
    def call(
        cls,
        *,
        model: str,
        name: str | None = None,
        description: str | None = None,
        instructions: str | None = None,
        tools: JsonList | None = None,
        file_ids: StrList | None = [],  # noqa: B006 - the SDK's own default
        metadata: Json | None = None,
        workspace: str | None = None,
        api_key: str | None = None,
        **kwargs: Any,
    ) -> Any:
        return cls.create(
            model=model, name=name, description=description, instructions=instructions,
            tools=tools, file_ids=file_ids, metadata=metadata, workspace=workspace,
            api_key=api_key, **kwargs,
        )

    @classmethod
    def create(
        cls,
        *,
        model: str,
        name: str | None = None,
        description: str | None = None,
        instructions: str | None = None,
        tools: JsonList | None = None,
        file_ids: StrList | None = [],  # noqa: B006 - the SDK's own default
        metadata: Json | None = None,
        workspace: str | None = None,
        api_key: str | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        **kwargs: Any,
    ) -> Any:
        result = _sdk().Assistants.create(
            model=model, name=name, description=description, instructions=instructions,
            tools=tools, file_ids=file_ids, metadata=metadata, workspace=workspace,
            api_key=api_key, top_p=top_p, top_k=top_k, temperature=temperature,
            max_tokens=max_tokens, **kwargs,
        )
        _assistants_seen("assistants.create", result, workspace)
        return result

    @classmethod
    def retrieve(
        cls, assistant_id: str, *, workspace: str | None = None, api_key: str | None = None,
        **kwargs: Any,
    ) -> Any:
        result = _sdk().Assistants.retrieve(
            assistant_id, workspace=workspace, api_key=api_key, **kwargs
        )
        _assistants_seen("assistants.retrieve", result, workspace)
        return result

    @classmethod
    def get(
        cls, assistant_id: str, *, workspace: str | None = None, api_key: str | None = None,
        **kwargs: Any,
    ) -> Any:
        result = _sdk().Assistants.get(assistant_id, workspace=workspace, api_key=api_key, **kwargs)
        _assistants_seen("assistants.retrieve", result, workspace)
        return result

    @classmethod
    def list(
        cls,
        *,
        limit: int | None = None,
        order: str | None = None,
        after: str | None = None,
        before: str | None = None,
        workspace: str | None = None,
        api_key: str | None = None,
        **kwargs: Any,
    ) -> Any:
        result = _sdk().Assistants.list(
            limit=limit, order=order, after=after, before=before, workspace=workspace,
            api_key=api_key, **kwargs,
        )
        _assistants_seen("assistants.list", result, workspace, listed=True)
        return result

    @classmethod
    def update(
        cls,
        assistant_id: str,
        *,
        model: str | None = None,
        name: str | None = None,
        description: str | None = None,
        instructions: str | None = None,
        tools: JsonList | None = None,
        file_ids: StrList | None = [],  # noqa: B006 - the SDK's own default
        metadata: Json | None = None,
        workspace: str | None = None,
        api_key: str | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        **kwargs: Any,
    ) -> Any:
        result = _sdk().Assistants.update(
            assistant_id, model=model, name=name, description=description,
            instructions=instructions, tools=tools, file_ids=file_ids, metadata=metadata,
            workspace=workspace, api_key=api_key, top_p=top_p, top_k=top_k,
            temperature=temperature, max_tokens=max_tokens, **kwargs,
        )
        _assistants_seen("assistants.update", result, workspace)
        return result

    @classmethod
    def cancel(
        cls,
        target: str,
        path: str | None = None,
        api_key: str | None = None,
        workspace: str | None = None,
        **kwargs: Any,
    ) -> Any:
        """The SDK's generic ``cancel`` (inherited by its Assistants), passed through."""
        return _sdk().Assistants.cancel(
            target, path=path, api_key=api_key, workspace=workspace, **kwargs
        )

    @classmethod
    def delete(
        cls, assistant_id: str, *, workspace: str | None = None, api_key: str | None = None,
        **kwargs: Any,
    ) -> Any:
        result = _sdk().Assistants.delete(
            assistant_id, workspace=workspace, api_key=api_key, **kwargs
        )
        if _ok(result) and getattr(result, "deleted", False) is True:
            _observe("assistants.delete", "forget_assistant", assistant_id=assistant_id)
        return result


def __getattr__(name: str) -> Any:
    """Names this module does not wrap resolve to the SDK's own (``Files``, ``Run`` …)."""
    if name.startswith("__"):
        raise AttributeError(name)
    try:
        return getattr(_sdk(), name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
