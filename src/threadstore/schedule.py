"""Running the expiry sweep periodically with APScheduler 3.x.

Each process keeps its own in-memory job store: the job runs at most once at a
time (``max_instances=1``), missed runs collapse into one (``coalesce=True``), and
a little jitter keeps many hosts from sweeping in the same second. Correctness
across processes never depends on the scheduler: two sweeps that do overlap
claim disjoint rows (see :mod:`threadstore.sweep`).

A failed run is logged on the ``threadstore.schedule`` logger and the schedule
goes on; the next run retries what is left.
"""

from __future__ import annotations

import logging
import re
import signal
import threading
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from types import FrameType
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import BaseScheduler
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.interval import IntervalTrigger

from .errors import ConfigError, RemoteAuthError, ThreadStoreError

__all__ = ["default_jitter", "parse_duration", "run_blocking", "start_background"]

log = logging.getLogger("threadstore.schedule")

JOB_ID = "threadstore-sweep"
MIN_DURATION = 1.0
MAX_DURATION = 36500 * 86400.0
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)


def parse_duration(text: str) -> timedelta:
    """``30s``, ``15m``, ``1h``, ``1d``, ``2w`` (or ``1.5h``) → timedelta; ConfigError if not."""
    match = _DURATION.match(text or "")
    if not match:
        raise ConfigError(
            f"not a duration: {text!r} (expected a number and a unit: 30s, 15m, 1h, 1d)"
        )
    seconds = float(match.group(1)) * _UNITS[match.group(2).lower()]
    # At least a second (a sweep every 0.0001 s is a busy loop against DashScope),
    # at most a century (beyond it dates overflow).
    if not MIN_DURATION <= seconds <= MAX_DURATION:
        raise ConfigError(
            f"duration {text.strip()!r} is out of range: from 1s to 36500d"
        )
    return timedelta(seconds=seconds)


def default_jitter(every: timedelta) -> float | None:
    """Up to a tenth of the interval, at most five minutes; none below ten seconds."""
    seconds = min(every.total_seconds() / 10, 300.0)
    return seconds if seconds >= 1 else None


def _job(run: Callable[[], Any]) -> Callable[[], None]:
    """Wrap one sweep so that its outcome is logged and no error escapes."""

    def sweep_job() -> None:
        log.debug("sweep starting")
        try:
            report = run()
        except RemoteAuthError as exc:
            log.error("sweep stopped: DashScope refused the API key: %s", exc)
        except ThreadStoreError as exc:
            log.error("sweep failed: %s", exc)
        except Exception:  # the schedule must survive a bad run
            log.exception("sweep crashed")
        else:
            summary = getattr(report, "summary", None)
            text = summary() if callable(summary) else str(report)
            level = logging.INFO if getattr(report, "ok", True) else logging.WARNING
            log.log(level, "sweep done: %s", text)

    return sweep_job


def _add_job(
    scheduler: BaseScheduler,
    run: Callable[[], Any],
    *,
    every: timedelta,
    jitter: float | None,
    run_now: bool,
) -> None:
    if not isinstance(every, timedelta) or every <= timedelta(0):
        raise ConfigError(f"every must be a positive timedelta, not {every!r}")
    if jitter is not None and jitter < 0:
        raise ConfigError("jitter must not be negative")
    if jitter is None:
        jitter = default_jitter(every)
    options: dict[str, Any] = {}
    if run_now:
        # Left out otherwise: an explicit next_run_time=None would add the job paused.
        options["next_run_time"] = datetime.now(timezone.utc)
    scheduler.add_job(
        _job(run),
        IntervalTrigger(seconds=every.total_seconds(), jitter=jitter),
        id=JOB_ID,
        name="threadstore expiry sweep",
        max_instances=1,
        coalesce=True,
        misfire_grace_time=None,  # a late run still runs (once, coalesced)
        replace_existing=True,
        **options,
    )


def start_background(
    run: Callable[[], Any],
    *,
    every: timedelta,
    jitter: float | None = None,
    run_now: bool = True,
) -> BackgroundScheduler:
    """Start a daemon-thread scheduler calling ``run`` every ``every``; returns it running.

    ``jitter`` (seconds) defaults to :func:`default_jitter`. With ``run_now`` the
    first run happens at once rather than after one interval. Stop it with
    ``scheduler.shutdown()``.
    """
    scheduler = BackgroundScheduler(timezone=timezone.utc, daemon=True)
    _add_job(scheduler, run, every=every, jitter=jitter, run_now=run_now)
    scheduler.start()
    log.info("sweeper started: every %s", every)
    return scheduler


class _Stop(Exception):
    """Raised from a signal handler to leave the blocking scheduler's loop."""


def run_blocking(
    run: Callable[[], Any],
    *,
    every: timedelta,
    jitter: float | None = None,
    run_now: bool = True,
    stop: threading.Event | None = None,
) -> None:
    """Run ``run`` every ``every`` in the calling thread until SIGINT or SIGTERM.

    On a signal, ``stop`` (if given) is set so that a sweep in progress can wind
    down cleanly, and the call returns once it has.
    """
    scheduler = BlockingScheduler(timezone=timezone.utc)
    _add_job(scheduler, run, every=every, jitter=jitter, run_now=run_now)

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        if stop is not None:
            stop.set()
        raise _Stop(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    log.info("scheduler running: a sweep every %s (Ctrl-C to stop)", every)
    try:
        scheduler.start()
    except _Stop as exc:
        log.info("%s received: stopping after the current sweep", exc)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if scheduler.running:
            scheduler.shutdown(wait=True)
    log.info("scheduler stopped")
