"""Recording what passed through the facade: SDK objects become rows, cheaply.

:mod:`threadstore.dashscope` calls the SDK itself and hands every object that came
back to :class:`Mirror`:

* threads, messages, runs, run steps and assistants are upserted by id. An upsert
  never lets an older state overwrite a newer one: a run or step moves forward
  only (``queued`` → ``in_progress``/``requires_action`` → an end; a late event or
  a stale retrieve cannot set a ``completed`` run back), a message keeps its text
  once it has one, ``last_active`` never moves backwards;
* an object of a thread the mirror does not know yet brings a row for that
  thread (in the workspace of the call), so nothing that passed through is lost;
* calls that change something on DashScope (create, update, a run, a tool output)
  move the thread's ``last_active``; reads do not.

**Cost.** The facade promises to cost next to nothing on top of the SDK, so the
mirror's writes are made by a background writer thread (:meth:`Mirror.submit`),
in one transaction per burst of calls, over one held connection, with statements
compiled once per database and run on the driver directly (the driver releases the
GIL while the database works). :meth:`Mirror.flush` waits for them.

Thread creation is the exception to "record afterwards": :meth:`Mirror.intent`
writes a ``creating`` row *before* the remote create, :meth:`Mirror.settle` turns
it into the thread (or :meth:`drop_intent` drops it) right after — synchronously,
the store's create protocol: at every moment the thread is either recorded or was
never created.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, bindparam, case, delete, func, insert, select, update
from sqlalchemy.sql.expression import ClauseElement

from . import db
from ._rules import ThreadStatus
from .codec import Codec
from .errors import StoreError
from .models import (
    ASSISTANTS,
    MESSAGES,
    RUN_RANK,
    RUN_STEPS,
    RUNS,
    THREADS,
    assistants,
    messages,
    run_steps,
    runs,
    threads,
    utcnow,
)
from .remote import _error_text, _get, _ts, parse_message, parse_run, parse_thread

__all__ = ["RUN_RANK", "Mirror"]

log = logging.getLogger(__name__)


_ACTIVE = str(ThreadStatus.ACTIVE)
_CREATING = str(ThreadStatus.CREATING)
_BATCH = 200
"""Most observations written in one transaction."""
_GATHER = 0.02
"""Seconds the writer waits for more observations to share a transaction with.

The mirror trails the calls by at most this much (``flush()`` does not wait for
it). At 5 ms the writer committed about once per round of four zero-latency calls,
and its transactions — each taking SQLite's write lock, which a create's
synchronous intent row then waited for — made the facade 1.16-1.23x the plain SDK;
at 20 ms it is 1.07-1.08x (``bench_facade.py``). A process killed outright loses
what was queued: now up to 20 ms of observations instead of 5 ms (never a thread:
its intent and settling are written before ``Threads.create`` returns)."""


Statement = ClauseElement | Callable[[str], ClauseElement]
"""A statement, or a function building it for a database (by dialect name)."""


def _p(name: str, column: Any) -> Any:
    return bindparam(name, type_=column.type)


# ---------------------------------------------------------------------- statements
# Built once, compiled once per database (db.Prepared).

_T = threads.c
_THREAD_EXISTS = select(_T.ttl_seconds).where(_T.thread_id == _p("tid", _T.thread_id))
_INSERT_THREAD = insert(threads).values(
    thread_id=_p("thread_id", _T.thread_id),
    workspace=_p("workspace", _T.workspace),
    user_id=_p("user_id", _T.user_id),
    created_at=_p("created_at", _T.created_at),
    last_active=_p("last_active", _T.last_active),
    metadata=_p("metadata", _T.metadata),
    status=_p("status", _T.status),
)


def _stub_thread(dialect: str) -> ClauseElement:
    return db.insert_ignore(threads, dialect).values(
        thread_id=_p("thread_id", _T.thread_id),
        workspace=_p("workspace", _T.workspace),
        created_at=_p("created_at", _T.created_at),
        last_active=_p("last_active", _T.last_active),
        metadata=_p("metadata", _T.metadata),
        status=_ACTIVE,
    )
_TOUCH_VALUES = {
    "last_active": _p("at", _T.last_active),
    "attempts": 0,
    "last_error": None,
    "next_attempt_at": None,
}
# The common case in one statement: a thread without its own TTL.
_TOUCH_PLAIN = (
    update(threads)
    .where(
        _T.thread_id == _p("tid", _T.thread_id),
        _T.last_active < _p("at", _T.last_active),
        _T.ttl_seconds.is_(None),
    )
    .values(**_TOUCH_VALUES)
)
_TOUCH_TTL = (
    update(threads)
    .where(_T.thread_id == _p("tid", _T.thread_id), _T.last_active < _p("at", _T.last_active))
    .values(ttl_expires_at=_p("ttl_at", _T.ttl_expires_at), **_TOUCH_VALUES)
)
_SET_THREAD_META = (
    update(threads)
    .where(_T.thread_id == _p("tid", _T.thread_id))
    .values(metadata=_p("meta", _T.metadata))
)
_ACTIVATE = (
    update(threads)
    .where(_T.thread_id == _p("intent_id", _T.thread_id))
    .values(
        thread_id=_p("new_id", _T.thread_id),
        status=_ACTIVE,
        created_at=_p("created_at", _T.created_at),
        last_active=_p("last_active", _T.last_active),
    )
)
_DROP_INTENT = delete(threads).where(_T.thread_id == _p("intent_id", _T.thread_id))
_KEEP_INTENT = (
    update(threads)
    .where(_T.thread_id == _p("intent_id", _T.thread_id))
    .values(last_error=_p("reason", _T.last_error))
)

_M = messages.c


def _insert_message(dialect: str) -> ClauseElement:
    return db.insert_ignore(messages, dialect).values({c.name: _p(c.name, c) for c in _M})


_UPDATE_MESSAGE = (
    update(messages)
    .where(_M.message_id == _p("message_id", _M.message_id))
    .values(
        metadata=_p("metadata", _M.metadata),
        # A message's text only grows: a stream's early events carry none.
        content=func.coalesce(_p("content", _M.content), _M.content),
    )
)

_R = runs.c
_RUN_FIELDS = (
    "assistant_id", "model", "started_at", "completed_at", "failed_at", "last_error",
    "prompt_tokens", "completion_tokens", "total_tokens", "tool_calls",
)


def _insert_run(dialect: str) -> ClauseElement:
    return db.insert_ignore(runs, dialect).values({c.name: _p(c.name, c) for c in _R})


_UPDATE_RUN = (
    update(runs)
    .where(
        _R.run_id == _p("run_id", _R.run_id),
        case(RUN_RANK, value=_R.status, else_=0) <= bindparam("rank"),
    )
    .values(
        status=_p("status", _R.status),
        # Fields an answer leaves empty keep what an earlier answer said.
        **{f: func.coalesce(_p(f, _R[f]), _R[f]) for f in _RUN_FIELDS},
    )
)


_RUN_TOOL_CALLS = select(_R.tool_calls).where(_R.run_id == _p("run_id", _R.run_id))
_SET_RUN_TOOL_CALLS = (
    update(runs)
    .where(_R.run_id == _p("run_id", _R.run_id))
    .values(tool_calls=_p("tool_calls", _R.tool_calls))
)

_S = run_steps.c
_STEP_FIELDS = (
    "assistant_id", "message_id", "tool_calls", "last_error", "prompt_tokens",
    "completion_tokens", "total_tokens", "completed_at", "failed_at", "cancelled_at",
    "expired_at",
)


def _insert_step(dialect: str) -> ClauseElement:
    return db.insert_ignore(run_steps, dialect).values({c.name: _p(c.name, c) for c in _S})


_UPDATE_STEP = (
    update(run_steps)
    .where(
        _S.step_id == _p("step_id", _S.step_id),
        # A step only ends: a late in_progress snapshot cannot reopen it.
        case((_S.status == "in_progress", 0), else_=1) <= bindparam("rank"),
    )
    .values(
        status=_p("status", _S.status),
        **{f: func.coalesce(_p(f, _S[f]), _S[f]) for f in _STEP_FIELDS},
    )
)

_A = assistants.c


def _insert_assistant(dialect: str) -> ClauseElement:
    return db.insert_ignore(assistants, dialect).values({c.name: _p(c.name, c) for c in _A})


_UPDATE_ASSISTANT = (
    update(assistants)
    .where(_A.assistant_id == _p("assistant_id", _A.assistant_id))
    .values({c.name: _p(c.name, c) for c in _A if c.name not in ("assistant_id", "created_at")})
)
_DELETE_ASSISTANT = delete(assistants).where(
    _A.assistant_id == _p("assistant_id", _A.assistant_id)
)


class _Tx:
    """One open transaction on a driver connection."""

    def __init__(self, cursor: Any, compile_: Callable[[Statement], db.Prepared]) -> None:
        self._cursor = cursor
        self._compile = compile_

    def run(self, stmt: Statement, **values: Any) -> int:
        """Execute; the number of rows it changed."""
        compiled = self._compile(stmt)
        self._cursor.execute(compiled.sql, compiled.params(values))
        return int(self._cursor.rowcount)

    def first(self, stmt: Statement, **values: Any) -> Any:
        compiled = self._compile(stmt)
        self._cursor.execute(compiled.sql, compiled.params(values))
        return self._cursor.fetchone()


def _log_error(op: str, exc: BaseException) -> None:
    log.warning("%s: DashScope answered but the mirror write failed: %s", op, exc)


class Mirror:
    """Writes SDK objects into the store's tables; see the module docstring."""

    def __init__(
        self,
        engine: Engine,
        codec: Codec,
        on_error: Callable[[str, BaseException], None] | None = None,
    ) -> None:
        self.engine = engine
        self.codec = codec
        self._on_error = on_error or _log_error
        self._sqlite = engine.dialect.name == "sqlite"
        self._dbapi_error: type[BaseException] = engine.dialect.loaded_dbapi.Error
        self._compiled: dict[int, db.Prepared] = {}
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._writer_lock = threading.Lock()
        self._held: Any = None  # the writer thread's connection

    # ------------------------------------------------------------------ transactions

    def _compile(self, stmt: Statement) -> db.Prepared:
        found = self._compiled.get(id(stmt))
        if found is None:
            built = stmt if isinstance(stmt, ClauseElement) else stmt(self.engine.dialect.name)
            found = self._compiled[id(stmt)] = db.Prepared(built, self.engine.dialect, None)
        return found

    @contextlib.contextmanager
    def _transaction(self, *, hold: bool = False) -> Iterator[_Tx]:
        """One write transaction on a driver connection; database errors as StoreError.

        ``hold`` keeps the connection for the next call (the writer thread's).
        """
        raw = self._held if hold and self._held is not None else self.engine.raw_connection()
        cursor = raw.cursor()
        try:
            if self._sqlite:
                cursor.execute("BEGIN IMMEDIATE")
            yield _Tx(cursor, self._compile)
            raw.commit()
        except BaseException as exc:
            try:
                raw.rollback()
            except Exception:  # noqa: BLE001 - a broken connection is replaced below
                raw.invalidate()
                hold = False
            if hold:
                self._held = raw
            else:
                self._held = None if raw is self._held else self._held
                raw.close()
            if isinstance(exc, self._dbapi_error):
                raise StoreError(f"mirror write failed: {exc}") from exc
            raise
        finally:
            cursor.close()
        if hold:
            self._held = raw
        else:
            raw.close()

    # ------------------------------------------------------------------ create protocol

    def intent(self, *, user_id: Any, workspace: str | None, metadata: Any) -> str:
        """Write the ``creating`` row of a thread about to be created; its id.

        Raises :class:`~threadstore.errors.StoreError` if the database is down,
        so that nothing is created remotely that the mirror could not know.
        """
        try:
            plain = metadata if isinstance(metadata, Mapping) else None
            stored_meta = THREADS.row({"metadata": plain}, self.codec)["metadata"]
        except Exception:  # noqa: BLE001 - the SDK will refuse it itself, as it always did
            stored_meta = THREADS.row({"metadata": None}, self.codec)["metadata"]
        intent_id = f"creating_{uuid.uuid4().hex}"
        now = utcnow()
        with self._transaction() as tx:
            tx.run(
                _INSERT_THREAD,
                thread_id=intent_id,
                workspace=workspace,
                user_id=user_id if isinstance(user_id, str) else None,
                created_at=now,
                last_active=now,
                metadata=stored_meta,
                status=_CREATING,
            )
        return intent_id

    def settle(self, tx: _Tx, *, intent_id: str, thread: Any) -> None:
        """The remote create answered with ``thread``: the intent row becomes it.

        Written at once by :meth:`settle_now`, not queued behind other
        observations: a process killed after DashScope answered must leave, at
        worst for the instant of one commit, an intent row that does not yet name
        the thread (as :meth:`ThreadStore.create_thread` does). A thread id that is
        already mirrored (another call saw the thread first) keeps that row and
        drops the intent.
        """
        remote = parse_thread(thread)
        now = utcnow()
        if tx.first(_THREAD_EXISTS, tid=remote.id) is not None:
            tx.run(_DROP_INTENT, intent_id=intent_id)
            return
        tx.run(
            _ACTIVATE,
            intent_id=intent_id,
            new_id=remote.id,
            created_at=remote.created_at or now,
            last_active=now,
        )

    def settle_now(self, *, intent_id: str, thread: Any) -> None:
        """:meth:`settle` in a transaction of its own, before the caller gets the answer."""
        with self._transaction() as tx:
            self.settle(tx, intent_id=intent_id, thread=thread)

    def drop_intent(self, intent_id: str) -> None:
        """The remote create certainly did not happen: forget the intent row."""
        with self._transaction() as tx:
            tx.run(_DROP_INTENT, intent_id=intent_id)

    def keep_intent(self, intent_id: str, reason: str) -> None:
        """The remote create may have happened: keep the row (``stats`` counts it)."""
        with self._transaction() as tx:
            tx.run(_KEEP_INTENT, intent_id=intent_id,
                   reason=f"create outcome unknown: {reason}"[:2000])

    # ------------------------------------------------------------------ observations

    def record(
        self,
        tx: _Tx,
        *,
        workspace: str | None,
        threads_seen: Sequence[Any] = (),
        messages_seen: Sequence[Any] = (),
        runs_seen: Sequence[Any] = (),
        thread_id: str | None = None,
        active: bool = False,
        fresh: bool = False,
    ) -> None:
        """Upsert what one call returned, within the transaction ``tx``.

        ``thread_id`` names the thread the call was about (for objects that do not
        carry it); ``active`` says the call changed something, so the thread's
        ``last_active`` moves; ``fresh`` says the objects are new (a create), so
        they are inserted first and updated only if they were known after all.
        """
        now = utcnow()
        parsed_threads = [parse_thread(t) for t in threads_seen]
        parsed_messages = [parse_message(m, thread_id) for m in messages_seen]
        parsed_runs = [parse_run(r, thread_id) for r in runs_seen]
        involved = dict.fromkeys(
            [t.id for t in parsed_threads]
            + [m.thread_id for m in parsed_messages]
            + [r.thread_id for r in parsed_runs]
            + ([thread_id] if thread_id else [])
        )
        for tid in involved:
            self._thread_row(tx, tid, workspace, now, active=active)
        for t in parsed_threads:
            tx.run(_SET_THREAD_META, tid=t.id,
                   meta=THREADS.row({"metadata": t.metadata}, self.codec)["metadata"])
        if parsed_messages:
            self._messages(tx, parsed_messages, now)
        if parsed_runs:
            self._runs(tx, parsed_runs, now, fresh=fresh)

    def _thread_row(
        self, tx: _Tx, tid: str, workspace: str | None, now: datetime, *, active: bool
    ) -> None:
        if active and tx.run(_TOUCH_PLAIN, tid=tid, at=now):
            return
        found = tx.first(_THREAD_EXISTS, tid=tid)
        if found is None:
            tx.run(
                _stub_thread, thread_id=tid, workspace=workspace, created_at=now,
                last_active=now,
                metadata=THREADS.row({"metadata": None}, self.codec)["metadata"],
            )
        elif active and found[0] is not None:
            tx.run(_TOUCH_TTL, tid=tid, at=now, ttl_at=now + timedelta(seconds=found[0]))

    def _messages(self, tx: _Tx, items: Sequence[Any], now: datetime) -> None:
        # Oldest first, ties nudged by a microsecond so the stored order is the remote one.
        ordered = sorted(items, key=lambda m: m.created_at or now)
        previous: datetime | None = None
        for m in ordered:
            at = m.created_at or now
            if previous is not None and at <= previous:
                at = previous + timedelta(microseconds=1)
            previous = at
            row = MESSAGES.row(
                {
                    "message_id": m.id, "thread_id": m.thread_id, "role": m.role,
                    "content": m.content or None, "created_at": at, "run_id": m.run_id,
                    "assistant_id": m.assistant_id, "metadata": m.metadata,
                },
                self.codec,
            )
            content = row["content"]
            if content is None:
                row["content"] = MESSAGES.row({"content": ""}, self.codec)["content"]
            if not tx.run(_insert_message, **row):
                tx.run(_UPDATE_MESSAGE, message_id=m.id, metadata=row["metadata"],
                       content=content)

    def _runs(self, tx: _Tx, items: Sequence[Any], now: datetime, *, fresh: bool) -> None:
        latest: dict[str, Any] = {}
        for r in items:  # within one answer, the furthest state of each run wins
            seen = latest.get(r.id)
            if seen is None or RUN_RANK.get(r.status, 0) >= RUN_RANK.get(seen.status, 0):
                latest[r.id] = r
        for r in latest.values():
            values = {f: getattr(r, f, None) for f in _RUN_FIELDS}
            calls = _tool_calls(_get(_get(_get(r.raw, "required_action"),
                                          "submit_tool_outputs"), "tool_calls"))
            values["tool_calls"] = json.dumps(calls, ensure_ascii=False) if calls else None
            values = RUNS.row(values, self.codec)
            rank = RUN_RANK.get(r.status, 0)
            if not fresh and tx.run(_UPDATE_RUN, run_id=r.id, status=r.status, rank=rank,
                                    **values):
                continue
            inserted = tx.run(
                _insert_run, run_id=r.id, thread_id=r.thread_id, status=r.status,
                created_at=r.created_at or now, **values,
            )
            if fresh and not inserted:
                tx.run(_UPDATE_RUN, run_id=r.id, status=r.status, rank=rank, **values)

    # ------------------------------------------------------------------ steps, assistants

    def record_outputs(
        self, tx: _Tx, *, run_id: str, thread_id: str, outputs: Sequence[Any]
    ) -> None:
        """Add the tool outputs the caller submitted to the run's tool calls."""
        found = tx.first(_RUN_TOOL_CALLS, run_id=run_id)
        if found is None:
            return
        text = RUNS.plain({"tool_calls": found[0]}, self.codec)["tool_calls"]
        loaded = json.loads(text) if text else []
        calls = [c for c in loaded if isinstance(c, dict)] if isinstance(loaded, list) else []
        by_id = {c.get("id"): c for c in calls}
        for item in outputs:
            call_id, output = _get(item, "tool_call_id"), _get(item, "output")
            if call_id in by_id:
                by_id[call_id]["output"] = output
            else:
                calls.append({"id": call_id, "output": output})
        stored = RUNS.row({"tool_calls": json.dumps(calls, ensure_ascii=False)}, self.codec)
        tx.run(_SET_RUN_TOOL_CALLS, run_id=run_id, tool_calls=stored["tool_calls"])

    def record_steps(self, tx: _Tx, *, workspace: str | None, steps: Sequence[Any]) -> None:
        """Upsert run steps (with their tool calls and usage); a step never reopens."""
        now = utcnow()
        for step in steps:
            step_id, thread_id = _get(step, "id"), _get(step, "thread_id")
            if not isinstance(step_id, str) or not isinstance(thread_id, str):
                continue
            self._thread_row(tx, thread_id, workspace, now, active=False)
            details = _get(step, "step_details")
            usage = _get(step, "usage")
            calls = _tool_calls(_get(details, "tool_calls"))
            status = str(_get(step, "status") or "in_progress")
            values = RUN_STEPS.row(
                {
                    "step_id": step_id,
                    "run_id": str(_get(step, "run_id") or ""),
                    "thread_id": thread_id,
                    "assistant_id": _get(step, "assistant_id"),
                    "type": str(_get(step, "type") or _get(details, "type") or "unknown"),
                    "status": status,
                    "message_id": _get(_get(details, "message_creation"), "message_id"),
                    "tool_calls": json.dumps(calls, ensure_ascii=False) if calls else None,
                    "last_error": _error_text(_get(step, "last_error")),
                    "prompt_tokens": _int(_get(usage, "prompt_tokens")),
                    "completion_tokens": _int(_get(usage, "completion_tokens")),
                    "total_tokens": _int(_get(usage, "total_tokens")),
                    "created_at": _ts(_get(step, "created_at")) or now,
                    "completed_at": _ts(_get(step, "completed_at")),
                    "failed_at": _ts(_get(step, "failed_at")),
                    "cancelled_at": _ts(_get(step, "cancelled_at")),
                    "expired_at": _ts(_get(step, "expired_at")),
                },
                self.codec,
            )
            if not tx.run(_insert_step, **values):
                rank = 0 if status == "in_progress" else 1
                changes = {f: values[f] for f in _STEP_FIELDS}
                tx.run(_UPDATE_STEP, step_id=step_id, status=status, rank=rank, **changes)

    def record_assistants(
        self, tx: _Tx, *, workspace: str | None, assistants: Sequence[Any]
    ) -> None:
        """Upsert assistants, in the workspace of the call (the latest answer wins)."""
        now = utcnow()
        for item in assistants:
            assistant_id = _get(item, "id")
            if not isinstance(assistant_id, str):
                continue
            tools = [_plain(t) for t in (_get(item, "tools") or [])]
            metadata = _get(item, "metadata")
            values = ASSISTANTS.row(
                {
                    "assistant_id": assistant_id,
                    "workspace": workspace,
                    "name": _get(item, "name"),
                    "model": _get(item, "model"),
                    "description": _get(item, "description"),
                    "instructions": _get(item, "instructions"),
                    "tools": json.dumps(tools, ensure_ascii=False),
                    "metadata": dict(metadata) if isinstance(metadata, Mapping) else {},
                    "created_at": _ts(_get(item, "created_at")) or now,
                    "seen_at": now,
                },
                self.codec,
            )
            if not tx.run(_insert_assistant, **values):
                values.pop("created_at")
                tx.run(_UPDATE_ASSISTANT, **values)

    def forget_assistant(self, tx: _Tx, *, assistant_id: str) -> None:
        """DashScope confirmed the assistant's delete: remove its row."""
        tx.run(_DELETE_ASSISTANT, assistant_id=assistant_id)

    # ------------------------------------------------------------------ write-behind

    def submit(self, op: str, method: str, kwargs: dict[str, Any]) -> None:
        """Queue ``self.<method>(tx, **kwargs)``; the writer thread applies it.

        The caller's call returns at once: the writes of a burst of calls share
        one transaction, made while the caller waits for DashScope's next answer.
        """
        with self._writer_lock:
            if self._writer is None or not self._writer.is_alive():
                self._writer = threading.Thread(
                    target=self._drain, name="threadstore-mirror", daemon=True
                )
                self._writer.start()
        self._queue.put((op, method, kwargs))

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything submitted so far is written (or failed); False on timeout."""
        with self._writer_lock:
            if self._writer is None or not self._writer.is_alive():
                return self._queue.empty()
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout)

    def _drain(self) -> None:
        while True:
            batch: list[tuple[str, str, dict[str, Any]]] = []
            waiters: list[threading.Event] = []
            stop = False
            item = self._queue.get()
            deadline = time.monotonic() + _GATHER
            while True:
                if isinstance(item, threading.Event):
                    waiters.append(item)
                elif item is None:
                    stop = True
                else:
                    batch.append(item)
                if stop or waiters or len(batch) >= _BATCH:
                    break
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
            self._apply(batch)
            for waiter in waiters:
                waiter.set()
            if stop:
                if self._held is not None:
                    self._held.close()
                    self._held = None
                return

    def _apply(self, batch: list[tuple[str, str, dict[str, Any]]]) -> None:
        if not batch:
            return
        try:
            with self._transaction(hold=True) as tx:
                for _, method, kwargs in batch:
                    getattr(self, method)(tx, **kwargs)
            return
        except Exception:  # noqa: BLE001 - one bad write must not lose the others
            if len(batch) == 1:
                op = batch[0][0]
                self._on_error(op, sys.exc_info()[1] or RuntimeError(op))
                return
        for item in batch:  # find the one that failed; write the rest
            self._apply([item])

    def close(self, timeout: float | None = None) -> bool:
        """Write what is queued, then stop the writer thread; False if ``timeout`` passed."""
        with self._writer_lock:
            writer, self._writer = self._writer, None
        if writer is not None and writer.is_alive():
            self._queue.put(None)
            writer.join(timeout)
            return not writer.is_alive()
        return True


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) else None


def _plain(obj: Any) -> Any:
    """An SDK object (or a mapping, list …) as plain JSON-able values."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if hasattr(obj, "__dict__"):
        return {k: _plain(v) for k, v in vars(obj).items() if not k.startswith("_")}
    return obj


def _tool_calls(calls: Any) -> list[dict[str, Any]]:
    """Tool calls (of a required action or a step) as ``{id, type, name, arguments, output}``."""
    out: list[dict[str, Any]] = []
    for call in calls or ():
        function = _get(call, "function")
        entry: dict[str, Any] = {"id": _get(call, "id"), "type": _get(call, "type")}
        if function is not None:
            entry |= {
                "name": _get(function, "name"),
                "arguments": _get(function, "arguments"),
                "output": _get(function, "output"),
            }
        else:
            details = _plain(call)
            details.pop("id", None)
            details.pop("type", None)
            entry |= details
        out.append(entry)
    return out
