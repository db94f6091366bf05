"""Thread-state rules: the one owner of what a thread's status, expiry and lease mean.

Every module that asks "is this thread mirrored?", "has it expired?", "is someone
deleting it?" or "may a sweep take it now?" asks here — the store, the sweep,
stats and verify — so the rules cannot drift apart again (0.1 had the expiry rule
twice, ``<`` in the sweep and ``<=`` in stats).

Statuses (:class:`ThreadStatus`): ``creating`` is the intent row of a create in
flight (or left by a crash, or a create whose outcome is unknown); ``active`` is a
mirrored thread. Only ``active`` rows are threads to the rest of threadstore.

Expiry: an active thread is expired when it is not pinned and

* it has its own TTL and ``ttl_expires_at`` (``last_active + ttl``, kept in step
  by the store) is strictly before ``now``; or
* it has none and ``last_active`` is strictly before ``cutoff``
  (``now - older_than``).

Both halves use the same strict comparison: a thread whose idle time is exactly
its TTL is not yet expired; one microsecond later it is. Both are plain indexed
comparisons, the same SQL on every backend.

Lease: a deleter (sweep, ``delete_thread``, ``verify --fix``) claims a row by
setting ``lease_owner`` and ``lease_expires_at``. The lease is live while
``lease_expires_at`` is after ``now``; a row whose lease ran out is free again
(a crashed deleter's rows come back this way).

Claimable: expired, not backing off after a failed remote delete (the retry time
is compared with the sweep's *start*, so a sweep never retries a delete that
failed during itself), and lease free.

Backoff: :func:`retry_delay` — exponential with equal jitter, capped, never less
than the server's ``Retry-After``.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, RowMapping, and_, or_

from .models import threads

__all__ = [
    "DEFAULT_OLDER_THAN",
    "RETRY_BASE",
    "ThreadStatus",
    "backing_off",
    "claimable",
    "expired",
    "is_active",
    "is_creating",
    "lease_free",
    "lease_live",
    "not_backing_off",
    "retry_delay",
    "row_lease_live",
]

DEFAULT_OLDER_THAN = timedelta(days=7)
"""The idle time after which stats count a thread as expired when not told (as ``--days 7``)."""
RETRY_BASE = 2.0
"""Seconds before the first retry of a failed remote delete (doubled per attempt)."""
MAX_RETRY_DELAY = 3600.0
"""No failed delete waits longer than this for its next attempt."""


class ThreadStatus(str, enum.Enum):
    """The ``threads.status`` column's values."""

    CREATING = "creating"
    """Intent row: the remote create is not (yet) confirmed."""
    ACTIVE = "active"
    """A mirrored thread."""

    def __str__(self) -> str:
        return self.value


_t = threads.c


def is_active() -> ColumnElement[bool]:
    """SQL: the row is a mirrored thread (not an intent row)."""
    return _t.status == ThreadStatus.ACTIVE.value


def is_creating() -> ColumnElement[bool]:
    """SQL: the row is the intent row of a create."""
    return _t.status == ThreadStatus.CREATING.value


def expired(*, now: datetime, cutoff: datetime) -> ColumnElement[bool]:
    """SQL: an active, unpinned thread whose idle time is up (see the module docstring)."""
    return and_(
        is_active(),
        _t.pinned.is_(False),
        or_(
            and_(_t.ttl_seconds.is_not(None), _t.ttl_expires_at < now),
            and_(_t.ttl_seconds.is_(None), _t.last_active < cutoff),
        ),
    )


def lease_live(now: datetime) -> ColumnElement[bool]:
    """SQL: some deleter holds the row's lease right now."""
    return and_(_t.lease_owner.is_not(None), _t.lease_expires_at > now)


def lease_free(now: datetime) -> ColumnElement[bool]:
    """SQL: nobody holds the row's lease (never claimed, released, or ran out)."""
    return or_(
        _t.lease_owner.is_(None),
        _t.lease_expires_at.is_(None),
        _t.lease_expires_at <= now,
    )


def row_lease_live(row: RowMapping | Mapping[str, Any], now: datetime) -> bool:
    """:func:`lease_live` for a row already read (Python, no query)."""
    expires = row["lease_expires_at"]
    return row["lease_owner"] is not None and expires is not None and expires > now


def not_backing_off(started: datetime) -> ColumnElement[bool]:
    """SQL: no retry is pending after ``started`` (a failed delete is due again)."""
    return or_(_t.next_attempt_at.is_(None), _t.next_attempt_at <= started)


def backing_off(started: datetime) -> ColumnElement[bool]:
    """SQL: a retry is pending after ``started`` (the complement of :func:`not_backing_off`,
    written so that the ``next_attempt_at`` index can find the rows)."""
    return _t.next_attempt_at > started


def claimable(*, now: datetime, cutoff: datetime, started: datetime) -> ColumnElement[bool]:
    """SQL: a sweep that started at ``started`` may claim the row at ``now``."""
    return and_(
        expired(now=started, cutoff=cutoff), not_backing_off(started), lease_free(now)
    )


def retry_delay(
    attempts: int,
    *,
    base: float = RETRY_BASE,
    cap: float = MAX_RETRY_DELAY,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Seconds until the next try after ``attempts`` earlier failures.

    Exponential (``base * 2**attempts``, at most ``cap``) with "equal jitter" —
    between half and all of it — so that rows which failed together do not all
    come back in the same second; never less than the server's ``retry_after``.
    """
    delay = min(cap, base * 2.0 ** min(attempts, 40))
    delay = delay / 2 + (rng or random).uniform(0, delay / 2)
    if retry_after is not None:
        delay = max(delay, min(retry_after, cap))
    return delay
