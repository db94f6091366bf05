"""``threadstore doctor``: is this installation healthy? One check per line.

The checks an on-call engineer (or a Kubernetes probe) needs, cheapest first:

1. ``database`` — reachable, a threadstore store, schema at head (read-only:
   nothing is created or migrated; see :func:`threadstore.db.inspect_store`).
2. ``encryption`` — the configured key decrypts the newest stored metadata and
   message (a missing or wrong key fails here, not at the first read).
3. ``dashscope`` — one request for a thread id that cannot exist: the endpoint
   must answer with DashScope's own, trusted 404 (a refused key, an unreachable
   endpoint, a proxy or a wrong base URL fail); and, when the store holds
   threads, one request for the most recently active one, which DashScope must
   still know (else the key or workspace probably does not see our threads).
4. ``last_sweep`` — the last successful sweep is younger than ``max_sweep_age``.
5. ``backlog`` — failed deletions waiting for a retry.
6. ``lost_creates`` — rows of creates whose answer was lost.

Status per check: ``ok``, ``warn`` or ``fail`` (``skip`` when an earlier failure
makes it moot). Exit status: 0 all ok, 1 some warnings, 2 something broken.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import select

from . import _rules as rules
from . import db
from .errors import (
    ConfigError,
    RemoteAuthError,
    RemoteError,
    RemoteNotFound,
    ThreadStoreError,
)
from .models import threads
from .remote import Remote
from .store import ThreadStore

__all__ = ["DEFAULT_MAX_SWEEP_AGE", "Check", "DoctorReport", "diagnose"]

DEFAULT_MAX_SWEEP_AGE = timedelta(hours=25)
"""A daily sweep with some slack; an hourly one should pass ``--max-sweep-age 3h``."""

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"


@dataclass(frozen=True)
class Check:
    """One line of the doctor's report."""

    name: str
    status: str
    detail: str

    def line(self) -> str:
        return f"{self.status:<5} {self.name:<13} {self.detail}"


@dataclass(frozen=True)
class DoctorReport:
    """All checks, in order; :attr:`exit_code` is 0 (ok), 1 (warnings) or 2 (broken)."""

    checks: tuple[Check, ...]

    @property
    def status(self) -> str:
        found = {c.status for c in self.checks}
        return FAIL if FAIL in found else WARN if WARN in found else OK

    @property
    def exit_code(self) -> int:
        return {OK: 0, WARN: 1, FAIL: 2}[self.status]

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "checks": [{"name": c.name, "status": c.status, "detail": c.detail}
                       for c in self.checks],
        }


def _age(seconds: float) -> str:
    seconds = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds}s"


def _dashscope(store: ThreadStore | None, remote: Remote) -> Check:
    probe = f"thread_{uuid.uuid4().hex}"  # an id nobody can hold
    try:
        remote.retrieve_thread(probe)
    except RemoteNotFound:
        pass  # DashScope's own 404 (an untrusted one is a ConfigError, below)
    except RemoteAuthError as exc:
        return Check("dashscope", FAIL, f"the API key is refused: {exc}")
    except ConfigError as exc:  # includes a 404 in a shape DashScope never uses
        return Check("dashscope", FAIL, str(exc))
    except RemoteError as exc:
        return Check("dashscope", FAIL, f"unreachable or failing: {exc}")
    else:
        return Check("dashscope", FAIL, f"the endpoint answered 200 for {probe}, which cannot "
                     "exist: it is not DashScope (check DASHSCOPE_HTTP_BASE_URL)")
    detail = "reachable, key accepted, unknown thread answered with DashScope's 404"
    newest = _newest_thread(store) if store is not None else None
    if newest is None:
        return Check("dashscope", OK, detail)
    thread_id, workspace = newest
    try:
        remote.retrieve_thread(thread_id, workspace=workspace)
    except RemoteNotFound:
        return Check("dashscope", WARN, f"{detail}; but the most recently active thread "
                     f"{thread_id} is unknown to it: does this key/workspace see our threads? "
                     "(threadstore verify checks them all)")
    except (RemoteError, ConfigError) as exc:
        return Check("dashscope", WARN, f"{detail}; retrieving {thread_id} failed: {exc}")
    return Check("dashscope", OK, f"{detail}; the most recently active thread is there")


def _newest_thread(store: ThreadStore) -> tuple[str, str | None] | None:
    query = (
        select(threads.c.thread_id, threads.c.workspace)
        .where(rules.is_active())
        .order_by(threads.c.last_active.desc())
        .limit(1)
    )
    with db.read(store.engine) as conn:
        row = conn.execute(query).first()
    return (row.thread_id, row.workspace) if row is not None else None


def _checks(
    url: str, remote: Remote, max_sweep_age: timedelta, open_store: Callable[..., ThreadStore]
) -> Iterator[Check]:
    try:
        found = db.inspect_store(url)
    except ThreadStoreError as exc:
        yield Check("database", FAIL, str(exc))
        found = None
    store: ThreadStore | None = None
    if found is not None:
        problem = found.problem()
        if problem is None:
            yield Check("database", OK, f"{found.url} at schema {found.revision} (head)")
        else:
            yield Check("database", FAIL, problem)
    if found is not None and found.ready:
        try:
            store = open_store(url, remote=remote, create=False)
        except ThreadStoreError as exc:
            yield Check("encryption", FAIL, str(exc))
        else:
            yield Check("encryption", OK, "the key decrypts the newest stored text"
                        if store.codec.encrypts else "no key set; stored text is plain")
    else:
        yield Check("encryption", SKIP, "no usable database")
    try:
        yield _dashscope(store, remote)
        if store is None:
            for name in ("last_sweep", "backlog", "lost_creates"):
                yield Check(name, SKIP, "no usable database")
            return
        stats = store.stats()
        age = stats.last_success_age_seconds
        if age is None:
            yield Check("last_sweep", WARN, "no successful sweep recorded yet"
                        + (f" (last one: {stats.last_sweep_outcome})"
                           if stats.last_sweep_outcome else ""))
        elif age > max_sweep_age.total_seconds():
            yield Check("last_sweep", WARN, f"last successful sweep {_age(age)} ago, more than "
                        f"{_age(max_sweep_age.total_seconds())} (last outcome: "
                        f"{stats.last_sweep_outcome})")
        else:
            yield Check("last_sweep", OK, f"last successful sweep {_age(age)} ago")
        if stats.failed_deletions:
            yield Check("backlog", WARN, f"{stats.failed_deletions} failed deletion(s) waiting "
                        f"for a retry (up to {stats.failed_max_attempts} attempts; oldest "
                        f"error: {stats.failed_oldest_error})")
        else:
            yield Check("backlog", OK, "no failed deletions waiting")
        if stats.threads_lost_creates:
            yield Check("lost_creates", WARN, f"{stats.threads_lost_creates} create(s) whose "
                        "answer was lost; the sweep removes them after --intent-days")
        else:
            yield Check("lost_creates", OK, "none")
    finally:
        if store is not None:
            store.close()


def diagnose(
    url: str,
    *,
    remote: Remote,
    max_sweep_age: timedelta = DEFAULT_MAX_SWEEP_AGE,
    open_store: Callable[..., ThreadStore] = ThreadStore,
) -> DoctorReport:
    """Run every check against the store at ``url`` and the DashScope ``remote``.

    Changes nothing: the store is opened with ``create=False`` and DashScope is
    only asked to retrieve (one id that cannot exist, one that should).
    """
    if not isinstance(max_sweep_age, timedelta) or max_sweep_age <= timedelta(0):
        raise ConfigError(f"max_sweep_age must be a positive timedelta, not {max_sweep_age!r}")
    return DoctorReport(tuple(_checks(url, remote, max_sweep_age, open_store)))
