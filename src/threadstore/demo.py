"""``threadstore demo``: the whole lifecycle, offline, in about forty lines of output.

The demo starts the bundled DashScope emulator on 127.0.0.1 (a random port), opens
a store in a temporary SQLite file (or an empty database the user names), and goes
through what threadstore is for: create threads, add messages, run an assistant,
show stats, let threads go idle, sweep them with one remote delete failing (kept,
then retried), and export for analysts.

It talks to the emulator through :class:`~threadstore.remote.DashScopeRemote`, the
real SDK path, with the URL and a demo key passed explicitly: nothing is read from
``DASHSCOPE_*`` or ``THREADSTORE_*`` variables and nothing outside the temporary
directory is written. Each step checks what it shows; if threadstore ever broke a
promise here the demo says which one and fails (:class:`DemoError`).
"""

from __future__ import annotations

import csv
import os
import re
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet
from sqlalchemy import func, inspect, select

from . import db
from .errors import ConfigError, StoreError, ThreadNotFound, ThreadStoreError
from .models import messages, threads, utcnow
from .remote import DashScopeRemote
from .store import ThreadStore
from .testing.clock import backdate
from .testing.emulator import Emulator

__all__ = ["run_demo"]

DEMO_API_KEY = "sk-threadstore-demo"
"""The key the demo's emulator requires; it is not a DashScope key."""

IDLE_FOR = timedelta(days=10)
SWEEP_AFTER = timedelta(days=7)
ASSISTANT_ID = "asst_demo_helpdesk"
RETRY_BASE = 0.5
"""The demo's sweep backoff before the first retry, in seconds (the default is 2 s)."""
MAX_RETRY_WAIT = 30.0
"""Longest the demo waits for the first retry of a failed delete to become due (s)."""

_STATS_SHOWN = (
    "threads", "threads_active", "threads_expired", "threads_pinned", "threads_creating",
    "messages", "runs", "total_tokens", "failed_deletions", "deletions_total",
)
_PROXY_VARS = ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


class DemoError(ThreadStoreError):
    """Raised when the demo sees threadstore do something other than it promises."""


@dataclass(frozen=True)
class DemoSummary:
    """What the demo did, for callers and tests."""

    db_url: str
    created: int
    deleted: int
    retried: tuple[str, ...]
    exported_rows: int
    elapsed: float


_ID = re.compile(r"(thread|message|run|asst)_\w{12,}$")


def _short(thread_id: str) -> str:
    """``thread_1a2b3c4d…``: ids are long; eight hex digits tell them apart."""
    return thread_id[:15] + "…" if len(thread_id) > 16 else thread_id


def _clip(line: str, width: int = 96) -> str:
    return line if len(line) <= width else line[: width - 1] + "…"


def _expect(ok: bool, promise: str) -> None:
    if not ok:
        raise DemoError(f"demo check failed: {promise}")


@contextmanager
def _no_proxy_for_loopback() -> Iterator[None]:
    """Keep a user's HTTP(S)_PROXY from routing the demo's 127.0.0.1 traffic away.

    ``requests`` (under the SDK) honours proxy variables even for loopback
    addresses unless ``NO_PROXY`` names them. The change lasts for the demo only.
    """
    if not any(os.environ.get(name) for name in _PROXY_VARS):
        yield
        return
    saved = {name: os.environ.get(name) for name in ("NO_PROXY", "no_proxy")}
    current = saved["NO_PROXY"] or saved["no_proxy"] or ""
    value = ",".join(filter(None, [current, "127.0.0.1", "localhost"]))
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = value
    try:
        yield
    finally:
        for name, old in saved.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old


def run_demo(
    db_url: str | None = None,
    *,
    out: Callable[[str], None] = print,
    max_retry_wait: float = MAX_RETRY_WAIT,
) -> DemoSummary:
    """Walk through threadstore's lifecycle against a local emulator, printing via ``out``.

    ``db_url`` names an **empty** database to use (the demo sweeps, so it refuses
    one that already holds threads, and removes its own threads at the end);
    by default a SQLite file in a temporary directory is created and removed.
    Raises :class:`~threadstore.errors.ConfigError` for a bad or non-empty
    database and :class:`DemoError` if a promise visibly failed.
    """
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="threadstore-demo-") as tmp, \
            _no_proxy_for_loopback(), Emulator(api_key=DEMO_API_KEY) as emu:
        workdir = Path(tmp)
        url = db_url or f"sqlite:///{workdir / 'demo.db'}"
        remote = DashScopeRemote(api_key=DEMO_API_KEY, base_url=emu.url, timeout=10)
        # A throwaway key: the demo shows encryption at rest without reading
        # (or depending on) the user's THREADSTORE_ENCRYPTION_KEY.
        key = Fernet.generate_key().decode("ascii")
        if db_url is not None:
            _check_empty(db_url)
        with ThreadStore(url, remote=remote, encryption_key=key) as store:
            summary = _walk(
                store, emu, url, workdir, out, max_retry_wait, cleanup=db_url is not None
            )
    elapsed = time.monotonic() - started
    out("")
    out(f"Done in {elapsed:.1f} s. Next: README.md (library, cron, export, PostgreSQL).")
    return replace(summary, elapsed=elapsed)


def _check_empty(url: str) -> None:
    """Refuse, before migrating or touching anything, a database that holds threads."""
    engine = db.open_engine(url)
    try:
        with db.read(engine) as conn:
            if not inspect(conn).has_table(threads.name):
                return
            present = conn.execute(select(func.count()).select_from(threads)).scalar_one()
    except StoreError as exc:
        raise ConfigError(f"cannot open database {db.safe_url(url)}: {exc}") from exc
    finally:
        engine.dispose()
    if present:
        raise ConfigError(
            f"the demo needs an empty database, and {db.safe_url(url)} holds {present} "
            "thread(s) that it would sweep (omit --db to use a temporary file)"
        )


def _walk(
    store: ThreadStore,
    emu: Emulator,
    url: str,
    workdir: Path,
    out: Callable[[str], None],
    max_retry_wait: float,
    *,
    cleanup: bool,
) -> DemoSummary:
    step = 0

    def title(text: str) -> None:
        nonlocal step
        step += 1
        out("")
        out(f"{step}. {text}")

    def say(text: str) -> None:
        out(_clip("   " + text))

    def explain(text: str) -> None:
        for line in textwrap.wrap(text, 90):
            out("   " + line)

    out("threadstore demo: the whole lifecycle against a local DashScope emulator")
    out("(offline; no API key needed; nothing outside a temporary directory is touched)")

    # ------------------------------------------------------------------ 1
    title("Start the DashScope emulator and open the store")
    say(f"emulator  {emu.url}  (the real dashscope SDK talks to it)")
    say(f"store     {db.safe_url(store.engine.url)}")
    if store.engine.url.get_backend_name() == "sqlite" and store.engine.url.database:
        mode = Path(store.engine.url.database).stat().st_mode & 0o777
        say(f"          a SQLite file of mode {mode:04o}: readable by its owner only")

    # ------------------------------------------------------------------ 2
    title("Create threads for three users")
    plan = [
        ("alice", "billing", "Why was I charged twice this month?"),
        ("alice", "billing", "Can I get an invoice for March?"),
        ("bob", "shipping", "Where is my parcel?"),
        ("bob", "returns", "How do I return a broken kettle?"),
        ("carol", "contract", "Please keep this conversation on file."),
    ]
    created = []
    for user, topic, question in plan:
        record = store.create_thread(
            user_id=user, metadata={"topic": topic},
            messages=[{"role": "user", "content": question}],
        )
        created.append(record)
        say(f"{user:<6} {record.thread_id}  topic={topic}")
    _expect(all(emu.thread_exists(t.thread_id) for t in created), "every thread exists remotely")
    explain(
        "Each create writes a local intent row, then the DashScope thread, then marks the row "
        "active: DashScope cannot list threads, so the store must never miss one (promise 1)."
    )

    # ------------------------------------------------------------------ 3
    title("Add a message and run an assistant")
    talk = created[0].thread_id
    store.add_message(talk, "I see two payments on the 3rd.")
    run = store.run(talk, assistant_id=ASSISTANT_ID)
    reply = run.messages[-1].content if run.messages else ""
    say(f"run {_short(run.run_id)} {run.status}: {run.total_tokens} tokens; reply {reply!r}")
    mirrored = store.messages(talk)
    _expect(len(mirrored) == 3, "the run's reply is mirrored with the thread's messages")
    with store.engine.connect() as conn:
        raw = conn.execute(
            select(messages.c.content).where(messages.c.thread_id == talk).limit(1)
        ).scalar_one()
    say(f"mirrored: {len(mirrored)} messages; at rest the text reads {raw[:26]}…")
    explain(
        "Messages and runs (with token usage) are mirrored and move last_active (promise 4); "
        "encrypted at rest with THREADSTORE_ENCRYPTION_KEY, a throwaway key here (promise 6)."
    )

    # ------------------------------------------------------------------ 4
    title("Stats: threadstore stats")
    counts = store.stats().to_dict()
    shown = [f"{key}={counts[key]}" for key in _STATS_SHOWN if key in counts]
    for line in textwrap.wrap("  ".join(shown), 90):
        say(line)
    explain("`threadstore stats --json` has more (failed deletions, oldest error) for monitors.")

    # ------------------------------------------------------------------ 5
    title("Let time pass: four threads idle for 10 days, one of them pinned")
    idle_since = utcnow() - IDLE_FOR
    for record in created[1:]:
        backdate(store, record.thread_id, idle_since)
    pinned = created[-1].thread_id
    store.pin(pinned)
    say(f"testing.backdate(store, tid, now - 10 days) on 4 threads; store.pin({_short(pinned)})")
    explain("Activity extends life (alice's first thread just ran); pinned never expires.")

    # ------------------------------------------------------------------ 6
    title("Sweep threads idle for more than 7 days; DashScope fails one delete")
    victim = created[3].thread_id
    emu.fail("threads.delete", status=500, thread_id=victim, times=1)
    say(f"(emulator: the next DELETE of {_short(victim)} answers HTTP 500)")
    say(f"store.sweep(older_than=timedelta(days=7), retry_base={RETRY_BASE})"
        "  # = threadstore sweep --days 7")
    first = store.sweep(older_than=SWEEP_AFTER, retry_base=RETRY_BASE)
    _report(first, say)
    expected = {t.thread_id for t in created[1:4]}
    for thread_id in sorted(expected, key=lambda tid: tid == victim):
        _show_thread(store, emu, thread_id, say)
    _expect(first.deleted == 2 and [tid for tid, _ in first.failed] == [victim],
            "two deleted, the failing one kept")
    _expect(emu.thread_exists(pinned), "the pinned thread is never swept")
    explain(
        "Remote first: a row goes only once DashScope confirmed (or said 404). A 5xx, 429 or "
        "timeout keeps it with its error and a retry time (promise 3); a 401 stops the sweep."
    )

    # ------------------------------------------------------------------ 7
    title("Sweep again once the retry is due")
    kept = store.get_thread(victim)
    _wait_until_due(kept.next_attempt_at, max_retry_wait, say)
    second = store.sweep(older_than=SWEEP_AFTER, retry_base=RETRY_BASE)
    _report(second, say)
    _show_thread(store, emu, victim, say)
    _expect(second.deleted == 1 and not second.failed, "the kept thread is deleted on retry")
    deletes = emu.stats()["deletes_by_thread"]
    _expect(all(deletes.get(tid) == 1 for tid in expected), "one successful delete per thread")
    say(f"successful remote deletes per thread: {sorted(set(deletes.values()))} (never twice)")
    explain("Any number of sweepers (cron, scheduler, several hosts) may run at once: each "
            "expired thread gets exactly one successful remote delete (promise 2).")

    # ------------------------------------------------------------------ 8
    title("Export for analysts: threadstore export messages --format csv -o messages.csv")
    path = workdir / "messages.csv"
    rows = store.export(path, table="messages", fmt="csv")
    with path.open(newline="", encoding="utf-8") as fh:
        head = [row for _, row in zip(range(4), csv.reader(fh), strict=False)]
    for row in head:
        say(",".join(_short(cell) if _ID.match(cell) else cell for cell in row))
    say(f"({rows} rows, ids shortened here; `export deletions` gives the deletion log)")

    if cleanup:
        for record in store.list_threads():
            store.unpin(record.thread_id)
            store.delete_thread(record.thread_id)
        say("(cleaned up: the demo's remaining threads were deleted from your database)")

    return DemoSummary(
        db_url=url,
        created=len(created),
        deleted=first.deleted + second.deleted,
        retried=(victim,),
        exported_rows=rows,
        elapsed=0.0,
    )


def _report(report: Any, say: Callable[[str], None]) -> None:
    say(
        f"SweepReport: expired {report.expired}, deleted {report.deleted}, already_gone "
        f"{report.already_gone}, failed {len(report.failed)}, skipped {report.skipped}, "
        f"{report.elapsed:.2f} s"
    )


def _show_thread(
    store: ThreadStore, emu: Emulator, thread_id: str, say: Callable[[str], None]
) -> None:
    """One line: what DashScope answered to the deletes, and what happened locally."""
    answers = [s for op, tid, s in emu.calls if op == "threads.delete" and tid == thread_id]
    remote = ", ".join(f"DELETE→{s}" for s in answers) or "not called"
    try:
        record = store.get_thread(thread_id)
    except ThreadNotFound:
        pass
    else:
        when = record.next_attempt_at
        due = f", retry in {(when - utcnow()).total_seconds():.1f} s" if when else ""
        error = (record.last_error or "").split(" (request_id")[0].replace(f" for {thread_id}", "")
        kept = f"local row KEPT: attempts={record.attempts}{due}"
        say(f"{_short(thread_id)}  remote {remote} → {kept}")
        say(f"  last_error: {error}")
        return
    say(f"{_short(thread_id)}  remote {remote} → local row deleted")


def _wait_until_due(
    when: datetime | None, max_wait: float, say: Callable[[str], None]
) -> None:
    """Sleep until a kept row's retry time, which the sweep's backoff set."""
    if when is None:
        return
    delay = (when - utcnow()).total_seconds()
    if delay <= 0:
        return
    if delay > max_wait:
        raise DemoError(
            f"the sweep's first retry is {delay:.0f} s away; the demo waits {max_wait:g} s at most"
        )
    say(f"(waiting {delay:.1f} s: retries back off from retry_base seconds, doubling, jittered)")
    time.sleep(delay + 0.05)
