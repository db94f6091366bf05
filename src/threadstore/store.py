"""``ThreadStore``: DashScope threads with a local mirror, kept in the right order.

Order of operations (the promises in README.md depend on it):

* **create** writes a ``creating`` intent row, then creates the remote thread,
  then turns the row ``active`` under the remote id. A dead database means nothing
  is created remotely; if the last write fails, the remote thread is deleted again
  (compensation) so no thread exists that the mirror does not know.
* **update / message / run** call DashScope first, then mirror the result and move
  ``last_active`` in one local transaction. A remote failure changes nothing.
* **delete** claims the row, deletes remotely, and removes the local row only once
  DashScope confirmed the delete (or said 404: already gone).

Each public method is one unit of work: one transaction, committed or rolled
back as a whole. Database errors surface as :class:`~threadstore.errors.StoreError`.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    RowMapping,
    bindparam,
    delete,
    func,
    insert,
    select,
    update,
)

from . import _rules as rules
from . import db
from ._rules import DEFAULT_OLDER_THAN, ThreadStatus
from .codec import Codec, refuse_nul
from .errors import (
    ConfigError,
    RemoteError,
    RemoteNotFound,
    RemoteUnavailable,
    RunTimeout,
    StoreError,
    ThreadExpired,
    ThreadNotFound,
)
from .models import (
    ASSISTANTS,
    KINDS,
    MESSAGES,
    NAME,
    RUN_STEPS,
    RUNS,
    THREAD_CHILDREN,
    THREADS,
    AssistantRecord,
    Kind,
    MessageRecord,
    RunRecord,
    RunStepRecord,
    ThreadRecord,
    messages,
    runs,
    threads,
    utcnow,
)
from .models import assistants as assistants_table
from .remote import TERMINAL_RUN_STATUSES, DashScopeRemote, Remote, RemoteMessage, RemoteRun
from .sweep import (
    DEFAULT_CONCURRENCY,
    DEFAULT_INTENT_AGE,
    DEFAULT_LEASE,
    SweepOptions,
    SweepReport,
    check_lease,
    claim_thread,
    release_thread,
    remove_local,
    sweep_expired,
)
from .sweep import Progress as SweepProgress
from .trust import Trust, scope_error

if TYPE_CHECKING:
    from apscheduler.schedulers.background import BackgroundScheduler

    from .export import ExportOptions, Progress
    from .stats import Stats, ThreadCounts
    from .verify import VerifyReport

# export, stats and verify are imported by the methods that use them: a sweep (a
# cron job started every few minutes) needs none of them at start-up.

__all__ = ["ThreadStore"]

log = logging.getLogger(__name__)

ENV_URL = "THREADSTORE_DATABASE_URL"
MESSAGE_PAGE = 100
_ROLES = frozenset({"user", "assistant"})


MAX_SPAN = timedelta(days=36500)
"""The longest TTL or idle time accepted: a century (beyond it dates overflow)."""


def _check_ttl(ttl: timedelta | None) -> timedelta | None:
    if ttl is None:
        return None
    if not isinstance(ttl, timedelta) or not timedelta(0) < ttl <= MAX_SPAN:
        raise ConfigError(
            f"ttl must be a positive timedelta of at most {MAX_SPAN.days} days or None, "
            f"not {ttl!r}"
        )
    return ttl


def _check_name(value: str | None, what: str) -> str | None:
    """A user id or workspace: None, or text that every backend can store as it is."""
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > NAME:
        raise ConfigError(f"{what} must be a string of at most {NAME} characters")
    refuse_nul(value, what)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: bytes that were not UTF-8 (argv)
        raise ConfigError(f"{what} is not valid UTF-8 text") from None
    return value


def _check_span(value: timedelta | None, what: str) -> None:
    if value is not None and (
        not isinstance(value, timedelta) or not timedelta(0) <= value <= MAX_SPAN
    ):
        raise ConfigError(f"{what} must be a timedelta from 0 to {MAX_SPAN.days} days")


def _check_url(url: str | None) -> str:
    """The database URL to open: None means the default; '' is a mistake, not a default."""
    if url is None:
        return db.DEFAULT_URL
    if not isinstance(url, str) or not url.strip():
        raise ConfigError(
            "the database URL is empty: pass e.g. sqlite:///threadstore.db, or None for "
            "the default"
        )
    return url


def _check_id(thread_id: str) -> str:
    if (
        not isinstance(thread_id, str)
        or not thread_id
        or len(thread_id) > 64
        or "\x00" in thread_id  # PostgreSQL text cannot hold it; no id has one
    ):
        raise ConfigError(f"not a thread id: {str(thread_id)[:80]!r}")
    return thread_id


def _check_aware(at: datetime) -> datetime:
    if not isinstance(at, datetime) or at.tzinfo is None or at.utcoffset() is None:
        raise ConfigError(f"expected a timezone-aware datetime, not {at!r}")
    return at


def _check_messages(items: Sequence[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    checked: list[dict[str, Any]] = []
    for item in items or ():
        if not isinstance(item, Mapping) or not isinstance(item.get("content"), str):
            raise ConfigError("each message must be a mapping with a string 'content'")
        refuse_nul(item["content"], "message content")
        role = item.get("role", "user")
        if role not in _ROLES:
            raise ConfigError(f"message role must be 'user' or 'assistant', not {role!r}")
        checked.append({**item, "role": role})
    return checked


# create_thread runs these two on every call: built once, bound per call.
_INSERT_INTENT = insert(threads)
_ACTIVATE_INTENT = (
    update(threads)
    .where(threads.c.thread_id == bindparam("intent_id"))
    .values(
        thread_id=bindparam("new_id"),
        status=ThreadStatus.ACTIVE.value,
        created_at=bindparam("p_created_at"),
        last_active=bindparam("p_last_active"),
        ttl_expires_at=bindparam("p_ttl_expires_at"),
    )
)


class _Any:
    """Marker: no workspace given (None is a workspace: the default scope)."""


class ThreadStore:
    """DashScope's threads, messages and runs, mirrored in a local database.

    ``ThreadStore(url)`` opens (and migrates to the latest schema) the database at
    ``url`` — an SQLAlchemy URL such as ``sqlite:///threadstore.db`` or
    ``postgresql://user@host/db`` — or uses an ``Engine`` you pass. ``remote``
    defaults to :class:`~threadstore.remote.DashScopeRemote` (key and endpoint
    from the SDK's environment variables). ``encryption_key`` defaults to
    ``THREADSTORE_ENCRYPTION_KEY``: with a key, message text and metadata are
    encrypted at rest; ``old_keys`` (default ``THREADSTORE_ENCRYPTION_OLD_KEYS``)
    still decrypt what earlier keys wrote, for rotation (:meth:`rotate_key`).

    ``create=False`` opens only an existing store whose schema is at head and
    creates, migrates and changes nothing (threadstore's read-only commands open
    this way): :class:`~threadstore.errors.ConfigError`, naming the URL and the
    fix, for a missing file, an empty or foreign database, or another schema.

    Use it as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        url: str | Engine | None = None,
        *,
        remote: Remote | None = None,
        encryption_key: str | None = None,
        old_keys: Sequence[str] = (),
        migrate: bool = True,
        owner: str | None = None,
        create: bool = True,
    ) -> None:
        if not create:
            # Before any engine exists: opening a SQLite URL would create the file.
            found = db.inspect_store(url if isinstance(url, Engine) else url or db.DEFAULT_URL)
            problem = found.problem()
            if problem is not None:
                raise ConfigError(problem)
            migrate = False
        self._owns_engine = not isinstance(url, Engine)
        self.engine: Engine = (
            url if isinstance(url, Engine) else db.open_engine(_check_url(url))
        )
        self.remote: Remote = remote if remote is not None else DashScopeRemote()
        self.codec = (
            Codec(encryption_key, tuple(old_keys)) if encryption_key else Codec.from_env()
        )
        self.owner = owner or f"{socket.gethostname()[:30]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.trust = Trust(self.remote)
        self._closed = False
        # A create's two short writes use one connection kept out of the pool
        # (SQLite files; see db.HeldConnection); returned by close() or at GC.
        self._held = db.HeldConnection(self.engine)
        weakref.finalize(self, self._held.close)
        if migrate or not create:
            try:
                if migrate:
                    db.upgrade(self.engine)
                self._check_key()
            except Exception:
                if self._owns_engine:
                    self.engine.dispose()
                raise

    @classmethod
    def from_env(cls, **kwargs: Any) -> ThreadStore:
        """A store at ``THREADSTORE_DATABASE_URL`` (default ``sqlite:///threadstore.db``)."""
        return cls(os.environ.get(ENV_URL) or db.DEFAULT_URL, **kwargs)

    def __repr__(self) -> str:
        return f"ThreadStore({db.safe_url(self.engine.url)!r})"

    def __enter__(self) -> ThreadStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the database connections and the remote's HTTP pool."""
        if self._closed:
            return
        self._closed = True
        self._held.close()
        self.remote.close()
        if self._owns_engine:
            self.engine.dispose()

    # ------------------------------------------------------------------ transactions

    def _write(self) -> contextlib.AbstractContextManager[Connection]:
        return db.write(self.engine)

    def _read(self) -> contextlib.AbstractContextManager[Connection]:
        return db.read(self.engine)

    # ------------------------------------------------------------------ rows → records

    def _thread(self, row: RowMapping | Mapping[str, Any]) -> ThreadRecord:
        return THREADS.to_record(row, self.codec)  # type: ignore[no-any-return]

    def _message(self, row: RowMapping | Mapping[str, Any]) -> MessageRecord:
        return MESSAGES.to_record(row, self.codec)  # type: ignore[no-any-return]

    def _run(
        self, row: RowMapping | Mapping[str, Any], added: Sequence[MessageRecord] = ()
    ) -> RunRecord:
        return RUNS.to_record(row, self.codec, messages=tuple(added))  # type: ignore[no-any-return]

    def _row(self, conn: Connection, thread_id: str) -> RowMapping:
        row = (
            conn.execute(
                select(threads).where(
                    threads.c.thread_id == thread_id, rules.is_active()
                )
            )
            .mappings()
            .first()
        )
        if row is None:
            raise ThreadNotFound(thread_id)
        return row

    def _writable_row(self, conn: Connection, thread_id: str, *, lock: bool = False) -> RowMapping:
        """The thread's row, refusing threads that a deleter has claimed.

        With ``lock`` (inside a write transaction) the row is read ``FOR UPDATE``
        on PostgreSQL and MySQL, so a sweeper's claim either committed before
        (and is seen here) or waits for this transaction; SQLite's ``IMMEDIATE``
        write transactions exclude every other writer already.
        """
        query = select(threads).where(threads.c.thread_id == thread_id, rules.is_active())
        if lock:
            query = query.with_for_update()
        row = conn.execute(query).mappings().first()
        if row is None:
            raise ThreadNotFound(thread_id)
        if rules.row_lease_live(row, utcnow()):
            raise ThreadExpired(thread_id)
        return row

    @staticmethod
    def _guarded_update(conn: Connection, thread_id: str, **values: Any) -> None:
        """UPDATE the thread only while no deleter holds it; ThreadExpired otherwise.

        The condition is in the statement itself (and its rowcount checked), so a
        write can never land on a row that a sweep claimed after it was read.
        """
        done = conn.execute(
            update(threads)
            .where(
                threads.c.thread_id == thread_id,
                rules.is_active(),
                rules.lease_free(utcnow()),
            )
            .values(**values)
        )
        if done.rowcount != 1:
            raise ThreadExpired(thread_id)

    @staticmethod
    def _activity(row: RowMapping | Mapping[str, Any], at: datetime) -> dict[str, Any]:
        """Column values that record activity at ``at`` (clearing delete retries).

        Activity never moves ``last_active`` backwards: an ``at`` older than the
        recorded activity (a backfill, another host's slower clock) keeps it.
        """
        ttl = row["ttl_seconds"]
        last = row["last_active"]
        if last is not None and last > at:
            at = last
        return {
            "last_active": at,
            "ttl_expires_at": at + timedelta(seconds=ttl) if ttl is not None else None,
            "attempts": 0,
            "last_error": None,
            "next_attempt_at": None,
        }

    def _insert_new_messages(
        self, conn: Connection, thread_id: str, items: Sequence[RemoteMessage]
    ) -> list[MessageRecord]:
        rows = [MESSAGES.from_remote(m, thread_id=thread_id) for m in items]
        # DashScope stamps messages in milliseconds, so a batch can share one
        # stamp; nudge ties by microseconds to keep the remote order on read.
        for prev, row in itertools.pairwise(rows):
            if row["created_at"] <= prev["created_at"]:
                row["created_at"] = prev["created_at"] + timedelta(microseconds=1)
        written = MESSAGES.upsert(conn, rows, self.codec)
        return [MESSAGES.record_of(r) for r in written]

    # ------------------------------------------------------------------ create

    def create_thread(
        self,
        *,
        user_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        messages: Sequence[Mapping[str, Any]] | None = None,
        workspace: str | None = None,
        ttl: timedelta | None = None,
    ) -> ThreadRecord:
        """Create a DashScope thread and mirror it; returns the new record.

        Writes a ``creating`` intent row first (so a dead database stops us before
        anything exists remotely); if mirroring fails after the remote create, the
        remote thread is deleted again and the error re-raised.
        """
        self.codec.dumps(metadata)  # refuses non-JSON up front
        initial = _check_messages(messages)
        ttl = _check_ttl(ttl)
        _check_name(user_id, "user_id")
        _check_name(workspace, "workspace")
        intent_id = f"creating_{uuid.uuid4().hex}"
        now = utcnow()
        intent = {
            "thread_id": intent_id,
            "workspace": workspace,
            "user_id": user_id,
            "created_at": now,
            "last_active": now,
            "metadata": dict(metadata or {}),
            "status": ThreadStatus.CREATING.value,
            "ttl_seconds": int(ttl.total_seconds()) if ttl else None,
        }
        # Both steps run on the driver (db.write_one): this is the one local cost
        # every create pays, twice, and SQLAlchemy's per-statement work was most of it.
        db.write_one(
            self.engine, _INSERT_INTENT, THREADS.row(intent, self.codec), insert=True,
            held=self._held,
        )
        try:
            remote = self.remote.create_thread(
                messages=initial or None, metadata=dict(metadata or {}) or None, workspace=workspace
            )
        except RemoteUnavailable as exc:
            if exc.outcome_unknown:
                self._keep_intent(intent_id, exc)
            else:
                self._drop_intent(intent_id)
            raise
        except BaseException:
            self._drop_intent(intent_id)
            raise
        try:
            first: list[RemoteMessage] = []
            if initial:
                first = self._fetch_messages(remote.id, workspace=workspace, after=None)
            now = utcnow()
            values = {
                "intent_id": intent_id,
                "new_id": remote.id,
                "p_created_at": remote.created_at or now,
                "p_last_active": now,
                "p_ttl_expires_at": now + ttl if ttl else None,
            }
            if first:
                with self._write() as conn:
                    done = conn.execute(_ACTIVATE_INTENT, values).rowcount
                    if done == 1:
                        self._insert_new_messages(conn, remote.id, first)
            else:
                done = db.write_one(self.engine, _ACTIVATE_INTENT, values, held=self._held)
            if done != 1:
                raise StoreError(f"the intent row for {remote.id} vanished")
        except BaseException as exc:
            self._compensate(remote.id, workspace, exc)
            self._drop_intent(intent_id)
            raise
        log.debug("created thread %s for user %s", remote.id, user_id)
        row = {
            **intent,
            "thread_id": remote.id,
            "status": ThreadStatus.ACTIVE.value,
            "created_at": values["p_created_at"],
            "last_active": now,
            "ttl_expires_at": values["p_ttl_expires_at"],
            "pinned": False,
            "attempts": 0,
            "last_error": None,
            "next_attempt_at": None,
        }
        return THREADS.record_of(row)  # type: ignore[no-any-return]

    def _drop_intent(self, intent_id: str) -> None:
        try:
            with db.write(self.engine) as conn:
                conn.execute(delete(threads).where(threads.c.thread_id == intent_id))
        except StoreError:
            # Harmless leftover: an intent row has no remote thread; stats counts it.
            log.warning("could not remove intent row %s", intent_id)

    def _keep_intent(self, intent_id: str, exc: RemoteUnavailable) -> None:
        """Leave the intent row as the record of a create that may have happened.

        DashScope got the request but no answer came back: a thread may exist
        whose id we never learned, and DashScope cannot list threads. The row
        stays ``creating`` (``stats`` counts it) with the reason in ``last_error``.
        """
        try:
            with db.write(self.engine) as conn:
                conn.execute(
                    update(threads)
                    .where(threads.c.thread_id == intent_id)
                    .values(last_error=f"create outcome unknown: {exc}"[:2000])
                )
        except StoreError:
            log.warning("could not annotate intent row %s", intent_id)
        log.warning(
            "create outcome unknown (%s): DashScope may hold a thread threadstore cannot name; "
            "intent row %s kept",
            exc,
            intent_id,
        )

    def _compensate(self, thread_id: str, workspace: str | None, cause: BaseException) -> None:
        try:
            self.remote.delete_thread(thread_id, workspace=workspace)
        except RemoteNotFound:
            pass
        except RemoteError as exc:
            log.error(
                "thread %s was created remotely but could not be mirrored (%s) nor deleted "
                "(%s): adopt or delete it by hand",
                thread_id,
                cause,
                exc,
            )
        else:
            log.warning("mirroring %s failed (%s); the remote thread was deleted", thread_id, cause)

    # ------------------------------------------------------------------ updates

    def _remote_target(self, thread_id: str) -> RowMapping:
        """The row an update is about to target; raises before any remote call."""
        _check_id(thread_id)
        with self._read() as conn:
            return self._writable_row(conn, thread_id)

    def update_thread(self, thread_id: str, *, metadata: Mapping[str, Any]) -> ThreadRecord:
        """Replace the thread's metadata on DashScope, then in the mirror."""
        stored = THREADS.row({"metadata": metadata}, self.codec)  # refuses non-JSON up front
        row = self._remote_target(thread_id)
        self.remote.update_thread(thread_id, metadata=dict(metadata), workspace=row["workspace"])
        with self._write() as conn:
            row = self._writable_row(conn, thread_id, lock=True)
            self._guarded_update(conn, thread_id, **stored, **self._activity(row, utcnow()))
            return self._thread(self._row(conn, thread_id))

    def add_message(
        self,
        thread_id: str,
        content: str,
        *,
        role: str = "user",
        metadata: Mapping[str, Any] | None = None,
    ) -> MessageRecord:
        """Add a message on DashScope, then mirror it and move ``last_active``."""
        if not isinstance(content, str):
            raise ConfigError("message content must be a string")
        refuse_nul(content, "message content")
        if role not in _ROLES:
            raise ConfigError(f"message role must be 'user' or 'assistant', not {role!r}")
        self.codec.dumps(metadata)
        row = self._remote_target(thread_id)
        remote = self.remote.create_message(
            thread_id, content, role=role, metadata=metadata, workspace=row["workspace"]
        )
        with self._write() as conn:
            row = self._writable_row(conn, thread_id, lock=True)
            self._guarded_update(conn, thread_id, **self._activity(row, utcnow()))
            values = MESSAGES.from_remote(remote, thread_id=thread_id)
            MESSAGES.upsert(conn, [values], self.codec)
        return MESSAGES.record_of(values)  # type: ignore[no-any-return]

    # ------------------------------------------------------------------ runs

    def run(
        self,
        thread_id: str,
        *,
        assistant_id: str,
        model: str | None = None,
        instructions: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        timeout: float = 300.0,
        poll_interval: float = 0.5,
    ) -> RunRecord:
        """Run an assistant on the thread and wait for it to finish.

        Mirrors the run (status, model, timings, token usage) and the messages it
        added. Raises :class:`~threadstore.errors.RunTimeout` (a
        :class:`~threadstore.errors.RemoteUnavailable`) if the run is still going
        after ``timeout`` seconds (its last state stays mirrored).
        """
        record = self.start_run(
            thread_id,
            assistant_id=assistant_id,
            model=model,
            instructions=instructions,
            metadata=metadata,
        )
        return self.wait_run(
            record.run_id, thread_id=thread_id, timeout=timeout, poll_interval=poll_interval
        )

    def start_run(
        self,
        thread_id: str,
        *,
        assistant_id: str,
        model: str | None = None,
        instructions: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> RunRecord:
        """Create a run on DashScope and mirror it as it is now (usually ``queued``)."""
        if not isinstance(assistant_id, str) or not assistant_id:
            raise ConfigError("assistant_id is required")
        self.codec.dumps(metadata)
        row = self._remote_target(thread_id)
        remote = self.remote.create_run(
            thread_id,
            assistant_id=assistant_id,
            model=model,
            instructions=instructions,
            metadata=metadata,
            workspace=row["workspace"],
        )
        return self._mirror_run(remote, [])

    def wait_run(
        self,
        run_id: str,
        *,
        thread_id: str,
        timeout: float = 300.0,
        poll_interval: float = 0.5,
    ) -> RunRecord:
        """Poll a run until it ends, then mirror it and the messages it added."""
        row = self._remote_target(thread_id)
        workspace = row["workspace"]
        deadline = time.monotonic() + timeout
        delay = min(0.05, poll_interval)
        while True:
            remote = self.remote.retrieve_run(run_id, thread_id=thread_id, workspace=workspace)
            if remote.status in TERMINAL_RUN_STATUSES:
                break
            if time.monotonic() >= deadline:
                self._mirror_run(remote, [])
                raise RunTimeout(
                    f"run {run_id} on {thread_id} still {remote.status} after {timeout:g} s",
                    run_id=run_id,
                    status=remote.status,
                    operation="runs.wait",
                    thread_id=thread_id,
                )
            time.sleep(delay)
            delay = min(delay * 2, poll_interval)
        with self._read() as conn:
            last = conn.execute(
                select(messages.c.message_id)
                .where(messages.c.thread_id == thread_id)
                .order_by(messages.c.created_at.desc(), messages.c.message_id.desc())
                .limit(1)
            ).scalar()
        added = self._fetch_messages(thread_id, workspace=workspace, after=last)
        return self._mirror_run(remote, added)

    def _mirror_run(self, remote: RemoteRun, added: Sequence[RemoteMessage]) -> RunRecord:
        values = RUNS.from_remote(remote)
        with self._write() as conn:
            row = self._writable_row(conn, remote.thread_id, lock=True)
            self._guarded_update(conn, remote.thread_id, **self._activity(row, utcnow()))
            RUNS.upsert(conn, [values], self.codec)
            new = self._insert_new_messages(conn, remote.thread_id, added)
            stored = conn.execute(select(runs).where(runs.c.run_id == remote.id)).mappings().one()
            return self._run(stored, new)

    def _fetch_messages(
        self, thread_id: str, *, workspace: str | None, after: str | None
    ) -> list[RemoteMessage]:
        """All remote messages after ``after`` (oldest first), page by page."""
        out: list[RemoteMessage] = []
        while True:
            page, has_more = self.remote.list_messages(
                thread_id, after=after, limit=MESSAGE_PAGE, workspace=workspace
            )
            out.extend(page)
            if not has_more or not page:
                return out
            after = page[-1].id

    # ------------------------------------------------------------------ local-only changes

    def _set(self, thread_id: str, **values: Any) -> ThreadRecord:
        _check_id(thread_id)
        with self._write() as conn:
            # Refused while a deleter holds the row, like every write: a pin or a
            # TTL that returned OK must not be swept away a moment later.
            row = self._writable_row(conn, thread_id, lock=True)
            if "ttl_seconds" in values:
                ttl = values["ttl_seconds"]
                values["ttl_expires_at"] = (
                    row["last_active"] + timedelta(seconds=ttl) if ttl is not None else None
                )
            self._guarded_update(conn, thread_id, **values)
            return self._thread(self._row(conn, thread_id))

    def touch(self, thread_id: str, *, at: datetime | None = None) -> ThreadRecord:
        """Record activity now, or at ``at`` (an aware datetime, for backfills).

        ``last_active`` never moves backwards: an ``at`` older than the recorded
        activity changes nothing (to make a thread look idle in a test, use
        :func:`threadstore.testing.backdate`). Like every write, refused with
        :class:`ThreadExpired` while a deleter holds the thread: activity cannot
        save a thread already being deleted.
        """
        when = _check_aware(at) if at is not None else utcnow()
        _check_id(thread_id)
        with self._write() as conn:
            row = self._writable_row(conn, thread_id, lock=True)
            self._guarded_update(conn, thread_id, **self._activity(row, when))
            return self._thread(self._row(conn, thread_id))

    def pin(self, thread_id: str) -> ThreadRecord:
        """Keep the thread forever: sweeps never expire a pinned thread."""
        return self._set(thread_id, pinned=True)

    def unpin(self, thread_id: str) -> ThreadRecord:
        """Let the thread expire again."""
        return self._set(thread_id, pinned=False)

    def set_ttl(self, thread_id: str, ttl: timedelta | None) -> ThreadRecord:
        """Give the thread its own idle TTL (overrides the sweep's), or None to clear."""
        ttl = _check_ttl(ttl)
        return self._set(thread_id, ttl_seconds=int(ttl.total_seconds()) if ttl else None)

    # ------------------------------------------------------------------ reads

    def get_thread(self, thread_id: str) -> ThreadRecord:
        """The mirrored thread; :class:`ThreadNotFound` if it is not in the store."""
        _check_id(thread_id)
        with self._read() as conn:
            return self._thread(self._row(conn, thread_id))

    def list_threads(
        self,
        *,
        user_id: str | None = None,
        workspace: str | None = None,
        inactive_for: timedelta | None = None,
        pinned: bool | None = None,
        limit: int | None = None,
    ) -> list[ThreadRecord]:
        """Mirrored threads, most recently active first, filtered as asked."""
        query = select(threads).where(
            *self._thread_filter(user_id, workspace, inactive_for, pinned)
        )
        query = query.order_by(threads.c.last_active.desc(), threads.c.thread_id)
        # Read in last_active order through the narrowest index that has it, so
        # ``limit`` rows cost about ``limit`` reads on a store of any size.
        by = "user_id" if user_id is not None else "workspace" if workspace is not None else None
        query = db.walk_index(query, threads, *([by] if by else []), "last_active")
        if limit is not None:
            if isinstance(limit, bool) or not isinstance(limit, int) or not 0 <= limit <= 2**53:
                raise ConfigError(f"limit must be an integer from 0 to 2**53, not {limit!r}")
            query = query.limit(limit)
        with self._read() as conn:
            return [self._thread(r) for r in conn.execute(query).mappings()]

    @staticmethod
    def _thread_filter(
        user_id: str | None,
        workspace: str | None,
        inactive_for: timedelta | None,
        pinned: bool | None,
    ) -> list[ColumnElement[bool]]:
        _check_name(user_id, "user_id")
        _check_name(workspace, "workspace")
        _check_span(inactive_for, "inactive_for")
        conds: list[ColumnElement[bool]] = [rules.is_active()]
        if user_id is not None:
            conds.append(threads.c.user_id == user_id)
        if workspace is not None:
            conds.append(threads.c.workspace == workspace)
        if inactive_for is not None:
            conds.append(threads.c.last_active < utcnow() - inactive_for)
        if pinned is not None:
            conds.append(threads.c.pinned == pinned)
        return conds

    def count_threads(
        self,
        *,
        user_id: str | None = None,
        workspace: str | None = None,
        inactive_for: timedelta | None = None,
        pinned: bool | None = None,
        at_most: int | None = None,
    ) -> int:
        """How many threads :meth:`list_threads` would return with the same filters.

        ``at_most`` stops counting there, so the cost stays bounded however large
        the store is.
        """
        if at_most is not None and at_most < 0:
            raise ConfigError("at_most must not be negative")
        inner = select(threads.c.thread_id).where(
            *self._thread_filter(user_id, workspace, inactive_for, pinned)
        )
        if at_most is not None:
            inner = inner.limit(at_most)
        query = select(func.count()).select_from(inner.subquery())
        with self._read() as conn:
            return int(conn.execute(query).scalar_one())

    def thread_counts(self, thread_ids: Sequence[str]) -> Mapping[str, ThreadCounts]:
        """Message and run counts per thread (two grouped queries, not one per thread)."""
        from .stats import thread_counts  # noqa: PLC0415 - see the imports

        with self._read() as conn:
            return thread_counts(conn, thread_ids)

    def messages(self, thread_id: str, *, limit: int | None = None) -> list[MessageRecord]:
        """The thread's mirrored messages, oldest first."""
        return self._records(MESSAGES, thread_id, limit)

    def runs(self, thread_id: str) -> list[RunRecord]:
        """The thread's mirrored runs, oldest first."""
        return self._records(RUNS, thread_id, None)

    def steps(self, thread_id: str) -> list[RunStepRecord]:
        """The thread's mirrored run steps (with their tool calls), oldest first."""
        return self._records(RUN_STEPS, thread_id, None)

    def assistants(self, *, workspace: str | None = None) -> list[AssistantRecord]:
        """Mirrored assistants (of ``workspace``, if given), oldest first."""
        query = select(assistants_table).order_by(
            assistants_table.c.created_at, assistants_table.c.assistant_id
        )
        if workspace is not None:
            query = query.where(assistants_table.c.workspace == workspace)
        with self._read() as conn:
            return [ASSISTANTS.to_record(r, self.codec) for r in conn.execute(query).mappings()]

    def children(self, thread_id: str) -> dict[str, list[Any]]:
        """Everything mirrored under the thread, per kind (``messages``, ``runs``, …).

        Each list holds the kind's records, oldest first; one read transaction.
        """
        _check_id(thread_id)
        with self._read() as conn:
            self._row(conn, thread_id)
            return {
                kind.name: [
                    kind.to_record(r, self.codec)
                    for r in conn.execute(kind.of_threads([thread_id])).mappings()
                ]
                for kind in THREAD_CHILDREN
            }

    def _records(self, kind: Kind, thread_id: str, limit: int | None) -> list[Any]:
        _check_id(thread_id)
        query = kind.of_threads([thread_id])
        if limit is not None:
            query = query.limit(limit)
        with self._read() as conn:
            self._row(conn, thread_id)
            return [kind.to_record(r, self.codec) for r in conn.execute(query).mappings()]

    # ------------------------------------------------------------------ adopt

    def adopt(
        self,
        thread_id: str,
        *,
        user_id: str | None = None,
        workspace: str | None = None,
        ttl: timedelta | None = None,
    ) -> ThreadRecord:
        """Mirror a thread created elsewhere, with all its messages (paged).

        Raises :class:`~threadstore.errors.RemoteNotFound` if DashScope does not
        know the id. Adopting an already mirrored thread fetches what it lacks.
        """
        _check_id(thread_id)
        ttl = _check_ttl(ttl)
        _check_name(user_id, "user_id")
        _check_name(workspace, "workspace")
        remote = self.remote.retrieve_thread(thread_id, workspace=workspace)
        items = self._fetch_messages(thread_id, workspace=workspace, after=None)
        now = utcnow()
        with self._write() as conn:
            existing = (
                conn.execute(select(threads).where(threads.c.thread_id == thread_id))
                .mappings()
                .first()
            )
            if existing is None:
                values = THREADS.from_remote(
                    remote,
                    workspace=workspace,
                    user_id=user_id,
                    last_active=now,
                    status=ThreadStatus.ACTIVE.value,
                    ttl_seconds=int(ttl.total_seconds()) if ttl else None,
                    ttl_expires_at=now + ttl if ttl else None,
                )
                conn.execute(insert(threads).values(**THREADS.row(values, self.codec)))
            else:
                changes = THREADS.row({"metadata": remote.metadata}, self.codec)
                if user_id is not None:
                    changes["user_id"] = user_id
                conn.execute(
                    update(threads).where(threads.c.thread_id == thread_id).values(**changes)
                )
            self._insert_new_messages(conn, thread_id, items)
            return self._thread(self._row(conn, thread_id))

    # ------------------------------------------------------------------ delete

    def delete_thread(self, thread_id: str, *, lease: timedelta = DEFAULT_LEASE) -> None:
        """Delete the thread on DashScope, then its local row, messages and runs.

        The local row goes only once DashScope confirmed the delete or answered a
        404 that can be trusted (:mod:`threadstore.trust`): DashScope's own 404, in
        a workspace where it found another of our threads. Otherwise
        :class:`~threadstore.errors.UntrustedNotFound` is raised and the row stays;
        any other remote error leaves the row as it was and is raised.
        :class:`ThreadExpired` if a sweep is deleting it right now. ``lease`` (how
        long the row is claimed) must exceed twice the remote's timeout, as a
        sweep's must (:class:`ConfigError` before anything is sent).
        """
        check_lease(lease, self.remote)
        self._delete_via(
            thread_id,
            lambda workspace: self.remote.delete_thread(thread_id, workspace=workspace),
            lease=lease,
        )

    def _delete_via(
        self,
        thread_id: str,
        send: Callable[[str | None], None],
        *,
        workspace: str | type[_Any] | None = _Any,
        lease: timedelta = DEFAULT_LEASE,
    ) -> None:
        """:meth:`delete_thread` with ``send(workspace)`` as the remote delete.

        The facade passes the SDK's own request here, so that its deletes follow
        the same claim / confirm / remove order. ``workspace``, when given, must be
        the thread's (else :class:`ThreadNotFound`: the id names another scope).
        """
        _check_id(thread_id)
        with self._write() as conn:
            row = self._row(conn, thread_id)
            if workspace is not _Any and row["workspace"] != workspace:
                raise ThreadNotFound(thread_id)
            if not claim_thread(conn, thread_id, owner=self.owner, lease=lease):
                raise ThreadExpired(thread_id)
        scope: str | None = row["workspace"]
        result = "deleted"
        try:
            try:
                send(scope)
            except RemoteNotFound:
                # Believed only when DashScope proves it sees this workspace.
                if not self.trust.canary(self.engine, scope, exclude=(thread_id,)):
                    raise scope_error(scope, thread_id=thread_id) from None
                result = "already_gone"
            else:
                self.trust.prove(scope)
        except BaseException:
            with self._write() as conn:
                release_thread(conn, thread_id, owner=self.owner)
            raise
        with self._write() as conn:
            remove_local(
                conn, thread_id, reason="manual", remote_result=result, owner=self.owner
            )

    # ------------------------------------------------------------------ verify, keys

    def verify(
        self,
        *,
        fix: bool = False,
        concurrency: int = 8,
        max_rps: float | None = None,
        limit: int | None = None,
        progress: SweepProgress | None = None,
    ) -> VerifyReport:
        """Ask DashScope for every mirrored thread; report (with ``fix``: drop) vanished ones.

        Only a trusted 404 counts as vanished (:mod:`threadstore.trust`); transient
        errors are reported in ``errors`` and never fixed. Raises
        :class:`~threadstore.errors.RemoteAuthError` when the key is refused and
        :class:`~threadstore.errors.UntrustedNotFound` when the 404s cannot be
        trusted (nothing fixed). ``progress(checked, total)``
        follows along. See :mod:`threadstore.verify`.
        """
        from .verify import verify_mirror  # noqa: PLC0415 - see the imports

        return verify_mirror(
            self.engine,
            self.remote,
            owner=self.owner,
            fix=fix,
            concurrency=concurrency,
            max_rps=max_rps,
            limit=limit,
            trust=self.trust,
            progress=progress,
        )

    def rotate_key(self, *, batch_size: int = 500, progress: SweepProgress | None = None) -> int:
        """Re-encrypt every stored message and metadata value with the current key.

        Values under an old key (``THREADSTORE_ENCRYPTION_OLD_KEYS``) or in plain
        text are rewritten; values already under the current key are skipped, so an
        interrupted rotation can simply be rerun. One transaction per batch of
        ``batch_size`` rows. Returns the number of rows rewritten.
        ``progress(scanned, total)`` follows along (rows looked at, of all rows).
        """
        if not self.codec.encrypts:
            raise ConfigError("set THREADSTORE_ENCRYPTION_KEY to the key to encrypt with")
        if batch_size < 1:
            raise ConfigError("batch_size must be at least 1")
        total = 0
        kinds = [k for k in KINDS if k.encrypted]
        sizes = {k.name: 0 for k in kinds}
        if progress is not None:
            with self._read() as conn:
                for k in kinds:
                    count = select(func.count()).select_from(k.table)
                    sizes[k.name] = int(conn.execute(count).scalar_one())
        all_rows, before = sum(sizes.values()), 0
        for kind in kinds:
            table, key = kind.table, kind.id
            columns = tuple(table.c[name] for name in kind.encrypted)
            after: str | None = None
            pages = 0
            while True:
                with self._write() as conn:
                    after, rewritten = self.codec.rotate_page(
                        conn, table, key, columns, after=after, limit=batch_size
                    )
                total += rewritten
                pages += 1
                if progress is not None:
                    done = sizes[kind.name] if after is None else pages * batch_size
                    progress(before + min(done, sizes[kind.name]), all_rows)
                if after is None:
                    break
            before += sizes[kind.name]
        log.info("re-encrypted %d rows with the current key", total)
        return total

    def _check_key(self) -> None:
        """Fail at open, not at the first read, if the key cannot read this store.

        Decodes the newest row of every kind with encrypted columns (one indexed
        lookup each): a missing or wrong key raises ConfigError here.
        """
        with self._read() as conn:
            for kind in (k for k in KINDS if k.encrypted):
                query = select(*(kind.table.c[n] for n in kind.encrypted))
                row = conn.execute(query.order_by(kind.time.desc()).limit(1)).mappings().first()
                if row is not None:
                    kind.plain(row, self.codec)

    # ------------------------------------------------------------------ sweep, export, stats

    def sweep(
        self,
        older_than: timedelta | SweepOptions,
        *,
        dry_run: bool = False,
        limit: int | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        max_rps: float | None = None,
        lease: timedelta = DEFAULT_LEASE,
        archive: str | Path | IO[str] | None = None,
        retry_base: float = rules.RETRY_BASE,
        progress: SweepProgress | None = None,
        stop: threading.Event | None = None,
        intent_age: timedelta = DEFAULT_INTENT_AGE,
    ) -> SweepReport:
        """Delete threads idle longer than ``older_than`` (or than their own TTL).

        DashScope first, the local row (with messages and runs) only once the
        delete is confirmed or answered 404; pinned threads never. ``concurrency``
        remote deletes run at once, at most ``max_rps`` per second; rows are
        claimed with a ``lease`` so that any number of sweepers can run at once.
        A failed delete stays with a backoff (``retry_base`` seconds, doubling)
        and is reported in ``failed``. ``archive`` (a path or text file) receives
        one JSON line per deleted thread with its messages and runs. ``dry_run``
        only reports what would be deleted. ``progress(done, total)`` follows
        along; setting ``stop`` ends the sweep cleanly. Intent rows of creates
        whose answer was lost (``creating`` for longer than ``intent_age``) are
        removed and logged in ``deletions`` (reason ``lost_create``). Each sweep
        but a dry run is recorded in the ``sweeps`` history, whatever ends it.

        Raises :class:`~threadstore.errors.RemoteAuthError` when DashScope refuses
        the key: the sweep stops at once and gives every claimed row back.
        Raises :class:`~threadstore.errors.UntrustedNotFound` when 404s cannot be
        trusted to mean "already gone" (a wrong base URL, a proxy, a key or
        workspace that does not see our threads): the sweep stops and drops
        nothing for them. See :mod:`threadstore.sweep` and :mod:`threadstore.trust`.
        Instead of ``older_than`` and the keywords,
        a :class:`~threadstore.sweep.SweepOptions` may be passed alone.
        """
        if isinstance(older_than, SweepOptions):
            options = older_than
        else:
            options = SweepOptions(
                older_than,
                dry_run=dry_run,
                limit=limit,
                concurrency=concurrency,
                max_rps=max_rps,
                lease=lease,
                archive=archive,
                retry_base=retry_base,
                progress=progress,
                stop=stop,
                intent_age=intent_age,
            )
        report = sweep_expired(
            self.engine,
            self.remote,
            options,
            owner=self.owner,
            codec=self.codec,
            trust=self.trust,
        )
        if report.auth_error is not None:
            raise report.auth_error
        if report.trust_error is not None:
            raise report.trust_error
        return report

    def export(
        self,
        path_or_file: str | Path | IO[Any],
        options: ExportOptions | None = None,
        *,
        table: str = "threads",
        fmt: str = "jsonl",
        since: datetime | None = None,
        until: datetime | None = None,
        workspace: str | None = None,
        user_id: str | None = None,
        redact: bool = False,
        progress: Progress | None = None,
    ) -> int:
        """Stream a table of the mirror to a file; returns the rows written.

        ``table`` is ``threads`` (with message/run counts and token sums),
        ``messages``, ``runs`` or ``deletions``; ``fmt`` is ``jsonl``, ``csv`` or
        ``parquet`` (needs pyarrow). ``since`` (inclusive) and ``until``
        (exclusive) are aware datetimes filtering on the table's natural time;
        ``workspace``/``user_id`` select whose rows. ``redact`` blanks message
        text and metadata values. ``path_or_file`` is a path (replaced only once
        the export is complete) or an open file object. Memory stays flat: rows
        stream from a server-side cursor in batches. See :mod:`threadstore.export`.
        Instead of the keywords, an :class:`~threadstore.export.ExportOptions` may
        be passed as ``options``.
        """
        from .export import ExportOptions  # noqa: PLC0415 - see the imports
        from .export import export as export_table  # noqa: PLC0415

        if options is None:
            options = ExportOptions(
                table=table,
                fmt=fmt,
                since=since,
                until=until,
                workspace=workspace,
                user_id=user_id,
                redact=redact,
            )
        return export_table(
            self.engine, path_or_file, options, codec=self.codec, progress=progress
        )

    def count_export(self, options: ExportOptions) -> int:
        """How many rows :meth:`export` would write with ``options`` (a progress total)."""
        from .export import count_rows  # noqa: PLC0415 - see the imports

        return count_rows(self.engine, options)

    def stats(self, *, older_than: timedelta = DEFAULT_OLDER_THAN) -> Stats:
        """Counts for humans and monitors: threads (expired by ``older_than``),
        failed deletions, messages, runs, tokens, recent deletions."""
        from .stats import compute  # noqa: PLC0415 - see the imports

        with self._read() as conn:
            return compute(conn, older_than=older_than)

    def start_sweeper(
        self,
        older_than: timedelta,
        every: timedelta = timedelta(hours=1),
        *,
        jitter: float | None = None,
        run_now: bool = True,
        **sweep_options: Any,
    ) -> BackgroundScheduler:
        """Run :meth:`sweep` every ``every`` in a background APScheduler; returns it running.

        ``sweep_options`` are :meth:`sweep`'s keyword options. The first sweep runs
        at once (``run_now=False``: after one interval); ``jitter`` seconds of
        random delay (default: a tenth of ``every``, at most 5 min) spread hosts
        apart. Each run is logged on ``threadstore.schedule``; a failed run is
        logged and the schedule goes on. Stop it with ``scheduler.shutdown()``.
        """
        # Refuse bad options now rather than in a log line an hour from now.
        options = SweepOptions(older_than, **sweep_options)
        check_lease(options.lease, self.remote)
        from . import schedule  # noqa: PLC0415 - APScheduler only for those who schedule

        return schedule.start_background(
            lambda: self.sweep(options),
            every=every,
            jitter=jitter,
            run_now=run_now,
        )
