"""Deleting threads: remote first, the local row only once the remote delete is confirmed.

This module holds the primitives that every deletion path shares (claiming a
thread with a lease, finishing it locally with a deletion-log entry, releasing
it for a retry) and the expiry sweep built on them.

How a sweep runs (:func:`sweep_expired`, used through ``ThreadStore.sweep``):

1. **Claim** a batch of expired rows in one short transaction: they get this
   sweep's ``lease_owner`` and a ``lease_expires_at``. PostgreSQL and MySQL select
   the ids ``FOR UPDATE SKIP LOCKED`` and update them in the same transaction;
   SQLite's write transactions begin ``IMMEDIATE`` (one writer at a time) and
   claim with ``UPDATE … RETURNING``. Any number of sweepers, in any number of
   processes, therefore claim disjoint rows.
2. **Delete remotely**, concurrently (a thread pool, optionally paced to
   ``max_rps``). No database transaction is open during a remote call. The next
   batch is claimed while the current one is still in flight, so the pool never
   idles at batch boundaries.
3. **Finish locally** in batches, one transaction per batch: a confirmed delete or
   a trusted 404 (:mod:`threadstore.trust`) removes the row with its messages and
   runs (archived first if asked) and appends it to the ``deletions`` log — but
   only where the lease is still ours.
   A transient failure releases the row with its attempt count, error and a
   backoff (``next_attempt_at``); an auth failure stops the sweep at once and
   releases every lease it holds without counting an attempt. So does a 404
   that cannot be trusted: one not in DashScope's shape stops the sweep at once;
   DashScope's own 404s wait (leased, untouched) until their workspace is proven
   by a confirmed delete or a canary, and stop the sweep if it cannot be.

A sweeper that dies leaves leased rows behind; when the lease ends they are
claimable again, and a remote thread it had already deleted answers 404 to the
next sweeper, which completes the local delete. At no point is a local row
removed before DashScope confirmed that its thread is gone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import random
import socket
import stat
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Select,
    and_,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)

from . import _rules as rules
from . import db
from .codec import Codec, to_json
from .errors import (
    ArchiveError,
    ConfigError,
    RemoteAuthError,
    RemoteError,
    RemoteNotFound,
    RemoteRateLimited,
    ThreadStoreError,
    UntrustedNotFound,
)
from .models import THREAD_CHILDREN, THREADS, deletions, sweeps, threads, utcnow
from .remote import Remote
from .trust import BREAKER, Trust, scope_error

__all__ = [
    "DEFAULT_CONCURRENCY",
    "DEFAULT_LEASE",
    "RateLimiter",
    "SweepOptions",
    "SweepReport",
    "check_lease",
    "claim_thread",
    "release_thread",
    "remove_local",
    "sweep_expired",
]

log = logging.getLogger(__name__)

MAX_PAUSE = 30.0
"""Longest pause of the whole sweep that a 429's ``Retry-After`` can impose."""
FLUSH_INTERVAL = 0.25
"""Seconds a finished remote delete may wait for its batch's local transaction."""

DEFAULT_INTENT_AGE = timedelta(days=7)
"""A ``creating`` intent row older than this is a create whose answer was lost."""
LOST_CREATE_BATCH = 500

Progress = Callable[[int, int], None]


# --------------------------------------------------------------------------- primitives


def claim_thread(conn: Connection, thread_id: str, *, owner: str, lease: timedelta) -> bool:
    """Claim one thread for deletion; False if another deleter holds it."""
    now = utcnow()
    result = conn.execute(
        update(threads)
        .where(threads.c.thread_id == thread_id, rules.is_active())
        .where(or_(rules.lease_free(now), threads.c.lease_owner == owner))
        .values(lease_owner=owner, lease_expires_at=now + lease)
    )
    return result.rowcount == 1


def release_thread(
    conn: Connection,
    thread_id: str,
    *,
    owner: str,
    error: str | None = None,
    retry_at: datetime | None = None,
) -> bool:
    """Give a claimed thread back; with ``error``, count a failed attempt."""
    values: dict[str, Any] = {"lease_owner": None, "lease_expires_at": None}
    if error is not None:
        values.update(
            attempts=threads.c.attempts + 1, last_error=error[:2000], next_attempt_at=retry_at
        )
    result = conn.execute(
        update(threads)
        .where(threads.c.thread_id == thread_id, threads.c.lease_owner == owner)
        .values(**values)
    )
    return result.rowcount == 1


def remove_local(
    conn: Connection,
    thread_id: str,
    *,
    reason: str,
    remote_result: str,
    owner: str | None,
    require_lease: bool = True,
) -> dict[str, Any] | None:
    """Delete a thread's row, messages and runs, and append it to the deletions log.

    Only call this once the remote thread is confirmed gone. With
    ``require_lease`` the row is removed only while ``owner`` still holds its
    lease (a deleter whose lease ran out and was taken over must not finish
    someone else's claim). Returns the removed thread row, or None if nothing
    was removed.
    """
    removed = _remove_many(
        conn,
        {thread_id: remote_result},
        reason=reason,
        owner=owner,
        require_lease=require_lease,
    )
    return removed[0] if removed else None


def _remove_many(
    conn: Connection,
    results: Mapping[str, str],
    *,
    reason: str,
    owner: str | None,
    require_lease: bool = True,
    archive: _Archive | None = None,
) -> list[dict[str, Any]]:
    """:func:`remove_local` for many threads at once (a handful of statements in all).

    ``results`` maps thread id to remote result (``deleted`` / ``already_gone``).
    With ``archive``, each removed thread is written to it, with its messages and
    runs, before anything is deleted.
    """
    if not results:
        return []
    ids = list(results)
    query = select(threads).where(threads.c.thread_id.in_(ids))
    if require_lease:
        query = query.where(threads.c.lease_owner == owner)
    # Lock the rows we are about to remove (PostgreSQL/MySQL; SQLite's
    # IMMEDIATE transaction already excludes every other writer).
    # In id order, as every other multi-row lock here: no lock-order cycles.
    query = query.order_by(threads.c.thread_id).with_for_update()
    rows = [dict(r) for r in conn.execute(query).mappings()]
    if not rows:
        return []
    ids = [r["thread_id"] for r in rows]
    if archive is not None:
        counts = archive.write(conn, rows, results)
    else:
        counts = {
            kind.name: kind.count_by_thread(conn, ids)
            for kind in THREAD_CHILDREN
            if kind.deletion_count
        }
    # Children explicitly: ON DELETE CASCADE needs foreign keys on, which a
    # database shared with other tools may not have.
    for kind in THREAD_CHILDREN:
        conn.execute(delete(kind.table).where(kind.table.c.thread_id.in_(ids)))
    conn.execute(delete(threads).where(threads.c.thread_id.in_(ids)))
    now = utcnow()
    conn.execute(
        insert(deletions),
        [
            {
                "thread_id": r["thread_id"],
                "workspace": r["workspace"],
                "user_id": r["user_id"],
                "created_at": r["created_at"],
                "last_active": r["last_active"],
                "deleted_at": now,
                "reason": reason,
                "remote_result": results[r["thread_id"]],
                **{
                    kind.deletion_count: counts[kind.name].get(r["thread_id"], 0)
                    for kind in THREAD_CHILDREN
                    if kind.deletion_count
                },
                "deleted_by": owner,
            }
            for r in rows
        ],
    )
    return rows


class RateLimiter:
    """Spaces calls at least ``1/max_rps`` apart, across threads; ``None`` = no limit.

    :meth:`pause` holds every caller back for a while (a 429's ``Retry-After``).
    """

    def __init__(self, max_rps: float | None) -> None:
        self.interval = 1.0 / max_rps if max_rps else 0.0
        self._next = time.monotonic()
        self._lock = threading.Lock()

    def acquire(self, stop: threading.Event | None = None) -> bool:
        """Wait for a slot; False if ``stop`` was set meanwhile."""
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next)
            self._next = slot + self.interval
        delay = slot - now
        if stop is None:
            if delay > 0:
                time.sleep(delay)
            return True
        if delay > 0:
            return not stop.wait(delay)
        return not stop.is_set()

    def pause(self, seconds: float) -> None:
        """Let no call start in the next ``seconds``."""
        with self._lock:
            self._next = max(self._next, time.monotonic() + seconds)


# --------------------------------------------------------------------------- report


@dataclass(frozen=True)
class SweepReport:
    """What a sweep did.

    * ``expired`` — expired threads this sweep claimed (in a dry run: would claim);
    * ``deleted`` — deleted remotely (confirmed) and then locally;
    * ``already_gone`` — DashScope answered 404; removed locally;
    * ``failed`` — ``(thread_id, error)`` for deletes that failed and were kept,
      with a backoff, for a later sweep;
    * ``skipped`` — expired threads left alone: waiting for a retry after an
      earlier failure, claimed by another deleter, or not reached because the
      sweep stopped;
    * ``lease_lost`` — deleted remotely, but the lease had been taken over by
      another deleter, which completes the local delete;
    * ``archived`` — threads written to the archive file;
    * ``elapsed`` — seconds;
    * ``stopped_by_auth`` — DashScope refused the key; ``error`` says how;
    * ``stopped_untrusted`` — 404s that cannot be trusted (a wrong base URL, a
      proxy, key or workspace) stopped the sweep; ``error`` names the likely
      cause; nothing was dropped for them;
    * ``interrupted`` — stopped on request before the end;
    * ``would_delete`` — in a dry run, the ids that would be deleted;
    * ``skipped_at_least`` — ``skipped`` is a lower bound: with a ``limit``, the
      rows behind it are counted only up to :data:`SKIPPED_BOUND` beyond the
      limit, so that a small sweep costs the same on a store of any size;
    * ``lost_creates`` — intent rows of creates whose answer was lost (``creating``
      for longer than ``intent_age``) removed, each logged in ``deletions`` with
      reason ``lost_create`` (in a dry run: that would be removed);
    * ``sweep_id`` — this sweep's row in the ``sweeps`` history (None in a dry run).
    """

    expired: int = 0
    deleted: int = 0
    already_gone: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    skipped: int = 0
    elapsed: float = 0.0
    dry_run: bool = False
    lease_lost: int = 0
    archived: int = 0
    stopped_by_auth: bool = False
    interrupted: bool = False
    error: str | None = None
    would_delete: tuple[str, ...] = ()
    auth_error: RemoteAuthError | None = field(default=None, compare=False, repr=False)
    stopped_untrusted: bool = False
    trust_error: UntrustedNotFound | None = field(default=None, compare=False, repr=False)
    skipped_at_least: bool = False
    lost_creates: int = 0
    sweep_id: int | None = None

    @property
    def outcome(self) -> str:
        """The ``sweeps.outcome`` of this report: ok, failed, auth_failed, untrusted or
        interrupted."""
        if self.stopped_by_auth:
            return "auth_failed"
        if self.stopped_untrusted:
            return "untrusted"
        if self.interrupted:
            return "interrupted"
        return "failed" if self.failed else "ok"

    @property
    def ok(self) -> bool:
        """True when nothing failed and the sweep was not stopped."""
        return (
            not self.failed
            and not self.stopped_by_auth
            and not self.stopped_untrusted
            and not self.interrupted
        )

    def summary(self) -> str:
        """One line for humans."""
        skipped = f"at least {self.skipped}" if self.skipped_at_least else str(self.skipped)
        if self.dry_run:
            lost = (
                f", {self.lost_creates} lost create(s) would be removed"
                if self.lost_creates else ""
            )
            return (
                f"dry run: {self.expired} expired thread(s) would be deleted, "
                f"{skipped} skipped{lost} ({self.elapsed:.2f} s)"
            )
        text = (
            f"{self.expired} expired: {self.deleted} deleted, {self.already_gone} already gone, "
            f"{len(self.failed)} failed (kept for retry), {skipped} skipped"
        )
        if self.lease_lost:
            text += f", {self.lease_lost} handed over"
        if self.archived:
            text += f", {self.archived} archived"
        if self.lost_creates:
            text += f", {self.lost_creates} lost create(s) removed"
        text += f" in {self.elapsed:.2f} s"
        if self.stopped_by_auth or self.stopped_untrusted:
            text += f"; stopped: {self.error}"
        elif self.interrupted:
            text += "; interrupted"
        return text

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``threadstore sweep --json``)."""
        # Not asdict(): it would deep-copy auth_error and the SDK response it holds.
        data = {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name not in ("auth_error", "trust_error")
        }
        data["failed"] = [{"thread_id": tid, "error": err} for tid, err in self.failed]
        data["would_delete"] = list(self.would_delete)
        data["elapsed"] = round(self.elapsed, 3)
        data["ok"] = self.ok
        data["outcome"] = self.outcome
        return data


# --------------------------------------------------------------------------- archive


class _Archive:
    """Appends one JSON line per removed thread: the thread, its messages and runs."""

    def __init__(self, target: str | Path | IO[str], codec: Codec) -> None:
        self.codec = codec
        self.count = 0
        self.failed = False
        # Threads already written: a transaction rerun after a deadlock writes
        # only the others (the file is outside the transaction).
        self._written: set[str] = set()
        self._owned: IO[str] | None = None
        if isinstance(target, str | Path):
            path = Path(target).expanduser()
            try:
                # 0600 when we create it: the archive holds whole conversations.
                fd = os.open(
                    path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, stat.S_IRUSR | stat.S_IWUSR
                )
            except OSError as exc:
                raise ConfigError(
                f"cannot open archive file {str(target)!r}: {exc.strerror}"
            ) from exc
            self._owned = os.fdopen(fd, "a", encoding="utf-8")
            self.file: IO[str] = self._owned
        else:
            self.file = target

    def write(
        self, conn: Connection, rows: Sequence[Mapping[str, Any]], results: Mapping[str, str]
    ) -> dict[str, dict[str, int]]:
        """Write ``rows`` (read inside the deleting transaction) with their children.

        Returns, per child kind, how many rows each thread had.
        """
        ids = [r["thread_id"] for r in rows]
        children: dict[str, dict[str, list[Any]]] = {}
        for kind in THREAD_CHILDREN:
            of_thread: dict[str, list[Any]] = {tid: [] for tid in ids}
            for child in conn.execute(kind.of_threads(ids)).mappings():
                of_thread[child["thread_id"]].append(kind.to_record(child, self.codec))
            children[kind.name] = of_thread
        deleted_at = utcnow()
        lines = []
        fresh = [row for row in rows if row["thread_id"] not in self._written]
        for row in fresh:
            tid = row["thread_id"]
            record = {
                "thread": THREADS.to_record(row, self.codec),
                **{name: of_thread[tid] for name, of_thread in children.items()},
                "deleted_at": deleted_at,
                "remote_result": results[tid],
            }
            lines.append(to_json(record) + "\n")
        try:
            self.file.write("".join(lines))
            self.file.flush()
        except OSError as exc:
            # The transaction rolls back and the rows stay; their remote threads are
            # gone, so the next sweep sees a 404 and archives them then.
            self.failed = True
            raise ArchiveError(f"cannot write the archive: {exc.strerror or exc}") from exc
        self._written.update(row["thread_id"] for row in fresh)
        self.count += len(fresh)
        return {
            name: {tid: len(items) for tid, items in of_thread.items()}
            for name, of_thread in children.items()
        }

    def close(self) -> None:
        if self._owned is None:
            return
        try:
            self._owned.close()
        except OSError as exc:
            if not self.failed:  # else the write already raised; this is its echo
                raise ArchiveError(f"cannot write the archive: {exc.strerror or exc}") from exc


# --------------------------------------------------------------------------- the sweep


@dataclass(frozen=True)
class _Claimed:
    thread_id: str
    workspace: str | None
    attempts: int
    deadline: float  # time.monotonic() after which we no longer start its remote delete


@dataclass(frozen=True)
class _Outcome:
    item: _Claimed
    kind: str  # deleted | already_gone | not_found | retry | auth | untrusted | unattempted
    error: RemoteError | ThreadStoreError | None = None
    error_text: str | None = None


def _claim(
    conn: Connection,
    *,
    owner: str,
    lease: timedelta,
    size: int,
    cutoff: datetime,
    started: datetime,
) -> list[tuple[str, str | None, int]]:
    """Lease up to ``size`` claimable expired rows to ``owner``: (id, workspace, attempts)."""
    now = utcnow()
    candidates = _candidates(now=now, cutoff=cutoff, started=started).limit(size)
    values = {"lease_owner": owner, "lease_expires_at": now + lease}
    columns = (threads.c.thread_id, threads.c.workspace, threads.c.attempts)
    if conn.dialect.name == "sqlite" and conn.dialect.update_returning:
        # One statement under the IMMEDIATE transaction's write lock (SQLite >= 3.35).
        result = conn.execute(
            update(threads)
            .where(threads.c.thread_id.in_(candidates.scalar_subquery()))
            .values(**values)
            .returning(*columns)
        )
        return [(r[0], r[1], int(r[2])) for r in result]
    if conn.dialect.name == "sqlite":
        ids = list(conn.execute(candidates).scalars())
    else:
        # Rows another sweeper is claiming right now are skipped, not waited for.
        ids = list(conn.execute(candidates.with_for_update(skip_locked=True)).scalars())
    if not ids:
        return []
    conn.execute(update(threads).where(threads.c.thread_id.in_(ids)).values(**values))
    rows = conn.execute(select(*columns).where(threads.c.thread_id.in_(ids)))
    return [(r[0], r[1], int(r[2])) for r in rows]


SKIPPED_BOUND = 1000
"""With a limit, how far beyond it a sweep counts the expired rows it leaves."""


def _count(conn: Connection, query: Select[Any], at_most: int | None) -> tuple[int, bool]:
    """Rows of ``query``, counted up to ``at_most``: (count, True if it stopped there)."""
    if at_most is None:
        inner = query.with_only_columns(func.count()).order_by(None)
        return int(conn.execute(inner).scalar_one()), False
    bounded = query.with_only_columns(threads.c.thread_id).order_by(None).limit(at_most)
    n = int(conn.execute(select(func.count()).select_from(bounded.subquery())).scalar_one())
    return n, n >= at_most


def _count_blocked(
    conn: Connection, *, cutoff: datetime, started: datetime, at_most: int | None
) -> tuple[int, bool]:
    """Expired rows that this sweep must leave alone: backing off, or leased.

    Found through the retry and lease indexes (two disjoint counts), so the cost
    follows the blocked rows, not the expired ones.
    """
    expired = rules.expired(now=started, cutoff=cutoff)
    now = utcnow()
    backing_off = db.walk_index(
        select(threads.c.thread_id).where(expired, rules.backing_off(started)),
        threads,
        "next_attempt_at",
    )
    leased = db.walk_index(
        select(threads.c.thread_id).where(
            expired, rules.lease_live(now), rules.not_backing_off(started)
        ),
        threads,
        "lease_expires_at",
    )
    a, a_capped = _count(conn, backing_off, at_most)
    b, b_capped = _count(conn, leased, at_most)
    return a + b, a_capped or b_capped


def _survey(
    conn: Connection, *, limit: int | None, cutoff: datetime, started: datetime
) -> tuple[int, bool, Select[Any], int, bool]:
    """What a sweep (or dry run) finds before it starts.

    (blocked, blocked capped, the candidates query, candidates, candidates capped):
    with a limit, the counts behind ``skipped`` and progress stop at a bound, so a
    small sweep costs the same on a store of any size.
    """
    blocked, blocked_capped = _count_blocked(
        conn, cutoff=cutoff, started=started, at_most=None if limit is None else SKIPPED_BOUND
    )
    candidates = _candidates(now=utcnow(), cutoff=cutoff, started=started)
    total, total_capped = _count(
        conn, candidates, None if limit is None else limit + SKIPPED_BOUND
    )
    return blocked, blocked_capped, candidates, total, total_capped


def _candidates(*, now: datetime, cutoff: datetime, started: datetime) -> Select[Any]:
    """Claimable expired rows, oldest activity first (the order sweeps take them in)."""
    query = (
        select(threads.c.thread_id)
        .where(rules.claimable(now=now, cutoff=cutoff, started=started))
        .order_by(threads.c.last_active, threads.c.thread_id)
    )
    return db.walk_index(query, threads, "last_active")


DEFAULT_CONCURRENCY = 16
"""Remote deletes in flight at once."""
DEFAULT_LEASE = timedelta(minutes=5)
"""How long a claimed thread stays reserved for its deleter."""

MAX_OLDER_THAN = timedelta(days=36500)
"""The longest idle time a sweep accepts (a century; beyond it dates overflow)."""
MAX_LEASE = timedelta(days=1)
"""The longest lease a sweep takes."""
MAX_COUNT = 2**53
MAX_CONCURRENCY = 1024
MAX_RETRY_BASE = 86400.0


def _check_lease_range(lease: Any) -> None:
    if not isinstance(lease, timedelta) or lease <= timedelta(0) or lease > MAX_LEASE:
        raise ConfigError(
            f"lease must be a positive timedelta of at most {MAX_LEASE}, not {lease!r}"
        )


def check_lease(lease: timedelta, remote: Remote) -> None:
    """Refuse a lease that a remote delete could outlive (ConfigError).

    Deletes start only in the first half of a lease; one started last may take
    the remote's whole ``timeout``. So the lease must exceed twice the timeout,
    or another sweeper could claim the row — and delete it again — while the
    first delete is still in flight. (``ThreadStore.delete_thread`` holds its
    lease to the same rule: after its delete, a 404 may take a canary retrieve.)
    """
    _check_lease_range(lease)
    timeout = getattr(remote, "timeout", None)
    if (
        isinstance(timeout, int | float)
        and not isinstance(timeout, bool)
        and lease.total_seconds() <= 2 * timeout
    ):
        need = math.floor(2 * timeout) + 1
        raise ConfigError(
            f"lease of {lease.total_seconds():g} s is too short for DashScope requests "
            f"that may take {timeout:g} s: it must exceed twice the timeout, or two "
            f"deletes of one thread could be in flight at once (use a lease of at least "
            f"{need} s, or a shorter timeout)"
        )


def _check_age(name: str, value: Any) -> None:
    """ConfigError unless ``value`` is a positive timedelta no longer than a century."""
    if not isinstance(value, timedelta) or value <= timedelta(0) or value > MAX_OLDER_THAN:
        raise ConfigError(
            f"{name} must be a positive timedelta of at most {MAX_OLDER_THAN.days} "
            f"days, not {value!r}"
        )


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _finite(
    value: Any, *, low: float, high: float = math.inf, low_open: bool = False
) -> bool:
    """A real, finite number within [low, high] (or (low, high] with ``low_open``)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if not math.isfinite(value):
        return False
    return (value > low if low_open else value >= low) and value <= high


@dataclass(frozen=True)
class SweepOptions:
    """How to sweep, validated on construction (:class:`ConfigError`); each default once.

    ``ThreadStore.sweep(...)``, ``start_sweeper`` and the CLI's ``sweep`` and
    ``schedule`` all build one of these; see :meth:`ThreadStore.sweep` for what
    each option does.
    """

    older_than: timedelta
    dry_run: bool = False
    limit: int | None = None
    concurrency: int = DEFAULT_CONCURRENCY
    max_rps: float | None = None
    lease: timedelta = DEFAULT_LEASE
    archive: str | Path | IO[str] | None = None
    retry_base: float = rules.RETRY_BASE
    progress: Progress | None = field(default=None, compare=False)
    stop: threading.Event | None = field(default=None, compare=False)
    intent_age: timedelta = DEFAULT_INTENT_AGE

    def __post_init__(self) -> None:
        # Bounded as well as typed: NaN, infinities and values whose dates
        # overflow are refused here, before anything is claimed or sent.
        _check_age("intent_age", self.intent_age)
        _check_age("older_than", self.older_than)
        limit, max_rps = self.limit, self.max_rps
        if limit is not None and (not _positive_int(limit) or limit > MAX_COUNT):
            raise ConfigError(
                f"limit must be an integer from 1 to {MAX_COUNT} or None, not {limit!r}"
            )
        if not _positive_int(self.concurrency) or self.concurrency > MAX_CONCURRENCY:
            raise ConfigError(
                f"concurrency must be an integer from 1 to {MAX_CONCURRENCY}, "
                f"not {self.concurrency!r}"
            )
        if max_rps is not None and not _finite(max_rps, low=0, low_open=True):
            raise ConfigError(f"max_rps must be a positive finite number or None, not {max_rps!r}")
        _check_lease_range(self.lease)
        if not _finite(self.retry_base, low=0, high=MAX_RETRY_BASE):
            raise ConfigError(
                f"retry_base must be a number of seconds from 0 to {MAX_RETRY_BASE:g}, "
                f"not {self.retry_base!r}"
            )


# --------------------------------------------------------------------------- history & lost creates


def _start_record(engine: Engine, *, owner: str, started: datetime,
                  options: Mapping[str, Any]) -> int:
    """Write this sweep's ``running`` row in the history; returns its id."""
    with db.write(engine) as conn:
        result = conn.execute(
            insert(sweeps).values(
                owner=owner[:64],
                host=socket.gethostname()[:255],
                pid=os.getpid(),
                started_at=started,
                outcome="running",
                options=json.dumps(options, sort_keys=True),
            )
        )
        key = result.inserted_primary_key
        assert key is not None  # noqa: S101 - an autoincrement insert always has one
        return int(key[0])


def _finish_record(engine: Engine, sweep_id: int, *, outcome: str,
                   report: SweepReport | None = None, error: str | None = None) -> None:
    """Complete this sweep's history row with its outcome and counts."""
    values: dict[str, Any] = {"finished_at": utcnow(), "outcome": outcome}
    if report is not None:
        values.update(
            expired=report.expired,
            deleted=report.deleted,
            already_gone=report.already_gone,
            failed=len(report.failed),
            skipped=report.skipped,
            lost_creates=report.lost_creates,
        )
    if error is not None:
        values["error"] = error[:2000]
    with db.write(engine) as conn:
        conn.execute(update(sweeps).where(sweeps.c.id == sweep_id).values(**values))


def _lost_creates(before: datetime) -> ColumnElement[bool]:
    return and_(rules.is_creating(), threads.c.created_at < before)


def _remove_lost_creates(engine: Engine, *, before: datetime, owner: str) -> int:
    """Remove intent rows of creates older than ``before``; each logged in ``deletions``.

    Such a create's answer was lost (a timeout after DashScope got the request):
    a remote thread may exist whose id nobody learned, and DashScope cannot list
    threads, so the row can never be completed. Its ``deletions`` entry (reason
    ``lost_create``, remote result ``unknown``) keeps who and when.
    """
    removed = 0
    while True:
        with db.write(engine) as conn:
            ids = list(
                conn.execute(
                    select(threads.c.thread_id)
                    .where(_lost_creates(before))  # few rows: no order needed
                    .limit(LOST_CREATE_BATCH)
                ).scalars()
            )
            done = _remove_many(
                conn, dict.fromkeys(ids, "unknown"), reason="lost_create", owner=owner,
                require_lease=False,
            )
        removed += len(done)
        for row in done:
            log.info("removed the intent row %s of a create whose answer was lost (created %s)",
                     row["thread_id"], row["created_at"])
        if len(ids) < LOST_CREATE_BATCH:
            return removed


def sweep_expired(
    engine: Engine,
    remote: Remote,
    options: SweepOptions,
    *,
    owner: str,
    codec: Codec | None = None,
    now: datetime | None = None,
    trust: Trust | None = None,
) -> SweepReport:
    """Delete every expired thread, remote first; see the module docstring.

    ``owner`` names the deleter in leases and in the deletions log (a suffix makes
    it unique to this sweep). ``options.progress(done, total)`` is called from the
    calling thread as threads are finished; ``total`` is the number of claimable
    expired threads counted at the start. Setting ``options.stop`` ends the sweep
    early and cleanly: in-flight deletes finish, the rest is released.

    Every sweep but a dry run writes a row in the ``sweeps`` history when it
    starts and completes it when it ends (outcome and counts), whatever ends it.
    It also removes the intent rows of creates older than ``options.intent_age``
    whose answer was lost (see :func:`_remove_lost_creates`).

    An auth failure does not raise here: the report says ``stopped_by_auth`` and
    carries the error in ``auth_error`` (``ThreadStore.sweep`` raises it).
    ``now`` fixes the instant expiry is judged at (tests at the exact boundary).
    404s that cannot be trusted likewise set ``stopped_untrusted`` and ``trust_error``.
    ``trust`` carries proven workspaces across calls (see :mod:`threadstore.trust`).
    """
    check_lease(options.lease, remote)
    clock = time.monotonic()
    started = now or utcnow()
    cutoff = started - options.older_than
    lost_before = started - options.intent_age
    if options.dry_run:
        return _dry_run(engine, limit=options.limit, started=started, cutoff=cutoff,
                        lost_before=lost_before, clock=clock)
    owner = f"{owner[:48]}:{uuid.uuid4().hex[:8]}"
    archive = options.archive
    recorded = {
        "older_than_seconds": options.older_than.total_seconds(),
        "limit": options.limit,
        "concurrency": options.concurrency,
        "max_rps": options.max_rps,
        "lease_seconds": options.lease.total_seconds(),
        "archive": str(archive) if isinstance(archive, str | Path) else archive is not None,
        "intent_age_seconds": options.intent_age.total_seconds(),
    }
    sweep_id = _start_record(engine, owner=owner, started=started, options=recorded)
    try:
        report = _sweep(engine, remote, options, owner=owner, codec=codec, started=started,
                        cutoff=cutoff, lost_before=lost_before, clock=clock, trust=trust)
    except BaseException as exc:
        outcome = "interrupted" if isinstance(exc, KeyboardInterrupt) else "error"
        with contextlib.suppress(ThreadStoreError):
            _finish_record(engine, sweep_id, outcome=outcome,
                           error=f"{type(exc).__name__}: {exc}")
        raise
    report = dataclasses.replace(report, sweep_id=sweep_id)
    with contextlib.suppress(ThreadStoreError):  # the history must not fail a sweep
        _finish_record(engine, sweep_id, outcome=report.outcome, report=report,
                       error=report.error)
    # INFO, not WARNING: callers report the outcome themselves (the CLI's summary
    # line, the scheduler's log), and an auth stop is raised by ThreadStore.sweep.
    log.info("sweep (idle > %s): %s", options.older_than, report.summary())
    return report


def _dry_run(
    engine: Engine,
    *,
    limit: int | None,
    started: datetime,
    cutoff: datetime,
    lost_before: datetime,
    clock: float,
) -> SweepReport:
    """What a sweep would do; changes nothing (no history row either)."""
    with db.read(engine) as conn:
        blocked, blocked_capped, candidates, total, total_capped = _survey(
            conn, limit=limit, cutoff=cutoff, started=started
        )
        query = candidates if limit is None else candidates.limit(limit)
        ids = tuple(conn.execute(query).scalars())
        lost = conn.execute(
            select(func.count()).select_from(threads).where(_lost_creates(lost_before))
        ).scalar_one()
    return SweepReport(
        expired=len(ids),
        skipped=blocked + (total - len(ids)),
        elapsed=time.monotonic() - clock,
        dry_run=True,
        would_delete=ids,
        skipped_at_least=blocked_capped or total_capped,
        lost_creates=int(lost),
    )


def _sweep(
    engine: Engine,
    remote: Remote,
    options: SweepOptions,
    *,
    owner: str,
    codec: Codec | None,
    started: datetime,
    cutoff: datetime,
    lost_before: datetime,
    clock: float,
    trust: Trust | None,
) -> SweepReport:
    """The sweep proper (not a dry run), without its history row."""
    lost = _remove_lost_creates(engine, before=lost_before, owner=owner)
    limit = options.limit
    with db.read(engine) as conn:
        blocked, blocked_capped, _, total, _ = _survey(
            conn, limit=limit, cutoff=cutoff, started=started
        )
    if limit is not None:
        total = min(total, limit)
    archive = options.archive
    writer = _Archive(archive, codec or Codec()) if archive is not None else None
    try:
        run = _Sweep(
            engine,
            remote,
            options,
            owner=owner,
            archive=writer,
            cutoff=cutoff,
            started=started,
            total=total,
            trust=trust or Trust(remote),
        )
        report = run.run()
    finally:
        if writer is not None:
            writer.close()
    return SweepReport(
        expired=report.expired,
        deleted=report.deleted,
        already_gone=report.already_gone,
        failed=report.failed,
        skipped=blocked + report.skipped,
        elapsed=time.monotonic() - clock,
        lease_lost=report.lease_lost,
        archived=writer.count if writer is not None else 0,
        stopped_by_auth=report.stopped_by_auth,
        interrupted=report.interrupted,
        error=report.error,
        auth_error=report.auth_error,
        stopped_untrusted=report.stopped_untrusted,
        trust_error=report.trust_error,
        skipped_at_least=blocked_capped,
        lost_creates=lost,
    )


class _Sweep:
    """One sweep's state; the calling thread does all database work, workers only HTTP."""

    def __init__(
        self,
        engine: Engine,
        remote: Remote,
        options: SweepOptions,
        *,
        owner: str,
        archive: _Archive | None,
        cutoff: datetime,
        started: datetime,
        total: int,
        trust: Trust,
    ) -> None:
        self.engine = engine
        self.trust = trust
        # DashScope's 404s waiting for their workspace to be proven, by workspace.
        self.parked: dict[str | None, list[_Outcome]] = {}
        self.canaried: dict[str | None, bool | None] = {}
        self.trust_error: UntrustedNotFound | None = None
        self.remote = remote
        self.owner = owner
        self.lease = lease = options.lease
        self.limit = options.limit
        self.concurrency = concurrency = options.concurrency
        self.limiter = RateLimiter(options.max_rps)
        self.archive = archive
        self.retry_base = options.retry_base
        self.cutoff = cutoff
        self.started = started
        self.progress = options.progress
        self.total = total
        self.stop = options.stop or threading.Event()
        self.batch = max(concurrency * 4, 64)
        self.flush_size = max(concurrency * 2, 32)
        # Remote deletes are started only in the first half of a lease, so that
        # one started late still ends before another sweeper may claim the row.
        self.start_window = lease.total_seconds() / 2
        self.rng = random.Random()  # noqa: S311 - backoff jitter, not secret
        self.claimed: set[str] = set()
        self.deleted = 0
        self.already_gone = 0
        self.failed: list[tuple[str, str]] = []
        self.lease_lost = 0
        self.unattempted_at_stop = 0
        self.done = 0
        self.auth_error: RemoteAuthError | None = None

    # -- worker side (thread pool): HTTP only, never the database

    def _delete(self, item: _Claimed) -> _Outcome:
        if self.stop.is_set() or time.monotonic() > item.deadline:
            return _Outcome(item, "unattempted")
        if not self.limiter.acquire(self.stop) or time.monotonic() > item.deadline:
            return _Outcome(item, "unattempted")
        try:
            self.remote.delete_thread(item.thread_id, workspace=item.workspace)
        except RemoteNotFound:
            return _Outcome(item, "not_found")
        except UntrustedNotFound as exc:
            self.stop.set()  # not DashScope answering: every delete would meet it
            return _Outcome(item, "untrusted", exc, str(exc))
        except RemoteAuthError as exc:
            self.stop.set()  # every further call would fail the same way
            return _Outcome(item, "auth", exc, str(exc))
        except RemoteRateLimited as exc:
            if exc.retry_after:
                self.limiter.pause(min(exc.retry_after, MAX_PAUSE))
            return _Outcome(item, "retry", exc, str(exc))
        except ThreadStoreError as exc:
            return _Outcome(item, "retry", exc, str(exc))
        except Exception as exc:  # a bug in a Remote must not strand the claim
            log.exception("unexpected error deleting %s", item.thread_id)
            return _Outcome(item, "retry", None, f"{type(exc).__name__}: {exc}")
        self.trust.prove(item.workspace)
        return _Outcome(item, "deleted")

    # -- calling thread

    def _claim_more(self) -> list[_Claimed]:
        size = self.batch
        if self.limit is not None:
            size = min(size, self.limit - len(self.claimed))
        if size <= 0:
            return []
        rows = db.write_retrying(
            self.engine,
            lambda conn: _claim(
                conn,
                owner=self.owner,
                lease=self.lease,
                size=size,
                cutoff=self.cutoff,
                started=self.started,
            ),
        )
        deadline = time.monotonic() + self.start_window
        self.claimed.update(tid for tid, _, _ in rows)
        return [_Claimed(tid, ws, attempts, deadline) for tid, ws, attempts in rows]

    def _flush(self, outcomes: list[_Outcome]) -> None:
        """Record a batch of outcomes locally in one transaction."""
        if not outcomes:
            return
        gone = {
            o.item.thread_id: o.kind for o in outcomes if o.kind in ("deleted", "already_gone")
        }
        retry = [o for o in outcomes if o.kind == "retry"]
        release = [
            o.item.thread_id for o in outcomes if o.kind in ("unattempted", "auth", "untrusted")
        ]
        now = utcnow()

        def record(conn: Connection) -> list[dict[str, Any]]:
            removed = _remove_many(
                conn, gone, reason="expired", owner=self.owner, archive=self.archive
            )
            for o in retry:
                error = o.error
                after = error.retry_after if isinstance(error, RemoteRateLimited) else None
                delay = rules.retry_delay(
                    o.item.attempts, base=self.retry_base, retry_after=after, rng=self.rng
                )
                release_thread(
                    conn,
                    o.item.thread_id,
                    owner=self.owner,
                    error=o.error_text or "unknown error",
                    retry_at=now + timedelta(seconds=delay),
                )
            if release:
                # Not an attempt: the row simply goes back, as it was.
                conn.execute(
                    update(threads)
                    .where(threads.c.thread_id.in_(release), threads.c.lease_owner == self.owner)
                    .values(lease_owner=None, lease_expires_at=None)
                )
            return removed

        removed = db.write_retrying(self.engine, record)
        finished = {r["thread_id"] for r in removed}
        for tid, kind in gone.items():
            if tid not in finished:
                # Our lease ran out and another deleter claimed the row; its own
                # remote delete will answer 404 and it completes the local delete.
                self.lease_lost += 1
                log.warning("lease on %s was taken over; the other deleter finishes it", tid)
            elif kind == "deleted":
                self.deleted += 1
            else:
                self.already_gone += 1
        for o in retry:
            self.failed.append((o.item.thread_id, o.error_text or "unknown error"))
            # INFO: callers report failures from the report (the CLI: one line each).
            log.info("delete of %s failed, kept for retry: %s", o.item.thread_id, o.error_text)
        self.done += len(gone) + len(retry)
        if self.progress is not None:
            self.progress(self.done, max(self.total, self.done))

    def _release_all(self) -> None:
        """Give back every lease this sweep still holds (after an error or a stop)."""
        db.write_retrying(
            self.engine,
            lambda conn: conn.execute(
                update(threads)
                .where(threads.c.lease_owner == self.owner)
                .values(lease_owner=None, lease_expires_at=None)
            ),
        )

    def run(self) -> SweepReport:
        pending: set[Future[_Outcome]] = set()
        buffer: list[_Outcome] = []
        first_buffered = 0.0
        exhausted = requeued = False
        pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="threadstore-sweep")
        try:
            while True:
                if not exhausted and not self.stop.is_set() and len(pending) < 2 * self.concurrency:
                    items = self._claim_more()
                    if len(items) < self.batch:
                        exhausted = True
                    pending.update(pool.submit(self._delete, item) for item in items)
                if not pending and not self.parked:
                    break
                done: set[Future[_Outcome]] = set()
                if pending:
                    done, pending = wait(
                        pending, timeout=FLUSH_INTERVAL, return_when=FIRST_COMPLETED
                    )
                judged: list[_Outcome] = []
                for future in done:
                    judged.extend(self._judge(future.result()))
                judged.extend(self._unpark_proven())
                if not pending and self.parked and (exhausted or self.stop.is_set()):
                    judged.extend(self._settle_parked())
                for outcome in judged:
                    if outcome.kind == "untrusted":
                        if self.trust_error is None and isinstance(
                            outcome.error, UntrustedNotFound
                        ):
                            self.trust_error = outcome.error
                        self.unattempted_at_stop += 1
                    elif outcome.kind == "auth":
                        if self.auth_error is None and isinstance(outcome.error, RemoteAuthError):
                            self.auth_error = outcome.error
                        self.unattempted_at_stop += 1
                    elif outcome.kind == "unattempted":
                        if self.stop.is_set():
                            self.unattempted_at_stop += 1
                        else:
                            # Its lease ran short before a worker got to it: it goes
                            # back at the next flush and is claimed afresh.
                            self.claimed.discard(outcome.item.thread_id)
                            requeued = True
                    if not buffer:
                        first_buffered = time.monotonic()
                    buffer.append(outcome)
                if buffer and (
                    requeued
                    or len(buffer) >= self.flush_size
                    or not pending
                    or time.monotonic() - first_buffered >= FLUSH_INTERVAL
                ):
                    self._flush(buffer)
                    buffer = []
                    if requeued:
                        exhausted, requeued = False, False
        except BaseException:
            # Ctrl-C or a database error: let in-flight deletes end, record what
            # they did (a confirmed delete must still remove its row), give the
            # rest back, and re-raise.
            self.stop.set()
            pool.shutdown(wait=True, cancel_futures=True)
            buffer.extend(f.result() for f in pending if f.done() and not f.cancelled())
            with contextlib.suppress(ThreadStoreError):
                self._flush(buffer)
            with contextlib.suppress(ThreadStoreError):
                self._release_all()
            raise
        finally:
            pool.shutdown(wait=True)
        if self.auth_error is not None or self.stop.is_set():
            self._release_all()
        stopped_by = self.auth_error or self.trust_error
        return SweepReport(
            expired=len(self.claimed),
            deleted=self.deleted,
            already_gone=self.already_gone,
            failed=self.failed,
            skipped=self.unattempted_at_stop,
            lease_lost=self.lease_lost,
            stopped_by_auth=self.auth_error is not None,
            interrupted=stopped_by is None and self.stop.is_set(),
            error=str(stopped_by) if stopped_by is not None else None,
            auth_error=self.auth_error,
            stopped_untrusted=self.auth_error is None and self.trust_error is not None,
            trust_error=self.trust_error if self.auth_error is None else None,
        )

    # -- trusting 404s (calling thread; see threadstore.trust)

    def _judge(self, outcome: _Outcome) -> list[_Outcome]:
        """A 404 counts as already gone only in a proven workspace; else it waits."""
        if outcome.kind != "not_found":
            return [outcome]
        workspace = outcome.item.workspace
        if self.trust.proven(workspace):
            return [_Outcome(outcome.item, "already_gone")]
        parked = self.parked.setdefault(workspace, [])
        parked.append(outcome)
        if workspace not in self.canaried:
            self.canaried[workspace] = self._canary(workspace)
        if self.trust.proven(workspace):
            return [_Outcome(o.item, "already_gone") for o in self.parked.pop(workspace)]
        if len(parked) >= BREAKER and self.trust_error is None:
            # The circuit breaker: a run of 404s that nothing vouches for.
            self.trust_error = scope_error(workspace, count=len(parked))
            self.stop.set()
        return []

    def _canary(self, workspace: str | None) -> bool | None:
        try:
            return self.trust.canary(self.engine, workspace)
        except RemoteAuthError as exc:
            self.auth_error = self.auth_error or exc
        except UntrustedNotFound as exc:
            self.trust_error = self.trust_error or exc
        self.stop.set()
        return None

    def _unpark_proven(self) -> list[_Outcome]:
        """Parked 404s of workspaces that a confirmed delete has proven meanwhile."""
        out: list[_Outcome] = []
        for workspace in [w for w in self.parked if self.trust.proven(w)]:
            out.extend(_Outcome(o.item, "already_gone") for o in self.parked.pop(workspace))
        return out

    def _settle_parked(self) -> list[_Outcome]:
        """At the end: one more canary where the first had no answer, else give back."""
        out: list[_Outcome] = []
        for workspace in list(self.parked):
            if self.canaried.get(workspace) is None and not self.stop.is_set():
                self.canaried[workspace] = self._canary(workspace)
            parked = self.parked.pop(workspace)
            if self.trust.proven(workspace):
                out.extend(_Outcome(o.item, "already_gone") for o in parked)
                continue
            if self.trust_error is None:
                self.trust_error = scope_error(
                    workspace, thread_id=parked[0].item.thread_id, count=len(parked)
                )
            self.stop.set()
            # Given back untouched, as after an auth stop: not a failed attempt.
            out.extend(
                _Outcome(o.item, "untrusted", self.trust_error, str(self.trust_error))
                for o in parked
            )
        return out
