"""What the facade costs on top of the plain SDK, per call.

Runs, in one process against the emulator (in its own process, zero latency by
default: the harshest comparison, pure client CPU), N rounds of the same calls
through ``dashscope`` and through ``threadstore.dashscope`` — a thread create, a
message create, a run create and a run retrieve — interleaved so that drift hits
both alike, and prints the median per call of each and their ratio.
Target: facade <= 1.15x the plain SDK per call.

    python benchmarks/bench_facade.py [--n 300] [--latency-ms 0]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dashscope
from _emulator import API_KEY, emulator_process

warnings.filterwarnings("ignore", category=DeprecationWarning)


CALLS = ("Threads.create", "Messages.create", "Runs.create", "Runs.retrieve")


def _round(ds: Any) -> list[float]:
    """One round of calls; the time of each."""
    times: list[float] = []

    def timed(call: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - t0)
        assert result.status_code == 200, result
        return result

    thread = timed(lambda: ds.Threads.create(metadata={"u": "x"}, api_key=API_KEY))
    timed(lambda: ds.Messages.create(thread.id, content="hello", api_key=API_KEY))
    run = timed(lambda: ds.Runs.create(thread.id, assistant_id="asst_1", api_key=API_KEY))
    timed(lambda: ds.Runs.retrieve(run.id, thread_id=thread.id, api_key=API_KEY))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300, help="rounds of each kind")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="emulator latency")
    args = parser.parse_args()

    with emulator_process(latency_ms=args.latency_ms) as url, tempfile.TemporaryDirectory() as tmp:
        dashscope.base_http_api_url = url
        os.environ["THREADSTORE_DATABASE_URL"] = f"sqlite:///{Path(tmp) / 'bench.db'}"
        import threadstore.dashscope as facade

        plain: list[float] = []
        ours: list[float] = []
        for i in range(args.n + 10):
            p = _round(dashscope)
            f = _round(facade)
            if i >= 10:  # warm-up rounds are not counted
                plain += p
                ours += f
        failures = facade.mirror_failures()
        facade.close_stores()

    print(f"emulator latency          {args.latency_ms:8.1f} ms, n={args.n} rounds x 4 calls")
    for i, name in enumerate(CALLS):
        p_ms = statistics.median(plain[i::4]) * 1000
        o_ms = statistics.median(ours[i::4]) * 1000
        print(f"  {name:22}  plain {p_ms:6.2f} ms  facade {o_ms:6.2f} ms  {o_ms / p_ms:5.2f}x")
    plain_ms = statistics.median(plain) * 1000
    ours_ms = statistics.median(ours) * 1000
    print(f"plain SDK                 {plain_ms:8.2f} ms per call (median)")
    print(f"threadstore.dashscope     {ours_ms:8.2f} ms per call (median)")
    print(f"facade / plain            {ours_ms / plain_ms:8.2f}x   (target <= 1.15x)")
    if failures:
        print(f"mirror failures           {failures}")


if __name__ == "__main__":
    main()
