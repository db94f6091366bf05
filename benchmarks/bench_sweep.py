"""The expiry sweep against the naive loop from the vendor docs.

Against the emulator in its own process, with ``--latency-ms`` (default 50) on
every delete, it times in one run:

* **naive**: sqlite3 selects the expired ids, then per id
  ``dashscope.Threads.delete`` through the SDK and ``DELETE`` of the row, one
  commit each (and, unlike ours, it ignores the SDK's non-raising errors);
* **store.sweep**: ``ThreadStore.sweep`` in process, default settings;
* **threadstore sweep**: the CLI in a subprocess, default settings (process
  start-up included), against the naive loop run the same way, as a script in
  its own process (its start-up, importing the SDK, included),

each on N freshly seeded expired threads, and prints the speed-ups (goals: the
CLI at least 14x the script, start-up included) and how far the in-process sweep
is from the ideal N·latency/concurrency (goal: within 1.10x).

    python benchmarks/bench_sweep.py [--n 400] [--latency-ms 50] [--concurrency 16]
    python benchmarks/bench_sweep.py --db postgresql://postgres@127.0.0.1/bench
    python benchmarks/bench_sweep.py --db mysql+pymysql://root@127.0.0.1:3306/bench

``--db`` names a database to use instead of a temporary SQLite file (its
``threads`` rows are deleted first: give it a throwaway database). The naive
loop then talks to it through SQLAlchemy with plain SQL, still one commit per
thread.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import dashscope
import requests
from _emulator import API_KEY, compile_like_an_install, emulator_process
from sqlalchemy import delete, insert

from threadstore import DashScopeRemote, ThreadStore
from threadstore.db import safe_url
from threadstore.models import threads

warnings.filterwarnings("ignore", category=DeprecationWarning)


def seed(url: str, store: ThreadStore, n: int) -> list[str]:
    """``n`` threads on the emulator, mirrored and idle for two hours (not timed)."""
    session = requests.Session()
    headers = {"Authorization": f"Bearer {API_KEY}"}

    def create(_: int) -> str:
        response = session.post(f"{url}/threads", json={}, headers=headers, timeout=10)
        response.raise_for_status()
        return str(response.json()["id"])

    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(create, range(n)))
    idle = datetime.now(timezone.utc) - timedelta(hours=2)
    with store.engine.begin() as conn:
        rows = [{"thread_id": t, "created_at": idle, "last_active": idle} for t in ids]
        conn.execute(insert(threads), rows)
    return ids


# The vendor-docs loop: select expired, delete remotely, delete the row; per id.
# Run in process and, as a cron script would, in a fresh process importing the
# SDK, like ``threadstore sweep`` is a fresh process importing threadstore.
NAIVE_SCRIPT = """
import sys, time, warnings
from datetime import datetime, timedelta, timezone
warnings.simplefilter("ignore")
import dashscope
url, key = sys.argv[1], sys.argv[2]
start = time.perf_counter()
cutoff = (datetime.now(timezone.utc) - timedelta(hours=1)).replace(tzinfo=None)
if url.startswith("sqlite:///"):
    import sqlite3
    conn = sqlite3.connect(url[len("sqlite:///"):])
    ids = [r[0] for r in conn.execute(
        "SELECT thread_id FROM threads WHERE last_active < ?", (cutoff.isoformat(" "),))]
    for thread_id in ids:
        dashscope.Threads.delete(thread_id, api_key=key)
        conn.execute("DELETE FROM threads WHERE thread_id = ?", (thread_id,))
        conn.commit()
    conn.close()
else:
    from sqlalchemy import create_engine, text
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.connect() as conn:
        ids = [r[0] for r in conn.execute(
            text("SELECT thread_id FROM threads WHERE last_active < :c"), {"c": cutoff})]
        conn.commit()
        for thread_id in ids:
            dashscope.Threads.delete(thread_id, api_key=key)
            conn.execute(text("DELETE FROM threads WHERE thread_id = :t"), {"t": thread_id})
            conn.commit()
    engine.dispose()
NAIVE_RESULT = (time.perf_counter() - start, len(ids))
"""


def naive(url: str) -> tuple[float, int]:
    """The naive loop in this process (the SDK already imported)."""
    scope: dict[str, Any] = {}
    argv = sys.argv
    sys.argv = ["naive", url, API_KEY]
    try:
        exec(NAIVE_SCRIPT, scope)  # noqa: S102 - our own script, run in process
    finally:
        sys.argv = argv
    seconds, count = scope["NAIVE_RESULT"]
    return float(seconds), int(count)


def timed_process(args: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(args, env=env, check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=400, help="expired threads per contender")
    parser.add_argument("--latency-ms", type=float, default=50.0, help="emulator delay per delete")
    parser.add_argument("--concurrency", type=int, default=16, help="the sweep's default is 16")
    parser.add_argument("--db", help="database URL (default: a temporary SQLite file)")
    args = parser.parse_args()
    n, latency = args.n, args.latency_ms / 1000
    compiled = compile_like_an_install()

    with emulator_process(delete_latency_ms=args.latency_ms) as url, \
            tempfile.TemporaryDirectory() as tmp:
        dashscope.base_http_api_url = url
        db_url = args.db or f"sqlite:///{Path(tmp) / 'bench.db'}"
        remote = DashScopeRemote(api_key=API_KEY, base_url=url)
        with ThreadStore(db_url, remote=remote) as store:
            with store.engine.begin() as conn:
                conn.execute(delete(threads))
            seed(url, store, n)
            naive_time, naive_n = naive(db_url)

            seed(url, store, n)
            report = store.sweep(timedelta(hours=1), concurrency=args.concurrency)
            if report.deleted != n or report.failed:
                raise SystemExit(f"the sweep did not delete everything: {report.summary()}")
            sweep_time = report.elapsed

            seed(url, store, n)
        env = {**os.environ, "DASHSCOPE_HTTP_BASE_URL": url, "DASHSCOPE_API_KEY": API_KEY}
        cli_time = timed_process(
            [sys.executable, "-m", "threadstore", "--db", db_url, "-q", "sweep", "--hours", "1",
             "--concurrency", str(args.concurrency)],
            env,
        )
        with ThreadStore(db_url, remote=remote) as store:
            seed(url, store, n)
        script_time = timed_process([sys.executable, "-c", NAIVE_SCRIPT, db_url, API_KEY], env)

    ideal = n * latency / args.concurrency
    print(f"{n} expired threads, {args.latency_ms:g} ms per remote delete, "
          f"concurrency {args.concurrency}, {safe_url(db_url)}")
    rows = [
        ("naive select/delete/delete loop", naive_time, f"({naive_n} threads)"),
        ("store.sweep (in process)", sweep_time,
         f"speed-up {naive_time / sweep_time:5.1f}x"),
        ("naive loop as a script (with start-up)", script_time, f"({naive_n} threads)"),
        ("threadstore sweep (CLI, with start-up)", cli_time,
         f"speed-up {script_time / cli_time:5.1f}x vs the script (goal >= 14x)"),
        ("ideal N*latency/concurrency", ideal,
         f"store.sweep is {sweep_time / ideal:.2f}x the ideal (goal <= 1.10x)"),
    ]
    for name, seconds, note in rows:
        print(f"  {name:<40} {seconds:7.2f} s  {note}")
    print(f"  {compiled}")

if __name__ == "__main__":
    main()
