"""What the mirror costs on top of a raw DashScope create.

Runs, in one process against the emulator (in its own process), N raw
``dashscope.Threads.create`` calls and N ``store.create_thread`` calls on a
SQLite file, interleaved in rounds so drift hits both alike, and prints the
median of each and the overhead. Goals: at most 1.25x a raw create at zero
latency (pure client CPU), 1.10x at 20 ms.

    python benchmarks/bench_create.py [--n 300] [--latency-ms 20]

``--latency-ms`` is the emulator's per-request delay (DashScope itself answers in
tens of milliseconds; 0 measures pure client CPU, the harshest comparison).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import dashscope
from _emulator import API_KEY, emulator_process

from threadstore import DashScopeRemote, ThreadStore

warnings.filterwarnings("ignore", category=DeprecationWarning)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300, help="creates of each kind")
    parser.add_argument("--latency-ms", type=float, default=20.0, help="emulator latency")
    args = parser.parse_args()

    with emulator_process(latency_ms=args.latency_ms) as url, tempfile.TemporaryDirectory() as tmp:
        dashscope.base_http_api_url = url
        store = ThreadStore(
            f"sqlite:///{Path(tmp) / 'bench.db'}",
            remote=DashScopeRemote(api_key=API_KEY, base_url=url),
        )
        raw: list[float] = []
        mirrored: list[float] = []
        for i in range(args.n + 10):
            t0 = time.perf_counter()
            result = dashscope.Threads.create(metadata={"u": "x"}, api_key=API_KEY)
            t1 = time.perf_counter()
            assert result.status_code == 200, result
            store.create_thread(user_id="x", metadata={"u": "x"})
            t2 = time.perf_counter()
            if i >= 10:  # warm-up rounds are not counted
                raw.append(t1 - t0)
                mirrored.append(t2 - t1)
        store.close()

    raw_ms = statistics.median(raw) * 1000
    ours_ms = statistics.median(mirrored) * 1000
    overhead = (ours_ms / raw_ms - 1) * 100
    print(f"emulator latency        {args.latency_ms:8.1f} ms, n={args.n}")
    print(f"raw Threads.create      {raw_ms:8.2f} ms  (median)")
    print(f"store.create_thread     {ours_ms:8.2f} ms  (median)")
    print(f"mirror overhead         {overhead:+8.1f} %   ({ours_ms / raw_ms:.2f}x the raw create;"
          f" goal <= 1.25x at zero latency, <= 1.10x at 20 ms)")


if __name__ == "__main__":
    main()
