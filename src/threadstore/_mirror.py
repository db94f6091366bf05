"""Recording what passed through the facade: SDK objects become rows.

:mod:`threadstore.dashscope` calls the SDK itself and hands every object that
came back to :class:`Mirror`, which writes it in **one transaction per call**
with statements built once:

* threads, messages, runs, run steps and assistants are upserted by id. An upsert
  never lets an older state overwrite a newer one: a run or step moves forward
  only (``queued`` → ``in_progress``/``requires_action`` → an end; a late event or
  a stale retrieve cannot set a ``completed`` run back), a message keeps its text
  once it has one;
* an object of a thread the mirror does not know yet brings a row for that
  thread (in the workspace of the call), so nothing that passed through is lost;
* calls that change something on DashScope (create, update, a run, a tool output)
  move the thread's ``last_active``; reads do not.

Thread creation is the exception to "record afterwards": :meth:`Mirror.intent`
writes a ``creating`` row *before* the remote create, :meth:`Mirror.settle`
turns it into the thread (or drops it) afterwards — the store's create protocol.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, delete, insert, select, update

from . import db
from ._rules import ThreadStatus
from .codec import Codec
from .models import messages, runs, threads, utcnow
from .remote import parse_message, parse_run, parse_thread

__all__ = ["RUN_RANK", "Mirror"]

log = logging.getLogger(__name__)

RUN_RANK = {
    "queued": 0,
    "in_progress": 1,
    "requires_action": 1,
    "cancelling": 2,
    "completed": 3,
    "failed": 3,
    "cancelled": 3,
    "expired": 3,
}
"""How far along a run status is; a stored run never moves to a lower rank."""

_ACTIVE = str(ThreadStatus.ACTIVE)
_CREATING = str(ThreadStatus.CREATING)

# Built once: the facade runs them on every call.
_THREAD_TTL = select(threads.c.ttl_seconds).where(threads.c.thread_id == bindparam("tid"))
_TOUCH = (
    update(threads)
    .where(threads.c.thread_id == bindparam("tid"), threads.c.last_active < bindparam("at"))
    .values(
        last_active=bindparam("at"),
        ttl_expires_at=bindparam("ttl_at"),
        attempts=0,
        last_error=None,
        next_attempt_at=None,
    )
)
_INSERT_THREAD = insert(threads)
_SET_THREAD_META = (
    update(threads)
    .where(threads.c.thread_id == bindparam("tid"))
    .values(metadata=bindparam("meta"))
)
_ACTIVATE = (
    update(threads)
    .where(threads.c.thread_id == bindparam("intent_id"))
    .values(
        thread_id=bindparam("new_id"),
        status=_ACTIVE,
        created_at=bindparam("p_created_at"),
        last_active=bindparam("p_last_active"),
        ttl_expires_at=None,
    )
)
_MESSAGE_KNOWN = select(messages.c.message_id, messages.c.content).where(
    messages.c.message_id.in_(bindparam("ids", expanding=True))
)
_INSERT_MESSAGE = insert(messages)
_UPDATE_MESSAGE = update(messages).where(messages.c.message_id == bindparam("mid"))
_RUN_KNOWN = select(runs.c.run_id, runs.c.status).where(
    runs.c.run_id.in_(bindparam("ids", expanding=True))
)
_INSERT_RUN = insert(runs)
_UPDATE_RUN = update(runs).where(runs.c.run_id == bindparam("rid"))


class Mirror:
    """Writes SDK objects into the store's tables; see the module docstring."""

    def __init__(self, engine: Engine, codec: Codec) -> None:
        self.engine = engine
        self.codec = codec

    # ------------------------------------------------------------------ create protocol

    def intent(
        self, *, user_id: str | None, workspace: str | None, metadata: Any
    ) -> str:
        """Write the ``creating`` row of a thread about to be created; its id.

        Raises :class:`~threadstore.errors.StoreError` if the database is down,
        so that nothing is created remotely that the mirror could not know.
        """
        try:
            plain = metadata if isinstance(metadata, Mapping) else None
            stored_meta = self.codec.encode_json(plain)
        except Exception:  # noqa: BLE001 - the SDK will refuse it itself, as it always did
            stored_meta = self.codec.encode_json(None)
        intent_id = f"creating_{uuid.uuid4().hex}"
        now = utcnow()
        with db.write(self.engine) as conn:
            conn.execute(
                _INSERT_THREAD,
                {
                    "thread_id": intent_id,
                    "workspace": workspace,
                    "user_id": user_id if isinstance(user_id, str) else None,
                    "created_at": now,
                    "last_active": now,
                    "metadata": stored_meta,
                    "status": _CREATING,
                },
            )
        return intent_id

    def settle(self, intent_id: str, thread: Any) -> None:
        """The remote create answered with ``thread``: the intent row becomes it.

        A thread id that is already mirrored (another caller saw the thread first)
        keeps that row and drops the intent.
        """
        remote = parse_thread(thread)
        now = utcnow()
        with db.write(self.engine) as conn:
            if conn.execute(_THREAD_TTL, {"tid": remote.id}).first() is not None:
                conn.execute(delete(threads).where(threads.c.thread_id == intent_id))
                return
            conn.execute(
                _ACTIVATE,
                {
                    "intent_id": intent_id,
                    "new_id": remote.id,
                    "p_created_at": remote.created_at or now,
                    "p_last_active": now,
                },
            )

    def settle_id(self, intent_id: str, thread_id: str) -> None:
        """Like :meth:`settle` when only the new thread's id is known (create-and-run)."""
        self.settle(intent_id, {"id": thread_id})

    def drop_intent(self, intent_id: str) -> None:
        """The remote create certainly did not happen: forget the intent row."""
        with db.write(self.engine) as conn:
            conn.execute(delete(threads).where(threads.c.thread_id == intent_id))

    def keep_intent(self, intent_id: str, reason: str) -> None:
        """The remote create may have happened: keep the row (``stats`` counts it)."""
        with db.write(self.engine) as conn:
            conn.execute(
                update(threads)
                .where(threads.c.thread_id == intent_id)
                .values(last_error=f"create outcome unknown: {reason}"[:2000])
            )

    # ------------------------------------------------------------------ observations

    def record(
        self,
        *,
        workspace: str | None,
        threads_seen: Sequence[Any] = (),
        messages_seen: Sequence[Any] = (),
        runs_seen: Sequence[Any] = (),
        thread_id: str | None = None,
        active: bool = False,
    ) -> None:
        """Upsert what one call returned, in one transaction.

        ``thread_id`` names the thread the call was about (for objects that do not
        carry it); ``active`` says the call changed something, so the thread's
        ``last_active`` moves.
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
        with db.write(self.engine) as conn:
            for tid in involved:
                self._thread_row(conn, tid, workspace, now, active=active)
            for t in parsed_threads:
                conn.execute(
                    _SET_THREAD_META, {"tid": t.id, "meta": self.codec.encode_json(t.metadata)}
                )
            if parsed_messages:
                self._messages(conn, parsed_messages, now)
            if parsed_runs:
                self._runs(conn, parsed_runs, now)

    def _thread_row(
        self, conn: Connection, tid: str, workspace: str | None, now: datetime, *, active: bool
    ) -> None:
        found = conn.execute(_THREAD_TTL, {"tid": tid}).first()
        if found is None:
            conn.execute(
                _INSERT_THREAD,
                {
                    "thread_id": tid,
                    "workspace": workspace,
                    "created_at": now,
                    "last_active": now,
                    "metadata": self.codec.encode_json(None),
                    "status": _ACTIVE,
                },
            )
        elif active:
            ttl = found[0]
            conn.execute(
                _TOUCH,
                {
                    "tid": tid,
                    "at": now,
                    "ttl_at": now + timedelta(seconds=ttl) if ttl is not None else None,
                },
            )

    def _messages(self, conn: Connection, items: Sequence[Any], now: datetime) -> None:
        # Oldest first, ties nudged by a microsecond so the stored order is the remote one.
        ordered = sorted(items, key=lambda m: m.created_at or now)
        stamps: list[datetime] = []
        for m in ordered:
            at = m.created_at or now
            if stamps and at <= stamps[-1]:
                at = stamps[-1] + timedelta(microseconds=1)
            stamps.append(at)
        known = {
            row[0]: row[1]
            for row in conn.execute(_MESSAGE_KNOWN, {"ids": [m.id for m in ordered]})
        }
        new: list[dict[str, Any]] = []
        for m, at in zip(ordered, stamps, strict=True):
            if m.id not in known:
                new.append(
                    {
                        "message_id": m.id,
                        "thread_id": m.thread_id,
                        "role": m.role,
                        "content": self.codec.encode_text(m.content),
                        "created_at": at,
                        "run_id": m.run_id,
                        "assistant_id": m.assistant_id,
                        "metadata": self.codec.encode_json(m.metadata),
                    }
                )
                continue
            values: dict[str, Any] = {"metadata": self.codec.encode_json(m.metadata)}
            if m.content:  # a message's text only grows (a stream's early events have none)
                values["content"] = self.codec.encode_text(m.content)
            conn.execute(_UPDATE_MESSAGE.values(**values), {"mid": m.id})
        if new:
            conn.execute(_INSERT_MESSAGE, new)

    def _runs(self, conn: Connection, items: Sequence[Any], now: datetime) -> None:
        latest: dict[str, Any] = {}
        for r in items:  # within one answer, the furthest state of each run wins
            seen = latest.get(r.id)
            if seen is None or RUN_RANK.get(r.status, 0) >= RUN_RANK.get(seen.status, 0):
                latest[r.id] = r
        known = {
            row[0]: row[1] for row in conn.execute(_RUN_KNOWN, {"ids": list(latest)})
        }
        for r in latest.values():
            values = {
                "assistant_id": r.assistant_id,
                "model": r.model,
                "status": r.status,
                "started_at": r.started_at,
                "completed_at": r.completed_at,
                "failed_at": r.failed_at,
                "last_error": r.last_error,
                "prompt_tokens": r.prompt_tokens,
                "completion_tokens": r.completion_tokens,
                "total_tokens": r.total_tokens,
            }
            stored = known.get(r.id)
            if stored is None:
                conn.execute(
                    _INSERT_RUN,
                    {**values, "run_id": r.id, "thread_id": r.thread_id,
                     "created_at": r.created_at or now},
                )
            elif RUN_RANK.get(r.status, 0) >= RUN_RANK.get(stored, 0):
                # Fields an answer leaves empty keep what an earlier answer said.
                changes = {k: v for k, v in values.items() if v is not None}
                conn.execute(_UPDATE_RUN.values(**changes), {"rid": r.id})

    # ------------------------------------------------------------------ steps, assistants

    def record_steps(self, *, workspace: str | None, steps: Sequence[Any]) -> None:
        """Upsert run steps (with their tool calls and usage)."""

    def record_assistants(self, *, workspace: str | None, assistants: Sequence[Any]) -> None:
        """Upsert assistants, in the workspace of the call."""

    def forget_assistant(self, assistant_id: str) -> None:
        """DashScope confirmed the assistant's delete: remove its row."""
