"""Drift detection: compare the local mirror with what DashScope still holds.

DashScope cannot list threads, so the mirror is the only record of what exists
there. Threads can still vanish behind its back (deleted from another tool, a
workspace purged, a retention policy on the vendor's side). :func:`verify_mirror`
retrieves every mirrored thread, concurrently and rate-limited, and reports those
DashScope answers 404 for. With ``fix=True`` their local rows are removed —
claimed first like any deletion, so a sweeper deleting the same thread right now
keeps it — and logged in ``deletions`` with reason ``vanished`` and remote result
``already_gone``.

Only a 404 that can be trusted counts as drift (:mod:`threadstore.trust`):
DashScope's own 404, in a workspace where DashScope found at least one of our
threads (during this run, or a canary). A 404 that is not DashScope's, or 404s
for a whole workspace in which none of our threads can be found, stop the run
with :class:`~threadstore.errors.UntrustedNotFound` and nothing is fixed: a
wrong base URL, proxy, key or workspace must not look like drift.

A transient error (5xx, 429, timeout) or any other
remote error leaves the thread "unknown": it is listed in ``errors`` and never
fixed. An auth error stops the run at once and is raised
(:class:`~threadstore.errors.RemoteAuthError`): every further call would fail the
same way, and nothing is fixed.

This module sits below ``store.py``; :meth:`ThreadStore.verify` calls it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine, func, select

from . import _rules as rules
from . import db
from .errors import (
    ConfigError,
    RemoteAuthError,
    RemoteError,
    RemoteNotFound,
    UntrustedNotFound,
)
from .models import threads
from .remote import Remote
from .sweep import claim_thread, remove_local
from .trust import Trust, scope_error

__all__ = ["VerifyReport", "verify_mirror"]

log = logging.getLogger(__name__)

PAGE = 500
FIX_LEASE = timedelta(minutes=1)


@dataclass(frozen=True)
class VerifyReport:
    """What :meth:`ThreadStore.verify` found.

    ``checked`` threads were asked about; ``missing`` lists the ids DashScope no
    longer knows (404); ``fixed`` counts those whose local rows were removed
    (``fix=True``); ``errors`` lists ``(thread_id, message)`` for threads whose
    state is unknown (transient or unexpected remote errors); ``elapsed`` is in
    seconds.
    """

    checked: int = 0
    missing: list[str] = field(default_factory=list)
    fixed: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)
    elapsed: float = 0.0

    @property
    def clean(self) -> bool:
        """True when no drift remains and every thread could be checked."""
        return not self.errors and self.fixed >= len(self.missing)

    def to_dict(self) -> dict[str, Any]:
        return {
            "checked": self.checked,
            "missing": list(self.missing),
            "fixed": self.fixed,
            "errors": [{"thread_id": tid, "error": err} for tid, err in self.errors],
            "elapsed": round(self.elapsed, 3),
        }


class _Pacer:
    """Spaces calls at least ``1/max_rps`` apart across threads; no-op without a rate."""

    def __init__(self, max_rps: float | None, stop: threading.Event) -> None:
        self._interval = 1.0 / max_rps if max_rps else 0.0
        self._next = time.monotonic()
        self._lock = threading.Lock()
        self._stop = stop

    def wait(self) -> bool:
        """Wait for our slot; False if the run was stopped meanwhile."""
        if self._interval:
            with self._lock:
                now = time.monotonic()
                slot = max(now, self._next)
                self._next = slot + self._interval
            delay = slot - now
            if delay > 0 and self._stop.wait(delay):
                return False
        return not self._stop.is_set()


def _mirrored(engine: Engine, limit: int | None) -> Iterator[tuple[str, str | None]]:
    """(thread_id, workspace) of every active thread, in pages (keyset on the id)."""
    after: str | None = None
    seen = 0
    while limit is None or seen < limit:
        size = PAGE if limit is None else min(PAGE, limit - seen)
        query = (
            select(threads.c.thread_id, threads.c.workspace)
            .where(rules.is_active())
            .order_by(threads.c.thread_id)
            .limit(size)
        )
        if after is not None:
            query = query.where(threads.c.thread_id > after)
        with db.read(engine) as conn:
            page = [(r.thread_id, r.workspace) for r in conn.execute(query)]
        yield from page
        seen += len(page)
        if len(page) < size:
            return
        after = page[-1][0]


def _fix(engine: Engine, thread_ids: list[str], owner: str) -> int:
    """Remove the rows of vanished threads; one transaction each. Returns how many."""
    fixed = 0
    for thread_id in thread_ids:
        with db.write(engine) as conn:
            # A deleter holding the lease is finishing this thread itself.
            if not claim_thread(conn, thread_id, owner=owner, lease=FIX_LEASE):
                log.info("verify: %s is being deleted by another process; left to it",
                         thread_id)
                continue
            removed = remove_local(
                conn,
                thread_id,
                reason="vanished",
                remote_result="already_gone",
                owner=owner,
            )
        if removed is not None:
            fixed += 1
            log.info("verify: removed the local rows of vanished thread %s", thread_id)
    return fixed


def _still_mirrored(engine: Engine, thread_ids: list[str]) -> set[str]:
    """The subset of ``thread_ids`` that is still an active local row."""
    found: set[str] = set()
    with db.read(engine) as conn:
        for start in range(0, len(thread_ids), PAGE):
            chunk = thread_ids[start : start + PAGE]
            found.update(
                conn.execute(
                    select(threads.c.thread_id).where(
                        threads.c.thread_id.in_(chunk), rules.is_active()
                    )
                ).scalars()
            )
    return found


def _require_trust(
    engine: Engine, trust: Trust, missing: list[str], workspace_of: dict[str, str | None]
) -> None:
    """Raise UntrustedNotFound unless every workspace with 404s is proven."""
    by_workspace: dict[str | None, list[str]] = {}
    for thread_id in missing:
        by_workspace.setdefault(workspace_of[thread_id], []).append(thread_id)
    for workspace, ids in by_workspace.items():
        if not trust.proven(workspace) and not trust.canary(engine, workspace, exclude=ids):
            raise scope_error(
                workspace, operation="threads.retrieve", thread_id=ids[0], count=len(ids)
            )


def verify_mirror(
    engine: Engine,
    remote: Remote,
    *,
    owner: str,
    fix: bool = False,
    concurrency: int = 8,
    max_rps: float | None = None,
    limit: int | None = None,
    trust: Trust | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> VerifyReport:
    """Retrieve every mirrored thread from DashScope and report those that vanished.

    ``concurrency`` threads ask at once, at most ``max_rps`` requests per second
    in total; ``limit`` checks only the first N threads (by id).
    ``progress(checked, total)`` is called from the calling thread as checks
    finish (``total`` counted at the start). With ``fix``,
    vanished threads' local rows are removed (``deletions`` reason ``vanished``).
    Raises :class:`~threadstore.errors.RemoteAuthError` (nothing fixed) when
    DashScope refuses the key, :class:`ConfigError` for bad options.
    """
    if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
        raise ConfigError(f"concurrency must be a positive integer, not {concurrency!r}")
    if max_rps is not None and not max_rps > 0:
        raise ConfigError(f"max_rps must be a positive number, not {max_rps!r}")
    if limit is not None and limit < 0:
        raise ConfigError("limit must not be negative")

    started = time.monotonic()
    stop = threading.Event()
    pacer = _Pacer(max_rps, stop)
    trust = trust or Trust(remote)
    missing: list[str] = []
    workspace_of: dict[str, str | None] = {}
    errors: list[tuple[str, str]] = []
    auth_error: list[RemoteAuthError | UntrustedNotFound] = []
    checked = 0

    def check(thread_id: str, workspace: str | None) -> bool:
        if not pacer.wait():
            return False
        try:
            remote.retrieve_thread(thread_id, workspace=workspace)
        except RemoteNotFound:
            missing.append(thread_id)
            workspace_of[thread_id] = workspace
            log.info("verify: %s no longer exists on DashScope", thread_id)
        except (RemoteAuthError, UntrustedNotFound) as exc:
            # Every further call would meet the same key or endpoint.
            auth_error.append(exc)
            stop.set()
        except RemoteError as exc:
            errors.append((thread_id, str(exc)))
            log.info("verify: %s unknown: %s", thread_id, exc)
        else:
            trust.prove(workspace)
            log.debug("verify: %s present", thread_id)
        return True

    log.info("verify: checking the mirror against DashScope (concurrency %d%s)",
             concurrency, f", max {max_rps:g} req/s" if max_rps else "")
    total = 0
    if progress is not None:
        with db.read(engine) as conn:
            total = int(conn.execute(
                select(func.count()).select_from(threads).where(rules.is_active())
            ).scalar_one())
        if limit is not None:
            total = min(total, limit)

    def advance(done: set[Future[bool]]) -> int:
        n = sum(f.result() for f in done)
        if progress is not None and n:
            progress(checked + n, max(total, checked + n))
        return n

    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="ts-verify") as pool:
        pending: set[Future[bool]] = set()
        try:
            for thread_id, workspace in _mirrored(engine, limit):
                if stop.is_set():
                    break
                # Bounded in-flight work: a store of millions never queues them all.
                if len(pending) >= concurrency * 4:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    checked += advance(done)
                pending.add(pool.submit(check, thread_id, workspace))
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                checked += advance(done)
        except BaseException:
            stop.set()
            raise
    if auth_error:
        log.info("verify: stopped after %d checks: %s", checked, auth_error[0])
        raise auth_error[0]
    _require_trust(engine, trust, missing, workspace_of)

    # A thread swept or deleted by someone else while we looked was not drift.
    if missing:
        live = _still_mirrored(engine, missing)
        missing = sorted(t for t in missing if t in live)
    fixed = _fix(engine, missing, owner) if fix and missing else 0
    report = VerifyReport(
        checked=checked,
        missing=missing,
        fixed=fixed,
        errors=sorted(errors),
        elapsed=time.monotonic() - started,
    )
    log.info(
        "verify: checked %d threads in %.1f s: %d missing on DashScope, %d fixed, %d unknown",
        report.checked, report.elapsed, len(report.missing), report.fixed, len(report.errors),
    )
    return report
