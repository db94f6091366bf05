"""Export speed and memory: ``threadstore export messages`` beside the sqlite3 CLI.

Builds (once; cached in a temp dir keyed by size) SQLite stores of N messages —
N/100 threads of 100 messages each, with commas, quotes, newlines and CJK text —
then, in one run, prints:

* rows/s of ``threadstore export messages --format csv -o FILE`` (the CLI as a
  subprocess, start-up included) beside ``sqlite3 -csv -header DB "select * from
  messages" > FILE`` on the same table, and their ratio (goal: >= 0.5x);
* the same for ``jsonl``, ``parquet`` and the pure-Python CSV fallback (no
  pyarrow), for reference;
* the peak RSS of CSV exports of N/10 and N rows (goal: within 25 MB).

Usage::

    python benchmarks/bench_export.py              # 1,000,000 messages
    python benchmarks/bench_export.py --n 200000   # quicker
    python benchmarks/bench_export.py --rebuild    # ignore the cached stores
"""

from __future__ import annotations

import argparse
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from threadstore import ThreadStore
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


def build(n: int, rebuild: bool) -> Path:
    """A SQLite store with ``n`` messages (cached); returns its path."""
    CACHE.mkdir(exist_ok=True)
    path = CACHE / f"messages-{n}.db"
    if path.exists() and not rebuild:
        return path
    part = path.with_suffix(".part")
    for p in (part, Path(f"{part}-wal"), Path(f"{part}-shm")):
        p.unlink(missing_ok=True)
    ThreadStore(f"sqlite:///{part}", remote=FakeRemote()).close()  # schema via migrations
    rng = random.Random(n)
    start = datetime(2025, 1, 1)
    fmt = "%Y-%m-%d %H:%M:%S.%f"
    n_threads = max(1, n // PER_THREAD)
    conn = sqlite3.connect(part, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")
    t0 = time.perf_counter()
    conn.execute("BEGIN")
    thread_rows = []
    for i in range(n_threads):
        created = start + timedelta(minutes=i)
        thread_rows.append(
            (f"thread_{i:032x}", None, f"user{i % 500}", created.strftime(fmt),
             (created + timedelta(hours=2)).strftime(fmt), '{"topic": "bench"}', "active", 0, 0)
        )
    conn.executemany(
        "INSERT INTO threads (thread_id, workspace, user_id, created_at, last_active, metadata,"
        " status, pinned, attempts) VALUES (?,?,?,?,?,?,?,?,?)",
        thread_rows,
    )
    batch: list[tuple[object, ...]] = []
    made = 0
    for i in range(n_threads):
        created = start + timedelta(minutes=i)
        for j in range(PER_THREAD):
            if made == n:
                break
            at = created + timedelta(seconds=j, microseconds=rng.randrange(1_000_000))
            assistant = j % 2 == 1
            batch.append(
                (f"message_{made:032x}", f"thread_{i:032x}", "assistant" if assistant else "user",
                 _text(rng), at.strftime(fmt), f"run_{made:032x}" if assistant else None,
                 "asst_bench" if assistant else None, "{}")
            )
            made += 1
        if len(batch) >= 50_000:
            conn.executemany("INSERT INTO messages VALUES (?,?,?,?,?,?,?,?)", batch)
            batch.clear()
    conn.executemany("INSERT INTO messages VALUES (?,?,?,?,?,?,?,?)", batch)
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    part.rename(path)
    print(f"built {path} ({made:,} messages) in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return path


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


def threadstore_cmd(db_path: Path, fmt: str, out: Path) -> list[str]:
    return [sys.executable, "-m", "threadstore", "--db", f"sqlite:///{db_path}", "-q", "export",
            "messages", "--format", fmt, "-o", str(out)]


FALLBACK = (
    "import sys, threadstore.export as e; from threadstore import ThreadStore; "
    "from threadstore.testing import FakeRemote; e._pyarrow = lambda: None; "
    "s = ThreadStore(sys.argv[1], remote=FakeRemote()); "
    "s.export(sys.argv[2], table='messages', fmt='csv'); s.close()"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="messages (default 1,000,000)")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the cached stores")
    args = parser.parse_args()

    sqlite_cli = shutil.which("sqlite3")
    if sqlite_cli is None:
        raise SystemExit("the sqlite3 command-line tool is missing: apt-get install -y sqlite3")
    big = build(args.n, args.rebuild)
    small = build(max(1, args.n // 10), args.rebuild)
    work = Path(tempfile.mkdtemp(prefix="bench-export-"))
    try:
        n = args.n
        base = measure([sqlite_cli, "-csv", "-header", str(big), "select * from messages"],
                       work / "sqlite3.csv", shell_stdout=True)
        rows = [("sqlite3 -csv (baseline)", base)]
        # Start-up alone (interpreter, imports, opening the store), for reading the figures.
        rows.append(("threadstore start-up (stats)",
                     measure([sys.executable, "-m", "threadstore", "--db", f"sqlite:///{small}",
                              "stats"], work / "stats.txt", shell_stdout=True)))
        for fmt in ("csv", "jsonl", "parquet"):
            rows.append((f"threadstore export --format {fmt}",
                         measure(threadstore_cmd(big, fmt, work / f"out.{fmt}"),
                                 work / f"out.{fmt}")))
        rows.append(("csv, pure-Python fallback",
                     measure([sys.executable, "-c", FALLBACK, f"sqlite:///{big}",
                              str(work / "fallback.csv")], work / "fallback.csv")))

        print(f"\nexport of {n:,} messages (SQLite, {big.stat().st_size / 1e6:.0f} MB db)")
        print(f"{'':34} {'wall s':>7} {'rows/s':>10} {'vs sqlite3':>10} {'CPU s':>6}"
              f" {'vs sqlite3':>10} {'peak RSS':>9} {'output':>8}")
        for name, r in rows:
            print(f"{name:34} {r.seconds:7.2f} {n / r.seconds:10,.0f} "
                  f"{base.seconds / r.seconds:9.2f}x {r.cpu:6.2f} {base.cpu / r.cpu:9.2f}x"
                  f" {r.peak_mb:7.0f}MB {r.size_mb:6.0f}MB")
        csv_ratio = base.seconds / rows[2][1].seconds
        print(f"\nCSV speed vs sqlite3 (wall): {csv_ratio:.2f}x (goal >= 0.50x)"
              f" -> {'met' if csv_ratio >= 0.5 else 'NOT met'}")

        small_n = max(1, n // 10)
        mem = {}
        for label, path, count in (("small", small, small_n), ("big", big, n)):
            mem[label] = (count, measure(threadstore_cmd(path, "csv", work / "mem.csv"),
                                         work / "mem.csv"))
        print("\npeak RSS of threadstore export messages --format csv:")
        for count, r in mem.values():
            print(f"  {count:>10,} rows: {r.peak_mb:6.1f} MB")
        growth = mem["big"][1].peak_mb - mem["small"][1].peak_mb
        print(f"  growth: {growth:+.1f} MB (goal within 25 MB)"
              f" -> {'met' if abs(growth) <= 25 else 'NOT met'}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
