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

import gc as _gc
from typing import TYPE_CHECKING, Any

# Importing SQLAlchemy (through .models) allocates tens of thousands of objects
# that live as long as the process: the collector would run over a hundred
# times while they load, traversing them again and again (~30 ms of every
# start-up, a cron sweep's included), to free next to nothing. So it is off
# while this package imports; then
# what the import allocated is moved, without a traversal, to the oldest
# generation (freeze + unfreeze: young garbage made before this import is left
# for the next full collection, as if it were old), and it is on again if it
# was. An application's own frozen objects (gc.freeze before a fork) are left
# alone.
_gc_was_enabled = _gc.isenabled()
_gc.disable()
try:
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
    from .store import ThreadStore
    from .sweep import SweepReport
finally:
    if _gc_was_enabled:
        if not _gc.get_freeze_count():
            _gc.freeze()
            _gc.unfreeze()
        _gc.enable()
    del _gc_was_enabled

if TYPE_CHECKING:
    from .stats import Stats
    from .verify import VerifyReport

# Names whose modules only some commands need: imported when first asked for.
_LAZY = {"Stats": "stats", "VerifyReport": "verify"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib  # noqa: PLC0415

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value  # asked once, then an ordinary attribute
        return value
    # ``__version__`` reads package metadata (importlib.metadata: tens of ms), so
    # only when asked: every CLI run, a cron sweep included, pays its imports.
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

        try:
            return version("threadstore")
        except PackageNotFoundError:  # running from a checkout without installing
            return "0.0.0"
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})

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
