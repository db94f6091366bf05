"""Export speed and memory: ``threadstore export messages`` beside the database's own CLI.

Builds (once; cached) a store of N messages — N/100 threads of 100 messages
each, with commas, quotes, newlines and CJK text — then, in one run, prints:

* rows/s of ``threadstore export messages --format F -o FILE`` (the CLI as a
  subprocess, start-up included) for csv, jsonl and parquet, the CSV path of a
  default install (no pyarrow), all beside the database's own CSV dump of the
  same table, and their ratio:

  - SQLite: ``sqlite3 -csv -header DB "select * from messages"``;
  - PostgreSQL: ``psql URL -c "\\copy (select * from messages) to stdout csv header"``;
  - MySQL/MariaDB: ``mysql --batch -e "select * from messages"`` (tab-separated);

* the peak RSS of each format exporting N/10 rows (``--until`` the N/10-th
  message) and N rows, and the growth between them (goal: under 25 MB).

Usage::

    python benchmarks/bench_export.py              # 1,000,000 messages, SQLite
    python benchmarks/bench_export.py --n 200000   # quicker
    python benchmarks/bench_export.py --db postgresql://postgres@127.0.0.1/bench
    python benchmarks/bench_export.py --db mysql+pymysql://root@127.0.0.1:3306/bench
    python benchmarks/bench_export.py --rebuild    # rebuild the (cached) store

A server database named by ``--db`` must exist and be empty, or hold a store this
script built with the same ``--n`` (it is reused); ``--rebuild`` empties it.
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from _emulator import compile_like_an_install
from sqlalchemy import delete, func, insert, select
from sqlalchemy.engine import make_url

from threadstore import ThreadStore
from threadstore.db import safe_url
from threadstore.models import messages, threads
from threadstore.testing import FakeRemote

PER_THREAD = 100
CACHE = Path(tempfile.gettempdir()) / "threadstore-bench-export"

WORDS = (
    "hello", "price", "refund", "order", "shipping", "你好", "谢谢", "账单", "🎉", "ok,",
    'the "best"', "plan", "upgrade", "token", "model", "qwen", "latency", "thanks!",
)


def _text(rng: random.Random) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(8, 40))]
    if rng.random() < 0.1:
        words.insert(rng.randint(0, len(words)), "\n")
    return " ".join(words)


START = datetime(2025, 1, 1, tzinfo=timezone.utc)


def _rows(n: int) -> Iterator[tuple[list[dict[str, Any]], list[dict[str, Any]]]]:
    """Threads and messages in chunks; message k of thread i at START + i min + k s."""
    rng = random.Random(n)
    made = 0
    n_threads = max(1, n // PER_THREAD)
    for first in range(0, n_threads, 200):
        thread_rows, message_rows = [], []
        for i in range(first, min(first + 200, n_threads)):
            created = START + timedelta(minutes=i)
            thread_rows.append({
                "thread_id": f"thread_{i:032x}", "user_id": f"user{i % 500}",
                "created_at": created, "last_active": created + timedelta(hours=2),
                "metadata": '{"topic": "bench"}', "status": "active",
            })
            for j in range(PER_THREAD):
                if made == n:
                    break
                assistant = j % 2 == 1
                message_rows.append({
                    "message_id": f"message_{made:032x}", "thread_id": f"thread_{i:032x}",
                    "role": "assistant" if assistant else "user", "content": _text(rng),
                    "created_at": created
                    + timedelta(seconds=j, microseconds=rng.randrange(1_000_000)),
                    "run_id": f"run_{made:032x}" if assistant else None,
                    "assistant_id": "asst_bench" if assistant else None, "metadata": "{}",
                })
                made += 1
        yield thread_rows, message_rows


def build(url: str | None, n: int, rebuild: bool) -> str:
    """A store with ``n`` messages at ``url`` (default: a cached SQLite file); its URL."""
    if url is None:
        CACHE.mkdir(exist_ok=True)
        path = CACHE / f"messages-{n}.v2.db"
        if path.exists() and not rebuild:
            with ThreadStore(f"sqlite:///{path}", remote=FakeRemote()):
                pass  # a cache built by an older threadstore: migrated, as a user's store would be
            return f"sqlite:///{path}"
        part = path.with_suffix(".part")
        for p in (part, Path(f"{part}-wal"), Path(f"{part}-shm")):
            p.unlink(missing_ok=True)
        target = f"sqlite:///{part}"
    else:
        target = url
    t0 = time.perf_counter()
    with ThreadStore(target, remote=FakeRemote()) as store:  # schema via migrations
        with store.engine.begin() as conn:
            have = conn.execute(select(func.count()).select_from(messages)).scalar_one()
            if url is not None and have == n and not rebuild:
                return url
            conn.execute(delete(messages))
            conn.execute(delete(threads))
        for thread_rows, message_rows in _rows(n):
            with store.engine.begin() as conn:
                conn.execute(insert(threads), thread_rows)
                conn.execute(insert(messages), message_rows)
    if url is None:
        part.rename(path)
        target = f"sqlite:///{path}"
    print(f"built {safe_url(target)} ({n:,} messages) in {time.perf_counter() - t0:.1f} s",
          file=sys.stderr)
    return target


def baseline(url: str) -> list[str]:
    """The database's own CLI dumping the messages table as text."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return [_tool("sqlite3"), "-csv", "-header", parsed.database or "",
                "select * from messages"]
    if backend == "postgresql":
        plain = parsed.set(drivername="postgresql").render_as_string(hide_password=False)
        return [_tool("psql"), plain, "-c",
                "\\copy (select * from messages) to stdout csv header"]
    argv = [_tool("mysql"), "--batch", "-h", parsed.host or "127.0.0.1",
            "-P", str(parsed.port or 3306), "-u", parsed.username or "root"]
    if parsed.password:
        argv.append(f"-p{parsed.password}")
    return [*argv, parsed.database or "", "-e", "select * from messages"]


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"the {name} command-line tool is missing")
    return found


@dataclass(frozen=True)
class Run:
    seconds: float
    cpu: float  # user + system seconds: steadier than wall time on a busy machine
    peak_mb: float
    size_mb: float


# Runs the command and reports its peak RSS. A small helper process, because a
# child's ru_maxrss also counts the memory of the process it was forked from
# (this benchmark, after building a store, is not small).
PEAK_HELPER = (
    "import resource, subprocess, sys, time\n"
    "out = open(sys.argv[1], 'wb') if sys.argv[1] else subprocess.DEVNULL\n"
    "t0 = time.perf_counter()\n"
    "p = subprocess.run(sys.argv[2:], stdout=out, stderr=subprocess.PIPE)\n"
    "elapsed = time.perf_counter() - t0\n"
    "sys.stderr.write(p.stderr.decode())\n"
    "u = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
    "print(elapsed, u.ru_utime + u.ru_stime, u.ru_maxrss)\n"
    "sys.exit(p.returncode)\n"
)


def measure(argv: list[str], out: Path, *, shell_stdout: bool = False) -> Run:
    """Run ``argv`` (stdout to ``out`` if asked); wall time and the child's peak RSS."""
    out.unlink(missing_ok=True)
    proc = subprocess.run(
        [sys.executable, "-c", PEAK_HELPER, str(out) if shell_stdout else "", *argv],
        capture_output=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{argv[0]} failed ({proc.returncode}): {proc.stderr.decode()}")
    # ru_maxrss is in KiB on Linux.
    seconds, cpu, peak_kib = proc.stdout.decode().split()[-3:]
    return Run(float(seconds), float(cpu), int(peak_kib) / 1024, out.stat().st_size / 1e6)


def threadstore_cmd(url: str, fmt: str, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "threadstore", "--db", url, "-q", "export",
            "messages", "--format", fmt, "-o", str(out), *extra]


# A default install: the same CLI with pyarrow (and so ADBC) unimportable.
NO_PYARROW = (
    "import sys; sys.modules['pyarrow'] = None; "
    "from threadstore.cli import main; sys.argv[0] = 'threadstore'; main()"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="messages (default 1,000,000)")
    parser.add_argument("--db", help="database URL (default: a cached SQLite file)")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the store")
    args = parser.parse_args()

    n = args.n
    url = build(args.db, n, args.rebuild)
    print(compile_like_an_install())
    backend = make_url(url).get_backend_name()
    work = Path(tempfile.mkdtemp(prefix="bench-export-"))
    try:
        base = measure(baseline(url), work / "baseline.txt", shell_stdout=True)
        rows = [(f"{backend} CLI dump (baseline)", base)]
        for fmt in ("csv", "jsonl", "parquet"):
            rows.append((f"threadstore export --format {fmt}",
                         measure(threadstore_cmd(url, fmt, work / f"out.{fmt}"),
                                 work / f"out.{fmt}")))
        for fmt in ("csv", "jsonl"):
            argv = threadstore_cmd(url, fmt, work / f"plain.{fmt}")
            rows.append((f"{fmt}, default install (no pyarrow)",
                         measure([sys.executable, "-c", NO_PYARROW, *argv[3:]],
                                 work / f"plain.{fmt}")))

        print(f"\nexport of {n:,} messages ({safe_url(url)})")
        print(f"{'':38} {'wall s':>7} {'rows/s':>10} {'vs base':>8} {'CPU s':>6}"
              f" {'vs base':>8} {'peak RSS':>9} {'output':>8}")
        for name, r in rows:
            print(f"{name:38} {r.seconds:7.2f} {n / r.seconds:10,.0f} "
                  f"{base.seconds / r.seconds:7.2f}x {r.cpu:6.2f} {base.cpu / r.cpu:7.2f}x"
                  f" {r.peak_mb:7.0f}MB {r.size_mb:6.0f}MB")

        # Memory: the same export of a tenth of the rows (--until) and of all of them.
        until = (START + timedelta(minutes=max(1, n // PER_THREAD // 10))).isoformat()
        print(f"\npeak RSS, {n // 10:,} rows (--until) -> {n:,} rows (goal: growth < 25 MB):")
        for fmt in ("csv", "jsonl", "parquet"):
            small = measure(threadstore_cmd(url, fmt, work / "m", "--until", until), work / "m")
            big = measure(threadstore_cmd(url, fmt, work / "m"), work / "m")
            growth = big.peak_mb - small.peak_mb
            print(f"  {fmt:8} {small.peak_mb:6.1f} MB -> {big.peak_mb:6.1f} MB:"
                  f" {growth:+5.1f} MB -> {'met' if growth < 25 else 'NOT met'}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
