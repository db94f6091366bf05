"""Test doubles that ship with threadstore, for our tests and for yours.

* :class:`FakeRemote` — an in-memory :class:`~threadstore.remote.Remote`, for fast
  unit tests: ``ThreadStore("sqlite://", remote=FakeRemote())``.
* :class:`Emulator` — a DashScope HTTP emulator on 127.0.0.1 that the real
  ``dashscope`` SDK talks to (set ``DASHSCOPE_HTTP_BASE_URL`` to ``emu.url``),
  with fault injection: status codes, 429 with Retry-After, latency, hangs,
  dropped connections; per operation, per thread, by rate or N times.
* :func:`backdate` — make a thread look idle (``touch`` never moves activity back).
"""

from __future__ import annotations

from .clock import backdate
from .emulator import Emulator
from .fake import FakeRemote
from .faults import OPS, Fault

__all__ = ["OPS", "Emulator", "FakeRemote", "Fault", "backdate"]
