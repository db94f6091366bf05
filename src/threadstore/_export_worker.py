"""The second process of a split SQLite export (see ``export._SqliteSplit``).

SQLite renders an export's lines itself, which is CPU work, and a second thread
in the same process does not add a core's worth: SQLite builds that count
memory (the default) take one process-wide mutex for every allocation, and
rendering allocates for nearly every value. A second process has its own.

Standard library only: the parent runs this file's source with ``python -I -S
-c``, so it starts in a few milliseconds and imports nothing of the
environment's. The protocol, over the child's stdin and stdout:

1. the parent writes one JSON line: ``uri`` (read-only), ``bounds`` (SQL for
   the exported table's lowest and highest rowid), ``sql`` (one chunk's lines
   and row count, with ``params``, ``null`` at ``lo``/``hi`` for the chunk's
   rowid bounds), ``span`` (rowids per chunk), ``index`` and ``streams``;
2. the child opens the database, begins a transaction and answers ``ready``;
3. the parent, holding the write lock so that no commit can come between,
   starts its own read and writes ``go``; the child reads the bounds (its
   snapshot is fixed from here on) and answers them as a JSON line, after which
   the parent lets writers go on;
4. the child renders its chunks (``index``, ``index + streams``, …) and writes
   each as a frame: :data:`FRAME` (row count, byte count), then the lines. A
   row count of -1 is an error, its bytes the message; the child then exits 1.

The child ignores Ctrl-C (the parent reports it and ends the child) and ends
when its stdout is closed.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import struct
import sys

FRAME = struct.Struct("<qq")
ERROR = -1


def chunk_starts(lo: int, hi: int, span: int, index: int, streams: int) -> range:
    """The first rowids of stream ``index``'s chunks (the parent computes the same)."""
    return range(lo + index * span, hi + 1, streams * span)


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stdin, out = sys.stdin.buffer, sys.stdout.buffer
    job = json.loads(stdin.readline())
    try:
        conn = sqlite3.connect(job["uri"], uri=True, timeout=30, isolation_level=None)
        conn.text_factory = bytes
        conn.execute("BEGIN")
        out.write(b"ready\n")
        out.flush()
        if stdin.readline() != b"go\n":
            return 0
        lo, hi = conn.execute(job["bounds"]).fetchone()
        out.write(json.dumps([lo, hi]).encode() + b"\n")
        out.flush()
        if lo is None:
            return 0
        sql, params, span = job["sql"], list(job["params"]), job["span"]
        at_lo, at_hi = job["lo"], job["hi"]
        for start in chunk_starts(lo, hi, span, job["index"], job["streams"]):
            params[at_lo], params[at_hi] = start, start + span - 1
            data, rows = conn.execute(sql, params).fetchone()
            data = data + b"\n" if rows else b""
            out.write(FRAME.pack(rows, len(data)))
            out.write(data)
        out.flush()
    except sqlite3.Error as exc:
        message = str(exc).encode("utf-8", "replace")
        out.write(FRAME.pack(ERROR, len(message)) + message)
        out.flush()
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # the parent stopped reading: it is ending the export
        sys.exit(1)
