"""Make threads look idle, for tests of expiry (ours and yours).

``ThreadStore.touch`` never moves ``last_active`` backwards — activity is a fact,
and a sweep must never lose to it. A test that needs a thread idle for ten days
therefore sets the recorded time directly::

    from threadstore.testing import backdate
    backdate(store, thread.thread_id, datetime.now(timezone.utc) - timedelta(days=10))
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import select, update

from ..errors import ConfigError, ThreadNotFound
from ..models import ThreadRecord, threads

if TYPE_CHECKING:
    from ..store import ThreadStore

__all__ = ["backdate"]


def backdate(store: ThreadStore, thread_id: str, at: datetime) -> ThreadRecord:
    """Set the thread's ``last_active`` to ``at`` (aware), its own TTL's end with it.

    A test helper: it writes the mirror directly and ignores leases. Returns the
    updated record; :class:`ThreadNotFound` if the store does not hold the thread.
    """
    if not isinstance(at, datetime) or at.utcoffset() is None:
        raise ConfigError(f"expected a timezone-aware datetime, not {at!r}")
    with store.engine.begin() as conn:
        ttl = conn.execute(
            select(threads.c.ttl_seconds).where(threads.c.thread_id == thread_id)
        ).first()
        if ttl is None:
            raise ThreadNotFound(thread_id)
        seconds = ttl[0]
        conn.execute(
            update(threads)
            .where(threads.c.thread_id == thread_id)
            .values(
                last_active=at,
                ttl_expires_at=at + timedelta(seconds=seconds) if seconds is not None else None,
            )
        )
    return store.get_thread(thread_id)
