"""Deleting threads: remote first, the local row only once the remote delete is confirmed.

This module holds the primitives that every deletion path shares (claiming a
thread with a lease, finishing it locally with a deletion-log entry, releasing
it for a retry) and the expiry sweep built on them.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, delete, func, insert, or_, select, update

from .models import deletions, messages, runs, threads, utcnow

__all__ = ["claim_thread", "lease_is_live", "release_thread", "remove_local"]


def lease_is_live(now: datetime | None = None) -> Any:
    """SQL condition: the row is claimed by some deleter right now."""
    now = now or utcnow()
    return and_(threads.c.lease_owner.is_not(None), threads.c.lease_expires_at > now)


def claim_thread(conn: Connection, thread_id: str, *, owner: str, lease: timedelta) -> bool:
    """Claim one thread for deletion; False if another deleter holds it."""
    now = utcnow()
    result = conn.execute(
        update(threads)
        .where(threads.c.thread_id == thread_id, threads.c.status == "active")
        .where(
            or_(
                threads.c.lease_owner.is_(None),
                threads.c.lease_expires_at <= now,
                threads.c.lease_owner == owner,
            )
        )
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
    lease (a sweeper whose lease ran out must not finish someone else's claim).
    Returns the removed thread row, or None if nothing was removed.
    """
    query = select(threads).where(threads.c.thread_id == thread_id)
    if require_lease:
        query = query.where(threads.c.lease_owner == owner)
    row = conn.execute(query).mappings().first()
    if row is None:
        return None
    n_messages = conn.execute(
        select(func.count()).select_from(messages).where(messages.c.thread_id == thread_id)
    ).scalar_one()
    n_runs = conn.execute(
        select(func.count()).select_from(runs).where(runs.c.thread_id == thread_id)
    ).scalar_one()
    # Children explicitly: ON DELETE CASCADE needs foreign keys on, which a
    # database shared with other tools may not have.
    conn.execute(delete(messages).where(messages.c.thread_id == thread_id))
    conn.execute(delete(runs).where(runs.c.thread_id == thread_id))
    conn.execute(delete(threads).where(threads.c.thread_id == thread_id))
    conn.execute(
        insert(deletions).values(
            thread_id=thread_id,
            workspace=row["workspace"],
            user_id=row["user_id"],
            created_at=row["created_at"],
            last_active=row["last_active"],
            deleted_at=utcnow(),
            reason=reason,
            remote_result=remote_result,
            message_count=n_messages,
            run_count=n_runs,
            deleted_by=owner,
        )
    )
    return dict(row)
