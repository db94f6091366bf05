"""Start the DashScope emulator in a separate process for a benchmark.

A separate process keeps the emulator's request handling off the benchmark's
GIL, so the figures measure the client, as against real DashScope.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

API_KEY = "sk-bench"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def emulator_process(latency_ms: float = 0.0, delete_latency_ms: float = 0.0) -> Iterator[str]:
    """Yield the base URL of an emulator running in a child process."""
    port = _free_port()
    code = (
        "from threadstore.testing import Emulator\n"
        f"e = Emulator(api_key={API_KEY!r}, port={port}, latency={latency_ms / 1000!r})\n"
        f"e.set_latency({delete_latency_ms / 1000!r}, op='threads.delete')\n"
        "e.serve_forever()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code])
    url = f"http://127.0.0.1:{port}/api/v1"
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        else:
            raise RuntimeError("the emulator did not start")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def compile_like_an_install() -> str:
    """Byte-compile threadstore's modules, as ``pip install`` does; a line saying so.

    From a source checkout (``pip install -e``) under ``PYTHONDONTWRITEBYTECODE=1``
    every CLI start compiles threadstore's modules again (~50 ms) — a cost no
    installed user pays, while the baselines' libraries load compiled. Compiled
    files are read even with that variable set; stale ones are recompiled.
    """
    import compileall
    from pathlib import Path

    import threadstore

    package = Path(threadstore.__file__).parent
    compileall.compile_dir(str(package), quiet=1)
    return f"(threadstore byte-compiled first, as an install is: {package})"
