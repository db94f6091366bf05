"""Counts an operator checks before and after a sweep, and a monitor scrapes.

:func:`compute` reads everything in one read transaction with a handful of
aggregate queries (no per-row work). :class:`Stats` is a frozen dataclass whose
:meth:`~Stats.to_dict` keys are stable: monitors may rely on them.

"Expired" is the sweep's own rule, from :mod:`threadstore._rules` (the same SQL):
not pinned, and either the thread's own TTL has run out (``ttl_expires_at``
passed) or it has none and it has been idle longer than ``older_than``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import Connection, and_, case, func, select

from . import _rules as rules
from .errors import ConfigError
from .models import (
    DELETIONS,
    KINDS,
    MESSAGES,
    RUNS,
    THREADS,
    deletions,
    runs,
    sweeps,
    threads,
    utcnow,
)

__all__ = ["LOST_CREATE_AFTER", "Stats", "ThreadCounts", "compute", "thread_counts"]

DEFAULT_OLDER_THAN = rules.DEFAULT_OLDER_THAN
SWEEP_COUNTS = ("expired", "deleted", "already_gone", "failed", "skipped", "lost_creates")
LOST_CREATE_AFTER = timedelta(hours=1)
"""An intent row this old is a create whose answer was lost: a create takes seconds."""


@dataclass(frozen=True)
class Stats:
    """A snapshot of the store.

    Threads: ``threads`` mirrored in total, of which ``threads_active`` are
    within their TTL (or pinned) and ``threads_expired`` are expired and waiting
    for a sweep; ``threads_pinned``; ``threads_claimed`` are being deleted right
    now (a live lease); ``threads_creating`` are intent rows of creates in flight
    (or left by a crash). ``failed_deletions`` threads have had a remote delete
    fail and wait for a retry: the earliest retry is due at
    ``failed_next_attempt_at`` and ``failed_oldest_error`` is that row's error.
    ``deletions_last_day`` / ``deletions_last_week`` count the deletion log.
    ``run_steps`` and ``assistants`` count what the facade mirrored of those.

    ``threads_lost_creates`` are intent rows older than :data:`LOST_CREATE_AFTER`:
    creates whose answer was lost (the sweep removes them after its intent age).
    ``expired_oldest_since`` is when the longest-waiting expired thread expired.

    Sweep history (the ``sweeps`` table): ``last_sweep_*`` describe the most
    recently started sweep (``outcome`` ``running`` while it runs, or if its
    process died); ``last_success_at`` is when the last sweep with outcome ``ok``
    finished and ``last_success_age_seconds`` how long ago that was.
    ``last_sweep_counts`` are the counts of the most recently finished sweep
    (``expired``, ``deleted``, ``already_gone``, ``failed``, ``skipped``,
    ``lost_creates``); ``sweeps_by_outcome`` counts the whole history by outcome.
    """

    generated_at: datetime
    older_than_seconds: int
    threads: int
    threads_active: int
    threads_expired: int
    threads_pinned: int
    threads_claimed: int
    threads_creating: int
    failed_deletions: int
    failed_max_attempts: int
    failed_oldest_error: str | None
    failed_next_attempt_at: datetime | None
    messages: int
    runs: int
    run_steps: int
    assistants: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    deletions_total: int
    deletions_last_day: int
    deletions_last_week: int
    threads_lost_creates: int = 0
    expired_oldest_since: datetime | None = None
    last_sweep_outcome: str | None = None
    last_sweep_started_at: datetime | None = None
    last_sweep_finished_at: datetime | None = None
    last_sweep_duration_seconds: float | None = None
    last_success_at: datetime | None = None
    last_success_age_seconds: int | None = None
    last_sweep_counts: dict[str, int] = field(default_factory=dict)
    sweeps_by_outcome: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values: datetimes as ISO 8601 UTC text, keys in a fixed order."""
        out: dict[str, Any] = {}
        for key, value in asdict(self).items():
            if isinstance(value, datetime):
                out[key] = value.astimezone(timezone.utc).isoformat(timespec="microseconds")
            else:
                out[key] = value
        return out


# Row counts for every declared kind that Stats has a field (a stable key) for;
# threads, runs and deletions get richer aggregates of their own below.
_COUNTED = tuple(
    k
    for k in KINDS
    if k.name in {f.name for f in fields(Stats)} and k not in (THREADS, RUNS, DELETIONS)
)


def _int(value: Any) -> int:
    return int(value or 0)


def compute(conn: Connection, *, older_than: timedelta = DEFAULT_OLDER_THAN,
            now: datetime | None = None) -> Stats:
    """Gather :class:`Stats` on ``conn`` (the caller owns the transaction)."""
    if not isinstance(older_than, timedelta) or older_than <= timedelta(0):
        raise ConfigError(f"older_than must be a positive timedelta, not {older_than!r}")
    now = now or utcnow()
    t = threads.c
    active = rules.is_active()
    expired = rules.expired(now=now, cutoff=now - older_than)

    def count_if(cond: Any) -> Any:
        return func.coalesce(func.sum(case((cond, 1), else_=0)), 0)

    row = conn.execute(
        select(
            count_if(active),
            count_if(expired),
            count_if(and_(active, t.pinned.is_(True))),
            count_if(and_(active, rules.lease_live(now))),
            count_if(rules.is_creating()),
            count_if(and_(active, t.attempts > 0)),
            func.coalesce(func.max(case((active, t.attempts), else_=0)), 0),
        )
    ).one()
    failed = conn.execute(
        select(t.last_error, t.next_attempt_at)
        .where(active, t.attempts > 0)
        # Nulls first, spelled the same on every backend (MySQL has no NULLS FIRST).
        .order_by(t.next_attempt_at.is_not(None), t.next_attempt_at, t.thread_id)
        .limit(1)
    ).first()
    counts = {
        kind.name: _int(conn.execute(select(func.count()).select_from(kind.table)).scalar_one())
        for kind in _COUNTED
    }
    usage = conn.execute(
        select(
            func.count(),
            func.coalesce(func.sum(runs.c.prompt_tokens), 0),
            func.coalesce(func.sum(runs.c.completion_tokens), 0),
            func.coalesce(func.sum(runs.c.total_tokens), 0),
        )
    ).one()
    d = deletions.c
    gone = conn.execute(
        select(
            func.count(),
            count_if(d.deleted_at >= now - timedelta(days=1)),
            count_if(d.deleted_at >= now - timedelta(days=7)),
        )
    ).one()
    oldest_idle = conn.execute(
        select(func.min(t.last_active)).where(expired, t.ttl_seconds.is_(None))
    ).scalar()
    oldest_ttl = conn.execute(
        select(func.min(t.ttl_expires_at)).where(expired, t.ttl_seconds.is_not(None))
    ).scalar()
    since = [v for v in (oldest_idle and oldest_idle + older_than, oldest_ttl) if v is not None]
    lost = conn.execute(
        select(func.count()).select_from(threads)
        .where(rules.is_creating(), t.created_at < now - LOST_CREATE_AFTER)
    ).scalar_one()
    s = sweeps.c
    last = conn.execute(
        select(s.outcome, s.started_at, s.finished_at)
        .order_by(s.started_at.desc(), s.id.desc()).limit(1)
    ).first()
    success = conn.execute(
        select(func.max(s.finished_at)).where(s.outcome == "ok")
    ).scalar()
    finished = conn.execute(
        select(*(s[name] for name in SWEEP_COUNTS))
        .where(s.finished_at.is_not(None))
        .order_by(s.finished_at.desc(), s.id.desc()).limit(1)
    ).first()
    by_outcome = {
        outcome: int(n)
        for outcome, n in conn.execute(select(s.outcome, func.count()).group_by(s.outcome))
    }
    return Stats(
        generated_at=now,
        older_than_seconds=int(older_than.total_seconds()),
        threads=_int(row[0]),
        threads_active=_int(row[0]) - _int(row[1]),
        threads_expired=_int(row[1]),
        threads_pinned=_int(row[2]),
        threads_claimed=_int(row[3]),
        threads_creating=_int(row[4]),
        failed_deletions=_int(row[5]),
        failed_max_attempts=_int(row[6]),
        failed_oldest_error=failed[0] if failed else None,
        failed_next_attempt_at=failed[1] if failed else None,
        runs=_int(usage[0]),
        **counts,
        prompt_tokens=_int(usage[1]),
        completion_tokens=_int(usage[2]),
        total_tokens=_int(usage[3]),
        deletions_total=_int(gone[0]),
        deletions_last_day=_int(gone[1]),
        deletions_last_week=_int(gone[2]),
        threads_lost_creates=_int(lost),
        expired_oldest_since=min(since) if since else None,
        last_sweep_outcome=last.outcome if last else None,
        last_sweep_started_at=last.started_at if last else None,
        last_sweep_finished_at=last.finished_at if last else None,
        last_sweep_duration_seconds=(
            round((last.finished_at - last.started_at).total_seconds(), 3)
            if last is not None and last.finished_at is not None else None
        ),
        last_success_at=success,
        last_success_age_seconds=(
            max(0, int((now - success).total_seconds())) if success is not None else None
        ),
        last_sweep_counts=(
            {name: int(v) for name, v in zip(SWEEP_COUNTS, finished, strict=True)}
            if finished is not None else {}
        ),
        sweeps_by_outcome=dict(sorted(by_outcome.items())),
    )


@dataclass(frozen=True)
class ThreadCounts:
    """How many messages and runs a thread has in the mirror."""

    messages: int = 0
    runs: int = 0


def thread_counts(conn: Connection, thread_ids: Iterable[str]) -> Mapping[str, ThreadCounts]:
    """Message and run counts for the given threads, in two grouped queries."""
    ids = list(thread_ids)
    if not ids:
        return {}
    n_msg = MESSAGES.count_by_thread(conn, ids)
    n_run = RUNS.count_by_thread(conn, ids)
    return {i: ThreadCounts(n_msg.get(i, 0), n_run.get(i, 0)) for i in ids}
