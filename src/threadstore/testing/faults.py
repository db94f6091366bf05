"""The one fault model shared by :class:`~threadstore.testing.Emulator` and
:class:`~threadstore.testing.FakeRemote`.

Both doubles take the same ``fail(op, ...)`` arguments, validate operation names
against the same :data:`OPS`, pick faults the same way (first active match wins,
``rate=`` draws from a seeded generator) and keep the same call log of
``(op, thread_id, status)`` tuples, where status :data:`DROPPED` (0) means the
request got no answer (``hang`` or ``drop``: the caller cannot know whether it
took effect — an *outcome unknown*).
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass

__all__ = ["DEFAULT_CODES", "DROPPED", "OPS", "Fault", "FaultPlan", "FaultSteering"]

OPS: tuple[str, ...] = (
    "threads.create",
    "threads.retrieve",
    "threads.update",
    "threads.delete",
    "threads.create_and_run",
    "messages.create",
    "messages.list",
    "messages.retrieve",
    "messages.update",
    "runs.create",
    "runs.retrieve",
    "runs.list",
    "runs.update",
    "runs.cancel",
    "runs.submit_tool_outputs",
    "steps.list",
    "steps.retrieve",
    "assistants.create",
    "assistants.retrieve",
    "assistants.list",
    "assistants.update",
    "assistants.delete",
)
"""Operation names used by faults, latency and the call log.

``threads.create_and_run`` is ``POST threads/runs``, which both
``Threads.create_and_run`` and ``Runs.create_thread_and_run`` send.
"""

DROPPED = 0
"""Status recorded in the call log for requests that got no HTTP answer (drop/hang)."""

DEFAULT_CODES: dict[int, str] = {
    400: "InvalidParameter",
    401: "InvalidApiKey",
    403: "AccessDenied",
    404: "NotFound",
    408: "RequestTimeOut",
    429: "Throttling",
    500: "InternalError",
    502: "BadGateway",
    503: "ServiceUnavailable",
    504: "GatewayTimeout",
}


def check_op(op: str, *, wildcard: bool = True) -> str:
    """``op`` if it names an operation (or ``*``); ValueError otherwise."""
    if (wildcard and op == "*") or op in OPS:
        return op
    raise ValueError(f"unknown op {op!r}; expected one of {OPS}" + (" or '*'" if wildcard else ""))


@dataclass(eq=False)
class Fault:
    """One injected failure rule, created by ``fail()`` on either test double.

    ``hits`` counts the requests it affected; ``cancel()`` disables it.
    """

    id: str
    op: str
    status: int | None = 500
    code: str | None = None
    message: str | None = None
    times: int | None = None
    rate: float | None = None
    thread_id: str | None = None
    workspace: str | None = None
    retry_after: float | None = None
    latency: float | None = None
    hang: bool = False
    drop: bool = False
    hits: int = 0
    cancelled: bool = False

    def __post_init__(self) -> None:
        check_op(self.op)
        if self.status is not None and not 100 <= self.status <= 599:
            raise ValueError(f"invalid HTTP status {self.status}")
        if self.times is not None and self.times < 1:
            raise ValueError("times must be >= 1")
        if self.rate is not None and not 0.0 <= self.rate <= 1.0:
            raise ValueError("rate must be within [0, 1]")
        if self.hang and self.drop:
            raise ValueError("hang and drop are mutually exclusive")
        if self.status is not None:
            self.code = self.code or DEFAULT_CODES.get(self.status, "Error")
            self.message = self.message or f"injected fault: {self.code}"

    @property
    def active(self) -> bool:
        """False once cancelled or once ``times`` requests were affected."""
        return not self.cancelled and (self.times is None or self.hits < self.times)

    @property
    def unanswered(self) -> bool:
        """True if the request gets no answer at all (hang or drop)."""
        return self.hang or self.drop

    def cancel(self) -> None:
        """Stop applying this fault."""
        self.cancelled = True

    def _matches(self, op: str, thread_id: str | None, workspace: str | None) -> bool:
        return (
            self.active
            and self.op in ("*", op)
            and (self.thread_id is None or self.thread_id == thread_id)
            and (self.workspace is None or self.workspace == workspace)
        )


class FaultPlan:
    """The faults in force and the call log: the state both test doubles share.

    Thread-safe. ``seed`` makes ``rate=`` faults deterministic.
    """

    def __init__(self, seed: int = 0) -> None:
        self._lock = threading.Lock()
        self._seed = seed
        self._rng = random.Random(seed)
        self._faults: list[Fault] = []
        self._seq = 0
        self._calls: list[tuple[str, str | None, int]] = []
        self._counts: dict[str, dict[int, int]] = {}
        self._deletes: dict[str, int] = {}

    # -- faults

    def add(self, fault: Fault) -> Fault:
        """Put ``fault`` in force under the next ``fault_<n>`` id; returns it."""
        with self._lock:
            self._seq += 1
            fault.id = f"fault_{self._seq}"
            self._faults.append(fault)
        return fault

    def clear(self) -> None:
        """Cancel and forget every fault."""
        with self._lock:
            for fault in self._faults:
                fault.cancel()
            self._faults.clear()

    def pick(self, op: str, thread_id: str | None, workspace: str | None) -> Fault | None:
        """The fault that applies to this request (its hit counted), or None."""
        with self._lock:
            self._faults = [f for f in self._faults if f.active]
            for fault in self._faults:
                if not fault._matches(op, thread_id, workspace):
                    continue
                if fault.rate is not None and self._rng.random() >= fault.rate:
                    continue
                fault.hits += 1
                return fault
            return None

    def reseed(self) -> None:
        with self._lock:
            self._rng.seed(self._seed)

    # -- call log

    def record(self, op: str, thread_id: str | None, status: int) -> None:
        with self._lock:
            self._calls.append((op, thread_id, status))
            by_status = self._counts.setdefault(op, {})
            by_status[status] = by_status.get(status, 0) + 1
            if op == "threads.delete" and status == 200 and thread_id:
                self._deletes[thread_id] = self._deletes.get(thread_id, 0) + 1

    def count(
        self, op: str | None = None, thread_id: str | None = None, status: int | None = None
    ) -> int:
        """Requests answered, filtered by op, thread id and HTTP status (0 = drop/hang)."""
        with self._lock:
            return sum(
                1
                for o, t, s in self._calls
                if (op is None or o == op)
                and (thread_id is None or t == thread_id)
                and (status is None or s == status)
            )

    @property
    def calls(self) -> tuple[tuple[str, str | None, int], ...]:
        """Snapshot of ``(op, thread_id, status)`` per request, oldest first."""
        with self._lock:
            return tuple(self._calls)

    def reset_counters(self) -> None:
        with self._lock:
            self._calls.clear()
            self._counts.clear()
            self._deletes.clear()

    def counts(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {
                op: {str(status): n for status, n in sorted(by.items())}
                for op, by in self._counts.items()
            }

    def deletes_by_thread(self) -> dict[str, int]:
        with self._lock:
            return dict(self._deletes)


class FaultSteering:
    """The steering both test doubles expose, written once over their :class:`FaultPlan`.

    A double inherits it and sets ``self._plan`` in its ``__init__``.
    """

    _plan: FaultPlan

    def fail(
        self,
        op: str,
        *,
        status: int | None = 500,
        code: str | None = None,
        message: str | None = None,
        times: int | None = None,
        rate: float | None = None,
        thread_id: str | None = None,
        workspace: str | None = None,
        retry_after: float | None = None,
        latency: float | None = None,
        hang: bool = False,
        drop: bool = False,
    ) -> Fault:
        """Inject a fault for ``op`` (or ``"*"``); the first matching active fault wins.

        Unknown operation names raise ValueError. ``code``/``message`` default from
        ``status`` (429 -> ``Throttling`` ...). ``latency`` delays the request;
        ``status=None`` without ``hang``/``drop`` only adds ``latency``; ``hang``/``drop``
        make the outcome unknown.
        """
        return self._plan.add(Fault(
            "", op, status=status, code=code, message=message, times=times, rate=rate,
            thread_id=thread_id, workspace=workspace, retry_after=retry_after,
            latency=latency, hang=hang, drop=drop,
        ))

    def clear_faults(self) -> None:
        """Cancel and forget every fault."""
        self._plan.clear()

    def count(
        self, op: str | None = None, thread_id: str | None = None, status: int | None = None
    ) -> int:
        """Requests answered, filtered by op, thread id and HTTP status (0 = drop/hang)."""
        return self._plan.count(op, thread_id, status)

    @property
    def calls(self) -> tuple[tuple[str, str | None, int], ...]:
        """Snapshot of ``(op, thread_id, status)`` per request, oldest first."""
        return self._plan.calls

    def reset_counters(self) -> None:
        """Clear ``calls`` and ``count()``."""
        self._plan.reset_counters()
