"""threadstore: local memory for DashScope's Assistant API.

DashScope keeps threads forever and cannot list them. threadstore mirrors every
thread you create through it into a local database (SQLite or PostgreSQL), deletes
idle ones on a TTL — remote first, local only once the remote delete is confirmed —
and streams the mirror out for analytics::

    from datetime import timedelta
    from threadstore import ThreadStore

    with ThreadStore("sqlite:///threadstore.db") as store:
        thread = store.create_thread(user_id="u1", metadata={"topic": "billing"})
        store.add_message(thread.thread_id, "hello")
        store.sweep(older_than=timedelta(days=7))
"""

from __future__ import annotations

from typing import Any

from .errors import (
    ConfigError,
    RemoteAuthError,
    RemoteError,
    RemoteNotFound,
    RemoteRateLimited,
    RemoteUnavailable,
    StoreError,
    ThreadExpired,
    ThreadNotFound,
    ThreadStoreError,
    UntrustedNotFound,
)
from .models import MessageRecord, RunRecord, ThreadRecord
from .remote import DashScopeRemote, Remote
from .stats import Stats
from .store import ThreadStore
from .sweep import SweepReport
from .verify import VerifyReport


def __getattr__(name: str) -> Any:
    # ``__version__`` reads package metadata (importlib.metadata: tens of ms), so
    # only when asked: every CLI run, a cron sweep included, pays its imports.
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

        try:
            return version("threadstore")
        except PackageNotFoundError:  # running from a checkout without installing
            return "0.0.0"
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "ConfigError",
    "DashScopeRemote",
    "MessageRecord",
    "Remote",
    "RemoteAuthError",
    "RemoteError",
    "RemoteNotFound",
    "RemoteRateLimited",
    "RemoteUnavailable",
    "RunRecord",
    "Stats",
    "StoreError",
    "SweepReport",
    "ThreadExpired",
    "ThreadNotFound",
    "ThreadRecord",
    "ThreadStore",
    "ThreadStoreError",
    "UntrustedNotFound",
    "VerifyReport",
    "__version__",
]
