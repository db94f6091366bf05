"""Prometheus metrics of a store, in the text format node_exporter and Prometheus read.

Built with ``prometheus-client`` (imported only here, and only when metrics are
asked for, so ``threadstore stats`` starts as fast as before) from a
:class:`~threadstore.stats.Stats` snapshot:

* :func:`write_textfile` — a fresh registry per write, written atomically
  (``write_to_textfile``: a temporary file renamed over the target) for
  node_exporter's textfile collector;
* :func:`serve` — ``/metrics`` over HTTP for a long-running ``threadstore
  schedule``; every scrape takes a new snapshot.

Metric names (all gauges unless marked; see README "Operating threadstore"):

=============================================  ==========================================
``threadstore_sweep_last_success_timestamp_seconds``  end of the last sweep with outcome ok
                                                      (0: never)
``threadstore_sweep_last_duration_seconds``    duration of the last finished sweep
``threadstore_sweep_last_threads{result}``     that sweep's counts: expired, deleted,
                                               already_gone, failed, skipped, lost_creates
``threadstore_sweep_last_ok``                  1 if the last finished sweep's outcome is ok
``threadstore_sweeps_total{outcome}``          (counter) sweeps in the history, by outcome
``threadstore_threads{state}``                 active, expired, pinned, claimed, creating
``threadstore_failed_deletions``               threads waiting to retry a failed delete
``threadstore_failed_deletion_max_attempts``   most attempts of any of them
``threadstore_oldest_expired_age_seconds``     how long the longest-waiting expired thread
                                               has been expired (0: none)
``threadstore_lost_create_rows``               intent rows of creates whose answer was lost
``threadstore_deletions_last_day``             deletion-log entries in the last 24 hours
``threadstore_stats_timestamp_seconds``        when this snapshot was taken
=============================================  ==========================================
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError
from .stats import SWEEP_COUNTS, Stats

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

__all__ = ["METRIC_NAMES", "registry", "serve", "write_textfile"]

METRIC_NAMES = (
    "threadstore_sweep_last_success_timestamp_seconds",
    "threadstore_sweep_last_duration_seconds",
    "threadstore_sweep_last_threads",
    "threadstore_sweep_last_ok",
    "threadstore_sweeps_total",
    "threadstore_threads",
    "threadstore_failed_deletions",
    "threadstore_failed_deletion_max_attempts",
    "threadstore_oldest_expired_age_seconds",
    "threadstore_lost_create_rows",
    "threadstore_deletions_last_day",
    "threadstore_stats_timestamp_seconds",
)
OUTCOMES = ("ok", "failed", "auth_failed", "untrusted", "interrupted", "error", "running")


def _families(stats: Stats) -> Iterator[Metric]:
    from prometheus_client.core import (  # noqa: PLC0415 - loaded only when metrics are asked for
        CounterMetricFamily,
        GaugeMetricFamily,
    )

    def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, doc, value=value)

    success = stats.last_success_at
    yield gauge(
        "threadstore_sweep_last_success_timestamp_seconds",
        "Unix time the last sweep with outcome ok finished (0: never).",
        success.timestamp() if success is not None else 0.0,
    )
    yield gauge(
        "threadstore_sweep_last_duration_seconds",
        "Duration of the last finished sweep.",
        stats.last_sweep_duration_seconds or 0.0,
    )
    last = GaugeMetricFamily(
        "threadstore_sweep_last_threads",
        "Threads by result in the last finished sweep.",
        labels=["result"],
    )
    for name in SWEEP_COUNTS:
        last.add_metric([name], stats.last_sweep_counts.get(name, 0))
    yield last
    finished = stats.last_sweep_outcome if stats.last_sweep_finished_at is not None else None
    yield gauge(
        "threadstore_sweep_last_ok",
        "1 if the most recent sweep finished with outcome ok, else 0.",
        1.0 if finished == "ok" else 0.0,
    )
    total = CounterMetricFamily(
        "threadstore_sweeps", "Sweeps in the history, by outcome.", labels=["outcome"]
    )
    for outcome in sorted({*OUTCOMES, *stats.sweeps_by_outcome}):
        total.add_metric([outcome], stats.sweeps_by_outcome.get(outcome, 0))
    yield total
    states = GaugeMetricFamily(
        "threadstore_threads", "Mirrored threads by state.", labels=["state"]
    )
    for state, value in (
        ("active", stats.threads_active),
        ("expired", stats.threads_expired),
        ("pinned", stats.threads_pinned),
        ("claimed", stats.threads_claimed),
        ("creating", stats.threads_creating),
    ):
        states.add_metric([state], value)
    yield states
    yield gauge(
        "threadstore_failed_deletions",
        "Threads whose remote delete failed and waits for a retry (the backlog).",
        stats.failed_deletions,
    )
    yield gauge(
        "threadstore_failed_deletion_max_attempts",
        "Most failed delete attempts of any thread in the backlog.",
        stats.failed_max_attempts,
    )
    oldest = stats.expired_oldest_since
    yield gauge(
        "threadstore_oldest_expired_age_seconds",
        "Seconds since the longest-waiting expired thread expired (0: none expired).",
        max(0.0, (stats.generated_at - oldest).total_seconds()) if oldest is not None else 0.0,
    )
    yield gauge(
        "threadstore_lost_create_rows",
        "Intent rows of creates whose answer was lost (creating for over an hour).",
        stats.threads_lost_creates,
    )
    yield gauge(
        "threadstore_deletions_last_day",
        "Deletion-log entries in the last 24 hours.",
        stats.deletions_last_day,
    )
    yield gauge(
        "threadstore_stats_timestamp_seconds",
        "Unix time these numbers were taken.",
        stats.generated_at.timestamp(),
    )


class _SnapshotCollector:
    """A collector that takes a new :class:`Stats` snapshot on every collection."""

    def __init__(self, snapshot: Callable[[], Stats]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        yield from _families(self.snapshot())


def registry(snapshot: Stats | Callable[[], Stats]) -> CollectorRegistry:
    """A new registry holding the metrics of ``snapshot`` (or of each call of it)."""
    from prometheus_client import CollectorRegistry  # noqa: PLC0415

    reg = CollectorRegistry(auto_describe=False)
    reg.register(_SnapshotCollector(snapshot if callable(snapshot) else lambda: snapshot))
    return reg


def write_textfile(path: str | Path, stats: Stats) -> None:
    """Write the metrics of ``stats`` to ``path`` atomically (node_exporter's textfile format).

    ConfigError, naming the path, if it cannot be written.
    """
    from prometheus_client import write_to_textfile  # noqa: PLC0415

    target = Path(path).expanduser()
    if target.is_dir():
        raise ConfigError(f"metrics file {str(target)!r} is a directory")
    if not target.parent.is_dir():
        raise ConfigError(
            f"cannot write metrics file {str(target)!r}: no directory {target.parent}"
        )
    try:
        write_to_textfile(str(target), registry(stats))
    except OSError as exc:
        raise ConfigError(
            f"cannot write metrics file {str(target)!r}: {exc.strerror or exc}"
        ) from exc


class MetricsServer:
    """``/metrics`` on 127.0.0.1 or all interfaces; :meth:`close` stops it."""

    def __init__(self, server: Any, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def serve(port: int, snapshot: Callable[[], Stats], *, addr: str = "0.0.0.0") -> MetricsServer:  # noqa: S104 - a scrape target listens for the scraper
    """Serve ``/metrics`` on ``addr:port`` from a daemon thread; each scrape snapshots anew."""
    from prometheus_client import start_http_server  # noqa: PLC0415

    try:
        server, thread = start_http_server(port, addr=addr, registry=registry(snapshot))
    except OSError as exc:
        raise ConfigError(f"cannot serve metrics on {addr}:{port}: {exc.strerror or exc}") from exc
    return MetricsServer(server, thread)
