"""The threadstore exception tree.

Every error threadstore raises on purpose derives from :class:`ThreadStoreError`::

    ThreadStoreError
    ├── ThreadNotFound        the thread is not in the local mirror
    ├── ThreadExpired         the thread is being swept (claimed for deletion)
    ├── ConfigError           bad configuration or input: URL, key, option value, id
    ├── StoreError            the local database failed (wraps SQLAlchemy errors)
    │   └── ArchiveError          the sweep archive could not be written
    └── RemoteError           DashScope answered with an error or could not be reached
        ├── RemoteNotFound        404 in DashScope's own shape: the object does not exist there
        ├── UntrustedNotFound     a 404 that cannot mean "already gone" (also a ConfigError):
        │                         not DashScope's answer, or about a scope that cannot see
        │                         our threads (wrong base URL, proxy, key or workspace)
        ├── RemoteAuthError       401/403, or no API key at all
        ├── RemoteRateLimited     429 (``retry_after`` in seconds when the server said)
        └── RemoteUnavailable     5xx, 408, timeouts and connection errors: transient
            └── RunTimeout            a run was still going when ``wait_run`` gave up

This module imports nothing from the rest of the package, so any module may use it.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ArchiveError",
    "ConfigError",
    "RemoteAuthError",
    "RemoteError",
    "RemoteNotFound",
    "RemoteRateLimited",
    "RemoteUnavailable",
    "RunTimeout",
    "StoreError",
    "ThreadExpired",
    "ThreadNotFound",
    "ThreadStoreError",
    "UntrustedNotFound",
]


class ThreadStoreError(Exception):
    """Root of every error threadstore raises deliberately."""


class ThreadNotFound(ThreadStoreError, LookupError):
    """Raised when a thread id is not in the local mirror.

    ``thread_id`` names the id that was asked for.
    """

    def __init__(self, thread_id: str, message: str | None = None) -> None:
        self.thread_id = thread_id
        super().__init__(message or f"thread {thread_id!r} is not in the store")


class ThreadExpired(ThreadStoreError):
    """Raised when an operation targets a thread that a sweep has claimed for deletion.

    The sweep owns the thread until its lease ends; writing to it now would race
    the remote delete. ``thread_id`` names the thread.
    """

    def __init__(self, thread_id: str, message: str | None = None) -> None:
        self.thread_id = thread_id
        super().__init__(message or f"thread {thread_id!r} has expired and is being deleted")


class ConfigError(ThreadStoreError, ValueError):
    """Raised for bad configuration or bad input before anything is changed.

    Examples: a malformed or unreachable database URL, a missing directory, a
    wrong encryption key, metadata that is not JSON, a negative TTL, a string that
    cannot be a thread id (empty, too long, NUL). A well-formed id the store does
    not hold is :class:`ThreadNotFound` instead.
    """


class StoreError(ThreadStoreError):
    """Raised when the local database fails during an operation.

    The operation's transaction was rolled back; the original SQLAlchemy error is
    chained as ``__cause__``.
    """


class ArchiveError(StoreError):
    """Raised when a sweep cannot write its archive file (disk full, I/O error).

    Not a usage error: the threads whose archive write failed keep their local
    rows (the deleting transaction rolled back); their remote threads are gone,
    so the next sweep finds them answering 404 and archives them then. The
    ``OSError`` is chained as ``__cause__``. (An archive path that cannot even be
    opened is refused up front with :class:`ConfigError`.)
    """


class RemoteError(ThreadStoreError):
    """DashScope answered with an error, or could not be reached.

    Attributes carry the context of the failed call: ``status_code`` (``None``
    when no HTTP answer arrived), ``code`` and ``request_id`` from the error body,
    ``operation`` (e.g. ``"threads.delete"``) and ``thread_id`` when known.
    ``response`` is the SDK's own result object, when there was one.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        code: str | None = None,
        request_id: str | None = None,
        operation: str | None = None,
        thread_id: str | None = None,
        response: Any = None,
    ) -> None:
        self.status_code = status_code
        self.code = code
        self.request_id = request_id
        self.operation = operation
        self.thread_id = thread_id
        self.response = response
        super().__init__(message)

    @property
    def transient(self) -> bool:
        """True when retrying the same call later may succeed."""
        return False


class RemoteNotFound(RemoteError):
    """DashScope answered 404: the thread (or message, run) does not exist there."""


class UntrustedNotFound(RemoteError, ConfigError):
    """A 404 that threadstore does not take as "the thread is already gone".

    Raised instead of :class:`RemoteNotFound` when the 404's body is not
    DashScope's error JSON (``{"code", "message", "request_id"}``) — a base URL
    without ``/api/v1``, a proxy or gateway answering for DashScope — and by
    deletions and ``verify`` when DashScope's own 404s cannot be told apart from
    a key or workspace that does not see our threads: no thread we hold in that
    workspace could be found there. Nothing local is dropped on it. It is a
    :class:`ConfigError` too: retrying will not help, the configuration must
    change. ``cause`` is ``"endpoint"`` (URL, proxy) or ``"scope"`` (key,
    workspace); ``workspace`` names the workspace in question (None: the default).
    Not a subclass of :class:`RemoteNotFound`, so code that reads a
    ``RemoteNotFound`` as "already gone" never reads this one so.
    """

    def __init__(
        self, message: str, *, cause: str = "endpoint", workspace: str | None = None, **kw: Any
    ) -> None:
        self.cause = cause
        self.workspace = workspace
        kw.setdefault("status_code", 404)
        super().__init__(message, **kw)


class RemoteAuthError(RemoteError):
    """DashScope refused the API key (401/403), or no key was configured.

    A sweep stops at once on this error: every further call would fail the same way.
    """


class RemoteRateLimited(RemoteError):
    """DashScope answered 429 (throttling). Transient.

    ``retry_after`` is the server's ``Retry-After`` in seconds, or ``None``.
    """

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        self.retry_after = retry_after
        super().__init__(message, **kw)

    @property
    def transient(self) -> bool:
        return True


class RemoteUnavailable(RemoteError):
    """DashScope failed transiently: 5xx, 408, a timeout or a connection error.

    ``outcome_unknown`` is True when the request was sent but no answer came
    back (a read timeout, a connection dropped mid-request): DashScope may have
    carried it out. For a create, that means a thread may exist whose id we
    never learned.
    """

    def __init__(self, message: str, *, outcome_unknown: bool = False, **kw: Any) -> None:
        self.outcome_unknown = outcome_unknown
        super().__init__(message, **kw)

    @property
    def transient(self) -> bool:
        return True


class RunTimeout(RemoteUnavailable):
    """Raised when a run is still going after ``wait_run``'s (or ``run``'s) timeout.

    DashScope answered every poll; the run simply did not finish in time. Its last
    state stays mirrored, and waiting again may see it finish. ``run_id`` and
    ``status`` (the last one seen) say which run and where it was.

    It subclasses :class:`RemoteUnavailable` so that code written for 0.1, which
    caught that for a timeout, keeps working; catch ``RunTimeout`` first to tell
    "not finished yet" from "DashScope could not be reached".
    """

    def __init__(self, message: str, *, run_id: str, status: str, **kw: Any) -> None:
        self.run_id = run_id
        self.status = status
        super().__init__(message, **kw)
