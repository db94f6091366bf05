"""When a 404 may be believed: "already gone" needs evidence about the endpoint.

A delete (or ``verify``'s retrieve) answered 404 lets threadstore drop a local row
for good — the only record of a thread DashScope cannot list. So a 404 counts as
"already gone" only when two things hold:

1. **It is DashScope's answer.** Its body has DashScope's error shape
   (``{"code", "message", "request_id"}``). A base URL without ``/api/v1`` (the
   gateway's unknown-route page) or a proxy answering 404 to everything fails
   this; :mod:`threadstore.remote` then raises
   :class:`~threadstore.errors.UntrustedNotFound` instead of ``RemoteNotFound``.
2. **It is about a scope that sees our threads.** A key bound to another
   workspace, or the wrong ``workspace``, gets DashScope's own well-formed 404 for
   every thread. So a workspace's 404s are believed only once that workspace is
   *proven* for this remote: DashScope confirmed the delete of one of our threads
   there, or found (200) one of the threads we hold there — a *canary*: up to
   :data:`CANARY_TRIES` of our most recently active, unclaimed threads of that
   workspace, retrieved once. A proof is kept for :data:`PROOF_TTL` seconds per
   (base URL, workspace).

Without a proof nothing is dropped: the row stays as it was, and the operation
stops with ``UntrustedNotFound`` (``cause="scope"``; exit 2 in the CLI). The sweep
also stops once :data:`BREAKER` 404s of one workspace wait for a proof that does
not come (the circuit breaker: a misconfigured sweep must not walk the whole
store). A workspace whose every thread was really deleted elsewhere, with no live
thread of ours left to vouch for it, cannot be proven: adopt or create one thread
there, and its 404s are believed again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Collection

from sqlalchemy import Engine, select

from . import _rules as rules
from . import db
from .errors import (
    ConfigError,
    RemoteAuthError,
    RemoteError,
    RemoteNotFound,
    UntrustedNotFound,
)
from .models import threads, utcnow
from .remote import Remote

__all__ = ["BREAKER", "CANARY_TRIES", "PROOF_TTL", "Trust", "scope_error"]

log = logging.getLogger(__name__)

PROOF_TTL = 3600.0
"""Seconds a proven (base URL, workspace) stays proven."""
CANARY_TRIES = 3
"""Threads of ours retrieved, at most, to prove a workspace."""
BREAKER = 20
"""404s of one unproven workspace after which a sweep stops."""


def _where(workspace: str | None) -> str:
    return f"workspace {workspace!r}" if workspace is not None else "the default workspace"


def scope_error(
    workspace: str | None, *, operation: str = "threads.delete", thread_id: str | None = None,
    count: int = 1,
) -> UntrustedNotFound:
    """The error for 404s that no thread of ours in ``workspace`` could vouch for."""
    what = f"{count} threads" if count > 1 else (thread_id or "a thread")
    return UntrustedNotFound(
        f"DashScope answered 404 for {what} of {_where(workspace)} and found none of the "
        "threads we hold there: the API key or the workspace is probably wrong (a key of "
        "another workspace?); no local row was dropped",
        cause="scope",
        workspace=workspace,
        operation=operation,
        thread_id=thread_id,
    )


class Trust:
    """Which workspaces' 404s this remote may believe; one per :class:`ThreadStore`.

    Thread-safe. ``proven(ws)`` and ``prove(ws)`` read and record evidence;
    ``canary(...)`` goes looking for it.
    """

    def __init__(self, remote: Remote, *, ttl: float = PROOF_TTL) -> None:
        self.remote = remote
        self.ttl = ttl
        self._proven: dict[tuple[str, str | None], float] = {}
        self._lock = threading.Lock()

    def _key(self, workspace: str | None) -> tuple[str, str | None]:
        # The base URL is part of the scope: a proof made against one endpoint
        # says nothing about another (the SDK's URL can change at run time).
        try:
            base = str(getattr(self.remote, "base_url", "") or "")
        except ConfigError:
            base = ""
        return base, workspace

    def proven(self, workspace: str | None) -> bool:
        """True if a 404 for a thread of ``workspace`` may be read as "already gone"."""
        key = self._key(workspace)
        with self._lock:
            until = self._proven.get(key)
            return until is not None and until > time.monotonic()

    def prove(self, workspace: str | None) -> None:
        """Record that DashScope found (or deleted) one of our threads in ``workspace``."""
        key = self._key(workspace)
        with self._lock:
            self._proven[key] = time.monotonic() + self.ttl

    def canary(
        self, engine: Engine, workspace: str | None, *, exclude: Collection[str] = ()
    ) -> bool | None:
        """Look for one of our threads in ``workspace`` on DashScope.

        Retrieves up to :data:`CANARY_TRIES` of the most recently active local
        threads of the workspace that no deleter holds (``exclude`` skips ids).
        True: one was found, the workspace is now proven. False: every one
        answered 404 (a misconfigured scope, or all of them deleted elsewhere).
        None: no candidate, or no answer worth reading (transient errors).
        :class:`RemoteAuthError` and :class:`UntrustedNotFound` propagate.
        """
        if self.proven(workspace):
            return True
        now = utcnow()
        query = (
            select(threads.c.thread_id)
            .where(
                rules.is_active(),
                threads.c.workspace.is_(None)
                if workspace is None
                else threads.c.workspace == workspace,
                rules.lease_free(now),
            )
            .order_by(threads.c.last_active.desc(), threads.c.thread_id)
            .limit(CANARY_TRIES + len(exclude))
        )
        with db.read(engine) as conn:
            candidates = [t for t in conn.execute(query).scalars() if t not in exclude]
        verdict: bool | None = None
        for thread_id in candidates[:CANARY_TRIES]:
            try:
                self.remote.retrieve_thread(thread_id, workspace=workspace)
            except RemoteNotFound:
                verdict = False if verdict is None else verdict
                continue
            except (RemoteAuthError, UntrustedNotFound):
                raise
            except RemoteError as exc:
                log.info("canary %s in %s: no answer (%s)", thread_id, _where(workspace), exc)
                continue
            self.prove(workspace)
            log.debug("canary %s proved %s", thread_id, _where(workspace))
            return True
        return verdict
