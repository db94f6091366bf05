"""Streaming exports of the mirror: ``threads``, ``messages``, ``runs``, ``deletions``, ``sweeps``.

Everything streams: one read transaction (``DEFERRED`` on SQLite, so an export
never waits for writers), a server-side cursor on PostgreSQL, rows fetched in
batches of :data:`BATCH` and written batch by batch, so memory stays flat however
large the table is. An export is one consistent read, also when two streams
read it (below): a row committed meanwhile is wholly in or wholly out.

Formats:

* ``jsonl`` — one JSON object per line, UTF-8, compact (no spaces); ``metadata``
  is embedded as an object, its numbers exactly as stored.
* ``csv`` — a header row, ``\n`` line ends, UTF-8; every string quoted (an
  empty string is ``""``), numbers and booleans bare, NULL an empty field;
  ``metadata`` is its JSON text.
* ``parquet`` — needs pyarrow (``pip install 'threadstore[parquet]'``); written in
  record batches with an explicit schema, timestamps as ``timestamp[us, tz=UTC]``.

How fast, by path (``benchmarks/bench_export.py`` has the figures): on a SQLite
file, SQLite renders the JSONL and CSV lines itself and Python only moves bytes;
with the ``[export]`` extra, Arrow reads ``messages`` and ``runs`` in C for CSV
and Parquet; on PostgreSQL (psycopg 3), CSV comes from ``COPY … TO STDOUT``.
Everything else (other backends, encrypted values, ``redact=True``) takes the
portable path: orjson (the json module without it) and pyarrow's CSV writer (the
csv module without it). Every path writes the same bytes; the tests compare them.

Two cores: a whole ``messages``, ``runs`` or ``steps`` table (no filter) is read
in chunks — of rowids on a SQLite file (:class:`_SqliteChunks`), of pages on
PostgreSQL ≥ 14 (:class:`_PgCopyChunks`, CSV) — by two streams that share one
snapshot, chunk 0, 2, 4… on one and 1, 3, 5… on the other, each a few chunks
ahead at most, written in order. On SQLite the second stream is a second process
(:mod:`threadstore._export_worker`): threads would serialize on SQLite's
allocator lock. Both start their read while this process holds the write lock
for a moment (``BEGIN IMMEDIATE``). On PostgreSQL it is a second connection that
imports the export's snapshot (``REPEATABLE READ``, ``pg_export_snapshot()``).
Where the split can't start (an in-memory or read-only SQLite database, its lock
held longer than :data:`LOCK_WAIT`, a table under :data:`SPLIT_ROWS` rowids or
:data:`SPLIT_PAGES` pages, no second connection) one stream reads it, in the
same order. An error in either stream fails the export (one
:class:`StoreError`); a consumer that stops (closed pipe, Ctrl-C) ends both.

Timestamps in text formats are ISO 8601 in UTC with microseconds and an explicit
offset: ``2026-01-02T03:04:05.123456+00:00``.

Columns: see :data:`COLUMNS`. ``threads`` carries one row per mirrored thread
with its message count, run count and token sums (aggregated subqueries joined,
not a query per row); threads still being created (intent rows) are not
exported. Sweep bookkeeping (lease owner, retry state) and ``deleted_by`` are left
out: they describe our machines, not the conversations. Encrypted content and
metadata are exported decrypted.

Redaction (``redact=True``): message ``content`` becomes ``""`` — its length in
characters stays in ``content_length``, which every messages export carries —
and every ``metadata`` object (threads and messages) keeps its keys with each
value replaced by ``null``. Nothing else holds conversation text.

``since`` (inclusive) and ``until`` (exclusive) filter on each table's natural
time: ``last_active`` for threads, ``created_at`` for messages and runs,
``deleted_at`` for deletions, ``started_at`` for sweeps.

Order: threads, deletions, sweeps and assistants come out ordered by that time,
then id; messages, runs and steps in storage order (roughly the order they were
written), because sorting millions of rows would cost more than the whole
export — sort downstream when order matters. A whole table's storage order is
its rowid order on SQLite and its page order on PostgreSQL ≥ 14 (every path
reads it in the same chunks of pages); with a filter, or on another database,
it is the order in which the database reads the matching rows (an index may
set it). Every path of one database writes the same rows in the same order.
"""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import json
import logging
import os
import queue
import re
import select as select_module
import sqlite3
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, cast

try:
    import fcntl

    _TRY_LOCK: int | None = fcntl.LOCK_EX | fcntl.LOCK_NB
except ImportError:  # Windows: stale temp files go by age instead
    _TRY_LOCK = None

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    Engine,
    Integer,
    Select,
    String,
    bindparam,
    case,
    func,
    literal,
    literal_column,
    null,
    select,
    type_coerce,
)
from sqlalchemy import cast as sql_cast
from sqlalchemy import text as sql_text
from sqlalchemy.exc import SQLAlchemyError

from . import _export_worker, db
from . import _rules as rules
from .codec import PLAIN_PREFIX, PREFIX, Codec, dump_lines, iso
from .errors import ConfigError, StoreError
from .models import (
    BOOL,
    EXPORT_FORMATS,
    INT,
    JSON,
    KIND_NAMES,
    KINDS,
    LEN,
    TEXT,
    THREADS,
    TS,
    decode_stored,
    encoded_values,
    messages,
    runs,
    threads,
)
from .models import kind as declared_kind

__all__ = ["COLUMNS", "FORMATS", "TABLES", "ExportOptions", "count_rows", "export"]

TABLES = KIND_NAMES
FORMATS = EXPORT_FORMATS
BATCH = 5000
log = logging.getLogger(__name__)

try:  # orjson: a dependency on CPython (see codec.dump_ready)
    from orjson import Fragment as _Fragment
    from orjson import loads as _orjson_loads
except ImportError:  # pragma: no cover - the json module's own floats round-trip exactly
    _Fragment = None  # type: ignore[assignment,misc]
    _orjson_loads = None  # type: ignore[assignment]

PARQUET_HINT = "parquet export needs pyarrow: pip install 'threadstore[parquet]'"

COLUMNS: dict[str, tuple[tuple[str, str], ...]] = {
    name: k.export for k in KINDS for name in (k.name, *k.aliases)
}
"""Each table's export columns and their types, from the kinds' declarations."""

Progress = Callable[[int], None]
Lines = Generator[tuple[bytes, int], None, None]
"""Batches of rendered lines and their row counts, closed by the export when it ends."""


# --------------------------------------------------------------------------- SQL

# Stored values that Codec.decode_text changes: Fernet tokens, and plain text that
# was escaped because it looked like one. Every other value is stored as is.
_ENCODED = (PREFIX, PLAIN_PREFIX)
_ENCODED_RE = f"^({PREFIX}|{PLAIN_PREFIX})"

# How timestamps arrive from the database, per backend:
#   text     SQLite's stored 'YYYY-MM-DD HH:MM:SS.ffffff' (naive UTC), fixed up
#            client-side (vectorized with pyarrow) — SQLite's own string
#            functions would cost more than the whole fetch;
#   iso      formatted by the database (PostgreSQL's to_char);
#   datetime aware datetimes from SQLAlchemy (other backends), formatted in Python
#            as they are fetched, so the writers only ever see text.
TS_TEXT, TS_ISO, TS_DATETIME = "text", "iso", "datetime"


def _fix_ts(value: str) -> str:
    return value.replace(" ", "T", 1) + "+00:00"


_iso_py = iso


@dataclass(frozen=True)
class _Query:
    statement: Select[Any]
    names: tuple[str, ...]
    kinds: tuple[str, ...]
    ts_mode: str
    table: str
    # Read plain tuples straight from the driver's cursor (SQLite): SQLAlchemy's
    # rows would cost more than the rest of the export.
    raw_cursor: bool
    # A row if any selected content or metadata is stored encoded (encrypted, or
    # escaped plain text): those need Python to decode them. None: nothing to check.
    encoded: Select[Any] | None = None
    # Every row of a thread's child table (no filter), in storage order: the
    # export can be read in chunks of rowids (SQLite) or pages (PostgreSQL)
    # whose concatenation is the same rows in the same order.
    whole_table: bool = False


def _timestamp(col: Any, ts_mode: str) -> ColumnElement[Any]:
    if ts_mode == TS_TEXT:
        return type_coerce(col, String())
    if ts_mode == TS_ISO:
        return func.to_char(
            func.timezone("UTC", col), 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"', type_=String()
        )
    return col  # type: ignore[no-any-return]


def _build(
    table: str,
    dialect: str,
    *,
    since: datetime | None,
    until: datetime | None,
    workspace: str | None,
    user_id: str | None,
) -> _Query:
    declared = declared_kind(table)
    spec = declared.export
    ts_mode = {"sqlite": TS_TEXT, "postgresql": TS_ISO}.get(dialect, TS_DATETIME)
    base, time_col, id_col = declared.table, declared.time, declared.id

    conds: list[ColumnElement[bool]] = []
    if since is not None:
        conds.append(time_col >= since)
    if until is not None:
        conds.append(time_col < until)

    owner_conds: list[ColumnElement[bool]] = []
    owner_table = threads if declared.child_of_thread or declared is THREADS else base
    if table == "sweeps" and (workspace is not None or user_id is not None):
        raise ConfigError("sweeps belong to no workspace or user: drop --workspace/--user")
    owners = (("--workspace", "workspace", workspace), ("--user", "user_id", user_id))
    for option, column, value in owners:
        if value is None:
            continue
        if column not in owner_table.c:  # assistants belong to a workspace, not a user
            raise ConfigError(f"{table} belong to no {option[2:]}: drop {option}")
        owner_conds.append(owner_table.c[column] == value)

    # content_length is filled in client-side, from the decrypted text.
    exprs: dict[str, ColumnElement[Any]] = {"content_length": null()}
    from_: Any = base
    if declared is THREADS:
        conds += [rules.is_active(), *owner_conds]
        # The same filters restrict the aggregates, so a narrow export of a big
        # store does not count every message in it.
        wanted = select(threads.c.thread_id).where(*conds)
        m = (
            select(messages.c.thread_id, func.count().label("n"))
            .where(messages.c.thread_id.in_(wanted))
            .group_by(messages.c.thread_id)
            .subquery("m")
        )
        r = (
            select(
                runs.c.thread_id,
                func.count().label("n"),
                func.sum(runs.c.prompt_tokens).label("prompt"),
                func.sum(runs.c.completion_tokens).label("completion"),
                func.sum(runs.c.total_tokens).label("total"),
            )
            .where(runs.c.thread_id.in_(wanted))
            .group_by(runs.c.thread_id)
            .subquery("r")
        )
        from_ = threads.outerjoin(m, m.c.thread_id == threads.c.thread_id).outerjoin(
            r, r.c.thread_id == threads.c.thread_id
        )
        # Integers on every backend: MySQL's SUM() is a DECIMAL (no JSON for it).
        exprs |= {
            name: sql_cast(func.coalesce(value, 0), BigInteger)
            for name, value in (
                ("message_count", m.c.n),
                ("run_count", r.c.n),
                ("prompt_tokens", r.c.prompt),
                ("completion_tokens", r.c.completion),
                ("total_tokens", r.c.total),
            )
        }
    elif declared.child_of_thread:
        if owner_conds:
            conds.append(base.c.thread_id.in_(select(threads.c.thread_id).where(*owner_conds)))
    else:
        conds += owner_conds

    # Whether any selected value is stored encoded: read from the kind's partial
    # index of such rows (SQLite, PostgreSQL), empty on a store without a key.
    prefixed = encoded_values(declared)
    encoded = None
    if prefixed is not None:
        encoded = (
            select(1)
            .select_from(base)
            .where(*conds, prefixed)
            # SQLite (no statistics) would rather walk a time or status index.
            .with_hint(base, f"INDEXED BY ix_{base.name}_encoded", dialect_name="sqlite")
            .limit(1)
        )
    columns: list[ColumnElement[Any]] = []
    for name, kind in spec:
        expr: ColumnElement[Any] = exprs[name] if name in exprs else base.c[name]
        if kind == TS:
            expr = _timestamp(expr, ts_mode)
        elif kind == BOOL:  # 0/1 from every backend; the writers make it a boolean
            expr = case((expr, 1), else_=0)
        columns.append(expr.label(name))
    statement = select(*columns).select_from(from_).where(*conds)
    whole_table = declared.child_of_thread and not conds
    if not declared.child_of_thread:
        # Small tables: ordered. Sorting messages or runs would cost more than
        # the rest of the export (and memory on the server): storage order.
        statement = statement.order_by(time_col, id_col)
    elif whole_table and dialect == "sqlite":
        # Free (a table scan is in rowid order), and it makes storage order a
        # promise: every path, split in chunks or not, writes the same bytes.
        statement = statement.order_by(_rowid(base))
    return _Query(
        statement,
        tuple(n for n, _ in spec),
        tuple(k for _, k in spec),
        ts_mode,
        table,
        raw_cursor=dialect == "sqlite",
        encoded=encoded,
        whole_table=whole_table,
    )


def _rowid(table: Any) -> ColumnElement[int]:
    return literal_column(f"{table.name}.rowid", Integer)


def _batches(
    conn: Connection,
    query: _Query,
    size: int,
    chunks: Sequence[tuple[str, str]] | None = None,
) -> Iterator[list[tuple[Any, ...]]]:
    """The result in lists of up to ``size`` plain tuples, from a streaming cursor;
    with ``chunks`` (PostgreSQL, :func:`_pg_chunks`), chunk after chunk."""
    if query.raw_cursor:
        # A plain execute: SQLAlchemy prefetches nothing, the cursor is ours.
        result = conn.execute(query.statement)
        try:
            while rows := result.cursor.fetchmany(size):
                yield cast("list[tuple[Any, ...]]", rows)  # sqlite3 returns a list of tuples
        finally:
            result.close()
        return
    statements = [query.statement]
    if chunks is not None:
        statements = [_in_chunk(query, lo, hi) for lo, hi in chunks]
    dbapi: Any = conn.connection.dbapi_connection
    if query.ts_mode == TS_ISO and hasattr(dbapi, "pgconn"):
        # psycopg 3: its own server-side cursor hands over plain tuples, built in
        # C; SQLAlchemy's rows would cost more than the rest of the export.
        for statement in statements:
            compiled = statement.compile(dialect=conn.dialect)
            with dbapi.cursor(name=f"threadstore_export_{id(query):x}") as cursor:
                cursor.execute(compiled.string, compiled.params)
                while rows := cursor.fetchmany(size):
                    yield rows
        return
    for statement in statements:
        # yield_per: a server-side cursor where the driver has one, ``size`` rows at a time.
        result = conn.execution_options(yield_per=size).execute(statement)
        for part in result.partitions():
            if query.ts_mode == TS_DATETIME:
                yield [
                    tuple(_iso_py(v) if isinstance(v, datetime) else v for v in r) for r in part
                ]
            else:
                yield [tuple(r) for r in part]


# --------------------------------------------------------------------------- SQLite renders

# SQLite can render whole JSON and CSV lines itself. Python then handles one
# bytes object per row instead of a str per cell (decoded from UTF-8, and
# encoded again to be written), which is most of the portable path's cost; and
# SQLite renders with the GIL released, while the main thread writes the
# previous batch. The bytes are the portable writers' bytes (the tests compare).


def _cat(*parts: Any) -> ColumnElement[Any]:
    out = parts[0]
    for part in parts[1:]:
        out = out.op("||")(part)
    return type_coerce(out, String())


def _csv_cell(col: Any, kind: str, text: Any) -> tuple[str, list[Any]]:
    """One cell as pyarrow's CSV writer renders it (strings quoted, NULL empty):
    its part of a ``printf`` format, and the arguments that part takes.

    ``%w`` is SQLite's printf conversion that doubles double quotes: CSV quoting
    in C. A column that may be NULL is rendered apart (NULL is an empty field).
    """
    if kind == BOOL:
        return "%s", [case((col == 1, "true"), (col == 0, "false"), else_="")]
    if kind in (INT, LEN):
        value = func.length(text) if kind == LEN else col
        return "%s", [func.coalesce(type_coerce(value, String()), "")]
    if kind == TS:  # stored 'YYYY-MM-DD HH:MM:SS.ffffff' (naive UTC)
        part, args = '"%sT%s+00:00"', [func.substr(col, 1, 10), func.substr(col, 12)]
    else:
        part, args = '"%w"', [col]
    if getattr(col, "nullable", True):
        return "%s", [case((col.is_(None), ""), else_=func.printf(part, *args))]
    return part, args


def _json_value(col: Any, kind: str, text: Any) -> ColumnElement[Any]:
    """One value as the JSONL writer renders it; ``json()`` keeps JSON's type."""
    if kind == BOOL:
        return case((col == 1, func.json("true")), (col == 0, func.json("false")))
    if kind == LEN:
        return func.length(text)
    if kind == TS:
        return _cat(func.replace(col, " ", "T"), literal("+00:00"))
    if kind == JSON:
        return case((func.json_valid(col) == 1, func.json(col)), else_=col)
    return col  # type: ignore[no-any-return]


def _csv_header(names: Sequence[str]) -> bytes:
    return (",".join(f'"{n}"' for n in names) + "\n").encode("utf-8")


def _sqlite_line(query: _Query, fmt: str, sub: Any) -> ColumnElement[Any]:
    """One export line rendered by SQLite, from the columns of ``sub`` (the export's query)."""
    spec = list(zip(query.names, query.kinds, strict=True))
    text = next((sub.c[n] for n, k in spec if k == TEXT), None)
    if fmt == "csv":
        cells = [_csv_cell(sub.c[n], k, text) for n, k in spec]
        fmt_text = ",".join(part for part, _ in cells)
        return func.printf(fmt_text, *[arg for _, cell_args in cells for arg in cell_args])
    args: list[Any] = []
    for n, k in spec:
        args += [literal(n), _json_value(sub.c[n], k, text)]
    return func.json_object(*args)


def _any_encoded(conn: Connection, query: _Query) -> bool:
    """True if any value the export selects is stored encoded (it must be decoded).

    Answered from the kind's partial index of such rows (``ix_<table>_encoded``,
    empty without a key). PostgreSQL is kept off a sequential scan for it: with no
    statistics (a table never analyzed) its planner may expect a match within the
    first rows of the table and read all of them, finding none.
    """
    if query.encoded is None:
        return False
    if conn.dialect.name != "postgresql":
        return conn.execute(query.encoded).first() is not None
    setting = sql_text("SELECT set_config('enable_seqscan', :value, true)")
    was = conn.exec_driver_sql("SELECT current_setting('enable_seqscan')").scalar_one()
    conn.execute(setting, {"value": "off"})
    found = conn.execute(query.encoded).first() is not None
    # Restored only after a success: a failed query has aborted the transaction
    # (the setting ends with it), and a restore would hide the real error.
    conn.execute(setting, {"value": was})
    return found


def _sqlite_lines(
    engine: Engine, conn: Connection, query: _Query, fmt: str, size: int, redact: bool
) -> Lines | None:
    """Batches of lines rendered by SQLite, with their row counts; None if it can't.

    Only for plain values: redaction, or any encoded (encrypted or escaped) value
    in the selection, takes the portable path for the whole export — checked in
    the export's own read transaction, so the answer holds for its rows.

    A whole child table is rendered in chunks of ``size`` rowids, each one
    statement that hands over all its lines at once (:class:`_SqliteChunks`), by
    two processes when the table is large enough; anything else in batches of
    rows from one statement.
    """
    if query.ts_mode != TS_TEXT or fmt not in ("jsonl", "csv") or redact:
        return None
    if query.whole_table:
        chunks = _SqliteChunks(engine, conn, query, fmt, size)
        if not chunks.start():
            return None
        return chunks.lines()
    if _any_encoded(conn, query):
        return None
    sub = query.statement.subquery("x")
    result = conn.execute(select(_sqlite_line(query, fmt, sub)).select_from(sub))
    dbapi = conn.connection.dbapi_connection

    def batches() -> Iterator[tuple[bytes, int]]:
        old = dbapi.text_factory  # type: ignore[union-attr]
        dbapi.text_factory = bytes  # type: ignore[union-attr]
        try:
            while rows := result.cursor.fetchmany(size):
                yield b"\n".join([r[0] for r in rows]) + b"\n", len(rows)
        finally:
            dbapi.text_factory = old  # type: ignore[union-attr]
            result.close()

    return _prefetched(batches())


SPLIT_ROWS = 100_000
"""Rowids from which a whole-table SQLite export is rendered by two processes."""
LOCK_WAIT = 1.0
"""Seconds a split export waits for SQLite's write lock before it reads alone."""
WORKER_WAIT = 10.0
"""Seconds a split export waits for its second process to start or answer."""


def _worker_source() -> str:
    """The second process's program: :mod:`threadstore._export_worker`, run as source."""
    return Path(__file__).with_name("_export_worker.py").read_text("utf-8")


class _Worker:
    """The second process of a split SQLite export (:mod:`threadstore._export_worker`)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        assert proc.stdin is not None  # noqa: S101 - both piped
        assert proc.stdout is not None  # noqa: S101
        self.stdin, self.stdout = proc.stdin, proc.stdout

    @classmethod
    def spawn(cls, job: dict[str, Any]) -> _Worker | None:
        """A started worker that has opened the database and waits for ``go``; None if
        this platform or interpreter can't run one (the export then reads alone)."""
        if os.name != "posix" or getattr(sys, "frozen", False) or not sys.executable:
            return None
        try:  # OSError also if the program's source can't be read (a zipped install)
            proc = subprocess.Popen(  # noqa: S603 - our interpreter, our program
                [sys.executable, "-I", "-S", "-c", _worker_source()],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
        except OSError as exc:
            log.debug("export reads in one process: %s", exc)
            return None
        worker = cls(proc)
        if worker.send(json.dumps(job)) and worker.answer() == "ready":
            return worker
        worker.close()
        return None

    def send(self, line: str) -> bool:
        try:
            self.stdin.write(line.encode("utf-8") + b"\n")
            self.stdin.flush()
        except OSError:
            return False
        return True

    def answer(self) -> str | None:
        """The worker's next line, or None if it sends none in :data:`WORKER_WAIT` seconds."""
        ready, _, _ = select_module.select([self.stdout], [], [], WORKER_WAIT)
        line = self.stdout.readline() if ready else b""
        return line.decode("utf-8").strip() if line.endswith(b"\n") else None

    def frames(self, chunks: int) -> Iterator[tuple[bytes, int, bool]]:
        """The lines and row counts of the worker's next ``chunks`` chunks (each ends one)."""
        for _ in range(chunks):
            rows, size = _export_worker.FRAME.unpack(self._read(_export_worker.FRAME.size))
            data = self._read(size)
            if rows == _export_worker.ERROR:
                raise StoreError(f"database read failed: {data.decode('utf-8', 'replace')}")
            yield data, rows, True

    def _read(self, size: int) -> bytes:
        data = self.stdout.read(size)
        if len(data) != size:
            raise StoreError(f"export's second process ended early (status {self.proc.poll()})")
        return data

    def close(self, *, finished: bool = False) -> None:
        """Reap the worker: ``finished`` (every frame read), once it exits; else at once."""
        for pipe in (self.stdin, self.stdout):
            with contextlib.suppress(OSError):
                pipe.close()
        if finished:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(WORKER_WAIT)
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


class _SqliteChunks:
    """A whole child table's lines, rendered by SQLite in chunks of rowids, in order.

    Chunk k covers rowids ``lo + k*span`` to ``lo + (k+1)*span - 1`` (``lo`` and
    ``hi``: the table's lowest and highest rowid); each is one statement whose
    rows are ``ORDER BY rowid`` and whose lines SQLite joins (``group_concat``),
    so Python handles one bytes object per chunk. Chunks in rowid order are the
    table in rowid order: the same bytes as any other path.

    On a SQLite file of at least :data:`SPLIT_ROWS` rowids, a second process
    (:class:`_Worker`) renders the odd chunks while a thread here renders the
    even ones; the export writes them in order, each stream a few chunks ahead
    at most. Both read one snapshot: the worker's read transaction and the
    export's start while this process holds SQLite's write lock (``BEGIN
    IMMEDIATE``, for a moment), so no commit comes between them. Anything that
    keeps the split from starting (an in-memory database, a read-only file, a
    writer holding the lock for more than :data:`LOCK_WAIT` seconds, no
    interpreter to start) leaves the export to one stream, never to an error.
    """

    def __init__(self, engine: Engine, conn: Connection, query: _Query, fmt: str, span: int):
        self.engine, self.conn, self.query, self.span = engine, conn, query, span
        self.table = declared_kind(query.table).table.name
        # Two subqueries: SQLite answers a lone min() or max() of the rowid from the
        # b-tree's ends, but both in one SELECT by scanning the table.
        t = self.table
        self.bounds = f"SELECT (SELECT min(rowid) FROM {t}), (SELECT max(rowid) FROM {t})"
        lo, hi = bindparam("chunk_lo", type_=Integer), bindparam("chunk_hi", type_=Integer)
        rowid = _rowid(declared_kind(query.table).table)
        sub = query.statement.where(rowid.between(lo, hi)).subquery("x")
        line = _sqlite_line(query, fmt, sub)
        chunk = select(func.group_concat(line, literal("\n")), func.count()).select_from(sub)
        compiled = chunk.compile(dialect=conn.dialect)
        names = list(compiled.positiontup or ())
        self.sql = compiled.string
        self.params: list[Any] = [
            None if n in ("chunk_lo", "chunk_hi") else _sqlite_param(compiled.params[n])
            for n in names
        ]
        self.at_lo, self.at_hi = names.index("chunk_lo"), names.index("chunk_hi")
        self.worker: _Worker | None = None
        self.lo: int | None = None
        self.hi = 0

    def start(self) -> bool:
        """Fix the snapshot (shared with a worker if it pays); False if the portable
        path must write this export (encoded values)."""
        try:
            self.lo, self.hi = self._split() or self.conn.exec_driver_sql(self.bounds).one()
            query = self.query
            if _any_encoded(self.conn, query):
                self.close()
                return False
        except BaseException:
            self.close()
            raise
        return True

    def _split(self) -> tuple[int, int] | None:
        """The table's bounds, read in a snapshot a worker shares; None: no worker."""
        path = db._sqlite_file(self.engine.url)
        if path is None:
            return None
        try:
            lock = sqlite3.connect(path, timeout=LOCK_WAIT, isolation_level=None)
        except sqlite3.Error:
            return None
        try:
            lo, hi = lock.execute(self.bounds).fetchone()
            if lo is None or hi - lo + 1 < max(SPLIT_ROWS, 2 * self.span):
                return None
            self.worker = _Worker.spawn({
                "uri": f"{path.resolve().as_uri()}?mode=ro",
                "bounds": self.bounds,
                "sql": self.sql,
                "params": self.params,
                "lo": self.at_lo,
                "hi": self.at_hi,
                "span": self.span,
                "index": 1,
                "streams": 2,
            })
            if self.worker is None:
                return None
            try:
                lock.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:  # read-only, or a writer holds the lock
                log.debug("export reads in one process: %s", exc)
                self.close()
                return None
            try:
                lo, hi = self.conn.exec_driver_sql(self.bounds).one()
                theirs = self.worker.answer() if self.worker.send("go") else None
            finally:
                lock.rollback()
            if theirs != json.dumps([lo, hi]):
                # Not a snapshot we share (or no answer): this one is ours alone.
                log.debug("export reads in one process: the worker answered %r", theirs)
                self.close()
            return lo, hi
        finally:
            lock.close()

    def _render(self, index: int, streams: int) -> Iterator[tuple[bytes, int, bool]]:
        """This process's chunks (``index``, ``index + streams``, …), rendered here."""
        assert self.lo is not None  # noqa: S101 - only called with rows to read
        dbapi: Any = self.conn.connection.dbapi_connection
        cursor = dbapi.cursor()
        old = dbapi.text_factory
        dbapi.text_factory = bytes
        params = list(self.params)
        try:
            for first in _export_worker.chunk_starts(self.lo, self.hi, self.span, index, streams):
                params[self.at_lo], params[self.at_hi] = first, first + self.span - 1
                data, rows = cursor.execute(self.sql, params).fetchone()
                yield (data + b"\n" if rows else b""), rows, True
        except sqlite3.Error as exc:
            raise StoreError(f"database read failed: {exc}") from exc
        finally:
            dbapi.text_factory = old
            cursor.close()

    def lines(self) -> Lines:
        """Every chunk's lines and row count, in order (empty chunks left out)."""
        streams: list[Generator[tuple[bytes, int, bool], None, None]] = []
        finished = False
        try:
            if self.lo is None:
                return
            if self.worker is None:
                streams = [_prefetched(self._render(0, 1))]
            else:
                # Two chunks ahead per stream: both cores busy, memory for six chunks.
                theirs = len(_export_worker.chunk_starts(self.lo, self.hi, self.span, 1, 2))
                streams = [
                    _prefetched(self._render(0, 2), depth=2),
                    _prefetched(self.worker.frames(theirs), depth=2),
                ]
            yield from _in_order(streams)
            finished = True
        finally:
            self.close(finished=finished)  # first: a stream blocked on its pipe ends with it
            for stream in streams:
                stream.close()

    def close(self, *, finished: bool = False) -> None:
        if self.worker is not None:
            self.worker.close(finished=finished)
            self.worker = None


def _pg_cells(query: _Query, sub: Any) -> list[ColumnElement[Any]]:
    """The export's columns as ``COPY`` writes them (lengths and booleans in SQL)."""
    spec = list(zip(query.names, query.kinds, strict=True))
    text = next((sub.c[n] for n, k in spec if k == TEXT), None)
    cells: list[ColumnElement[Any]] = []
    for name, kind in spec:
        col: ColumnElement[Any] = sub.c[name]
        if kind == LEN and text is not None:
            col = func.char_length(text)
        elif kind == BOOL:
            col = case((col == 1, "true"), (col == 0, "false"))
        cells.append(col.label(name))
    return cells


def _pg_copy(
    engine: Engine,
    conn: Connection,
    query: _Query,
    fmt: str,
    size: int,
    redact: bool,
    chunks: Sequence[tuple[str, str]] | None = None,
) -> Lines | None:
    """Batches of CSV rows from PostgreSQL's ``COPY … TO STDOUT``; None if it can't.

    The server renders every row (pyarrow's CSV form: ``FORCE_QUOTE`` on the
    string columns, NULL as an empty field), psycopg hands over one bytes object
    per row. None as well if any selected value is encoded (checked in the
    export's snapshot): the caller then takes the portable path, which also
    writes the header of an empty export. With ``chunks`` (a whole table, see
    :func:`_pg_chunks`), one ``COPY`` per chunk, by two connections when the
    table is large enough (:class:`_PgCopyChunks`).
    """
    if conn.dialect.name != "postgresql" or fmt != "csv" or redact:
        return None
    dbapi: Any = conn.connection.dbapi_connection
    if not hasattr(dbapi, "pgconn"):
        return None  # a driver other than psycopg 3
    spec = list(zip(query.names, query.kinds, strict=True))
    quoted = ", ".join(f'"{n}"' for n, k in spec if k not in (INT, LEN, BOOL))
    options = f"TO STDOUT WITH (FORMAT csv, FORCE_QUOTE ({quoted}))"
    # In the export's snapshot (REPEATABLE READ): its answer holds for every row.
    if _any_encoded(conn, query):
        return None
    if chunks is not None:
        sub = _in_chunk(query, *chunks[0]).subquery("x")
        compiled = select(*_pg_cells(query, sub)).select_from(sub).compile(dialect=conn.dialect)
        copy = _PgCopyChunks(engine, conn, f"COPY ({compiled.string}) {options}",
                             compiled.params, chunks, size)
        return copy.lines()
    sub = query.statement.subquery("x")
    statement = select(*_pg_cells(query, sub)).select_from(sub)
    compiled = statement.compile(dialect=conn.dialect)
    sql = f"COPY ({compiled.string}) {options}"
    error = engine.dialect.loaded_dbapi.Error

    def batches() -> Iterator[tuple[bytes, int]]:
        try:
            for data, rows, _ in _copy_rows(dbapi, sql, [compiled.params], size):
                if rows:
                    yield data, rows
        except error as exc:
            raise StoreError(f"database read failed: {exc}") from exc

    return _prefetched(batches())


def _copy_rows(
    dbapi: Any, sql: str, params: Sequence[dict[str, Any]], size: int
) -> Iterator[tuple[bytes, int, bool]]:
    """``COPY`` ``sql`` with each of ``params`` in turn: batches of up to ``size`` rows,
    each flagged True if it ends a ``COPY``. Closed early, the ``COPY`` is cancelled."""
    with dbapi.cursor() as cursor:
        for chunk_params in params:
            with cursor.copy(sql, chunk_params) as copy:
                read = copy.read
                while True:
                    rows: list[bytes] = []
                    while len(rows) < size and (row := read()):
                        rows.append(row)
                    last = len(rows) < size
                    yield b"".join(rows), len(rows), last
                    if last:
                        break


PG_CHUNK_PAGES = 1024
"""Heap pages per chunk of a whole-table PostgreSQL export (8 MB of table)."""
SPLIT_PAGES = 4096
"""Heap pages from which a whole-table PostgreSQL export is read by two connections."""
_NO_PAGE = 4294967295  # past the last possible page: the last chunk is open-ended
_SNAPSHOT_ID = re.compile(r"[0-9A-Fa-f-]+")


def _pg_chunks(conn: Connection, query: _Query) -> list[tuple[str, str]] | None:
    """The ``ctid`` bounds of a whole-table PostgreSQL export's chunks, in page order;
    None where it is not one (filters, other databases) or the server has no TID
    range scans (before PostgreSQL 14): then one statement reads it.

    Read in the export's snapshot, from the table's size now: pages added since
    hold no row the snapshot sees, and the last chunk is open-ended anyway.
    """
    version = conn.dialect.server_version_info or (0,)
    if conn.dialect.name != "postgresql" or not query.whole_table or version < (14,):
        return None
    table = declared_kind(query.table).table.name
    pages = conn.execute(
        sql_text(
            "SELECT pg_relation_size(CAST(:t AS regclass))"
            " / current_setting('block_size')::int"
        ).bindparams(t=table)
    ).scalar_one()
    starts = list(range(0, max(int(pages), 1), PG_CHUNK_PAGES))
    ends = [*starts[1:], _NO_PAGE]
    return [(f"({lo},0)", f"({hi},0)") for lo, hi in zip(starts, ends, strict=True)]


def _in_chunk(query: _Query, lo: str, hi: str) -> Select[Any]:
    """``query`` restricted to the rows whose ``ctid`` is in ``[lo, hi)`` (PostgreSQL)."""
    table = declared_kind(query.table).table.name
    return query.statement.where(
        sql_text(
            f"{table}.ctid >= CAST(:chunk_lo AS tid) AND {table}.ctid < CAST(:chunk_hi AS tid)"
        )
        .bindparams(chunk_lo=lo, chunk_hi=hi)
    )


class _PgCopyChunks:
    """A whole PostgreSQL table's CSV, one ``COPY`` per chunk of pages, in page order.

    Each chunk is a TID range scan, which reads its pages in order: chunks in page
    order are the table in storage order, the order of the portable path (which
    reads the same chunks, :func:`_batches`). From :data:`SPLIT_PAGES` pages on,
    a second connection imports the export's snapshot (``pg_export_snapshot()``,
    ``SET TRANSACTION SNAPSHOT``: both read one snapshot) and copies the odd
    chunks while the export's own connection copies the even ones: two server
    processes render at once. If the second connection can't be had, one reads all.
    """

    def __init__(
        self,
        engine: Engine,
        conn: Connection,
        sql: str,
        params: dict[str, Any],
        chunks: Sequence[tuple[str, str]],
        size: int,
    ) -> None:
        self.engine, self.conn, self.sql, self.size = engine, conn, sql, size
        self.params = [params | {"chunk_lo": lo, "chunk_hi": hi} for lo, hi in chunks]
        self.error: type[Exception] = engine.dialect.loaded_dbapi.Error

    def _second(self) -> Connection | None:
        """A second connection in the export's snapshot, or None."""
        if len(self.params) < 2 or len(self.params) * PG_CHUNK_PAGES < SPLIT_PAGES:
            return None
        # Not caught: an error would leave the export's transaction aborted anyway.
        snapshot = self.conn.exec_driver_sql("SELECT pg_export_snapshot()").scalar_one()
        if not _SNAPSHOT_ID.fullmatch(str(snapshot)):
            return None
        second: Connection | None = None
        try:
            second = self.engine.connect()
            conn = second.execution_options(isolation_level="REPEATABLE READ")
            conn.begin()
            conn.exec_driver_sql(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
        except SQLAlchemyError as exc:
            log.debug("export reads on one connection: %s", exc)
            if second is not None:
                second.close()
            return None
        return conn

    def _stream(self, conn: Connection, params: Sequence[dict[str, Any]]) -> Iterator[Any]:
        try:
            yield from _copy_rows(conn.connection.dbapi_connection, self.sql, params, self.size)
        except self.error as exc:
            raise StoreError(f"database read failed: {exc}") from exc

    def lines(self) -> Lines:
        second = self._second()
        streams: list[Generator[tuple[bytes, int, bool], None, None]] = []
        try:
            if second is None:
                streams = [_prefetched(self._stream(self.conn, self.params))]
            else:
                streams = [
                    _prefetched(self._stream(self.conn, self.params[0::2]), depth=2),
                    _prefetched(self._stream(second, self.params[1::2]), depth=2),
                ]
            yield from _in_order(streams)
        finally:
            for stream in streams:
                stream.close()
            if second is not None:
                with contextlib.suppress(SQLAlchemyError):
                    second.close()


def _in_order(streams: Sequence[Iterator[tuple[bytes, int, bool]]]) -> Lines:
    """Chunk 0 from ``streams[0]``, chunk 1 from ``streams[1]``, … round the streams:
    each stream's batches, the last of a chunk flagged True. Ends with the
    chunks (a stream that has no next chunk); empty batches are left out."""
    turn = 0
    while (item := next(streams[turn], None)) is not None:
        data, rows, last = item
        if rows:
            yield data, rows
        if last:
            turn = (turn + 1) % len(streams)


# --------------------------------------------------------------------------- values


def _redact_json(text: str) -> str:
    """The same keys, every value null (``{}`` for anything that is not an object)."""
    try:
        loaded = json.loads(text)
    except ValueError:
        return "{}"
    if not isinstance(loaded, dict):
        return "{}"
    return json.dumps(dict.fromkeys(loaded), ensure_ascii=False)




def _has_prefix(values: Sequence[Any]) -> bool:
    return any(v is not None and v.startswith(_ENCODED) for v in values)


_decoded = decode_stored


def _redacted_text(values: Sequence[Any]) -> list[Any]:
    return [None if v is None else "" for v in values]


def _redacted_json(values: Sequence[Any]) -> list[Any]:
    return [None if v is None else _redact_json(v) for v in values]


def _py_columns(
    query: _Query, columns: Sequence[Sequence[Any]], codec: Codec, redact: bool
) -> list[Sequence[Any]]:
    """Final values for the text writers, as Python objects."""
    out: list[Sequence[Any]] = []
    lengths: Sequence[Any] = ()
    for kind, raw in zip(query.kinds, columns, strict=True):
        col = raw
        if kind == TS and query.ts_mode == TS_TEXT:
            col = [v if v is None else _fix_ts(v) for v in col]
        elif kind == BOOL:
            col = [v if v is None else bool(v) for v in col]
        elif kind in (TEXT, JSON):
            if _has_prefix(col):  # only encrypted values need work
                col = _decoded(col, codec)
            if kind == TEXT:
                lengths = [v if v is None else len(v) for v in col]
            if redact:
                col = _redacted_text(col) if kind == TEXT else _redacted_json(col)
        elif kind == LEN:
            col = lengths
        out.append(col)
    return out


# --------------------------------------------------------------------------- sinks


class _Sink:
    """Where bytes or text go: a binary or a text file object."""

    def __init__(self, file: IO[Any], *, binary: bool) -> None:
        self.file = file
        self.binary = binary

    def write_text(self, text: str) -> None:
        self.file.write(text.encode("utf-8") if self.binary else text)

    def write_bytes(self, data: Any) -> None:
        """Write ``data`` (anything with the buffer protocol)."""
        self.file.write(data if self.binary else bytes(data).decode("utf-8"))


def _is_text(file: object) -> bool:
    return isinstance(file, io.TextIOBase) or hasattr(file, "encoding")


@contextlib.contextmanager
def _open_target(target: str | Path | IO[Any]) -> Iterator[_Sink]:
    """A sink for ``target``: a file object as it is, or a path (see :func:`_target_path`).

    A regular file (or a new one) is written to a 0600 temp file beside it, renamed
    over it only on success; the temp file is locked while written, and the next
    export to the same target removes temp files whose writer died. A FIFO or a
    character device is written through, as the shell's ``>`` would.
    """
    if not isinstance(target, str | Path):
        yield _Sink(target, binary=not _is_text(target))
        return
    path, through = _target_path(Path(target).expanduser())
    if through:
        try:
            file = open(path, "wb")  # noqa: SIM115 - closed below, after the export
        except OSError as exc:
            raise ConfigError(f"cannot write export {str(target)!r}: {exc.strerror}") from exc
        with file:
            yield _Sink(file, binary=True)
        return
    _remove_stale_parts(path)
    try:
        # mkstemp makes the file 0600: an export holds private conversations.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    except OSError as exc:
        raise ConfigError(f"cannot write export {str(path)!r}: {exc.strerror}") from exc
    try:
        _lock(fd)  # tells a later export that this temp file's writer is alive
        with os.fdopen(fd, "wb") as f:
            yield _Sink(f, binary=True)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _target_path(path: Path) -> tuple[Path, bool]:
    """Where an export to ``path`` goes, and whether it is written through.

    * a symlink is followed (``>`` writes to its target; the link stays a link);
    * a FIFO or a character device (``/dev/stdout``, ``/dev/null``) is written
      through — it cannot be replaced, and replacing it would break its reader;
    * a regular file is replaced atomically, unless it is read-only: then the
      export is refused, as ``>`` would refuse it;
    * a directory, a socket or a block device is refused.
    """
    shown = str(path)
    resolved = Path(os.path.realpath(path))
    try:
        mode = resolved.stat().st_mode
    except FileNotFoundError:
        if not resolved.parent.is_dir():
            raise ConfigError(
                f"cannot write export {shown!r}: no directory {resolved.parent}"
            ) from None
        return resolved, False
    except OSError as exc:
        raise ConfigError(f"cannot write export {shown!r}: {exc.strerror}") from exc
    if stat.S_ISDIR(mode):
        raise ConfigError(f"export target {shown!r} is a directory")
    if stat.S_ISFIFO(mode) or stat.S_ISCHR(mode):
        return resolved, True
    if not stat.S_ISREG(mode):
        raise ConfigError(f"export target {shown!r} is not a file, a FIFO or a character device")
    # Mode bits as well as access(): root may write anything, but a file marked
    # read-only was marked so on purpose.
    if not mode & 0o222 or not os.access(resolved, os.W_OK):
        raise ConfigError(f"cannot write export {shown!r}: the file is read-only")
    return resolved, False


def _lock(fd: int) -> None:
    if _TRY_LOCK is not None:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, _TRY_LOCK)


def _remove_stale_parts(path: Path) -> None:
    """Remove the ``.NAME.*.part`` temp files that a killed export left beside ``path``.

    A live export holds a lock on its temp file; one that nobody holds was left
    by a writer that died (it may hold megabytes of decrypted text). Without
    ``fcntl`` (Windows) only temp files older than a day are removed.
    """
    prefix = f".{path.name}."
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return
    for entry in entries:
        if not (entry.name.startswith(prefix) and entry.name.endswith(".part")):
            continue
        with contextlib.suppress(OSError):
            if not entry.is_file(follow_symlinks=False):
                continue
            if _TRY_LOCK is None:
                if time.time() - entry.stat(follow_symlinks=False).st_mtime > 86400:
                    os.unlink(entry.path)
                continue
            fd = os.open(entry.path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
            try:
                try:
                    fcntl.flock(fd, _TRY_LOCK)
                except OSError:
                    continue  # its writer is alive
                os.unlink(entry.path)
                log.info("removed %s, left by an export that did not finish", entry.path)
            finally:
                os.close(fd)


# --------------------------------------------------------------------------- writers


class _Writer:
    def __init__(self, sink: _Sink, query: _Query, codec: Codec, redact: bool) -> None:
        self.sink = sink
        self.query = query
        self.codec = codec
        self.redact = redact

    def write(self, rows: list[tuple[Any, ...]]) -> None:
        """Write one batch of rows as they come from the database."""
        raise NotImplementedError

    def close(self) -> None:
        """Finish the file (e.g. a header for an empty CSV, a Parquet footer)."""


class _JsonlWriter(_Writer):
    """One JSON object per line, in the records' JSON form (:func:`codec.dump_lines`).

    SQLite writes the same bytes on the fast path (:func:`_sqlite_lines`).
    """

    def write(self, rows: list[tuple[Any, ...]]) -> None:
        cols = _py_columns(self.query, _transpose(rows), self.codec, self.redact)
        for i, kind in enumerate(self.query.kinds):
            if kind == JSON:
                cols[i] = [None if v is None else _loads(v) for v in cols[i]]
        names = self.query.names
        records = map(dict, map(zip, itertools.repeat(names), zip(*cols, strict=True)))
        self.sink.write_bytes(dump_lines(records))


def _transpose(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return list(zip(*rows, strict=True))


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _number(token: str) -> Any:
    """A JSON number kept as written (SQLite's ``json()`` keeps it so, too)."""
    return _Fragment(token) if _Fragment is not None else json.loads(token)


_decode_json = json.JSONDecoder(
    parse_float=_number, parse_int=_number, parse_constant=_reject_constant
).decode


def _loads(text: str) -> Any:
    """Stored JSON text as a value to embed; text that is not JSON stays a string.

    Strict JSON only (no NaN or Infinity) and numbers kept as written, which is
    what SQLite's ``json()`` does on the fast path.
    """
    if _orjson_loads is not None and not _may_hold_float(text):
        # No float to keep as written: orjson's own integers are exact (those
        # beyond 64 bits make it fail, and take the path below).
        with contextlib.suppress(ValueError):
            return _orjson_loads(text)
    try:
        return _decode_json(text)
    except ValueError:
        return text  # not JSON (written by another tool): keep it as a string


_may_hold_float = re.compile(r"[.eE]").search


class _Bare(int):
    """A CSV cell written unquoted: NULL as an empty field, booleans as true/false."""

    text = ""

    def __str__(self) -> str:
        return self.text


class _Bool(_Bare):
    def __str__(self) -> str:
        return "true" if self else "false"


_NULL, _TRUE, _FALSE = _Bare(0), _Bool(1), _Bool(0)


class _CsvWriter(_Writer):
    """Python's csv module (without pyarrow), writing what pyarrow writes.

    Strings quoted (``""`` for an empty one), numbers and booleans bare, NULL
    an empty field: ``QUOTE_NONNUMERIC`` with NULL and booleans as bare numbers.
    """

    def __init__(self, sink: _Sink, query: _Query, codec: Codec, redact: bool) -> None:
        super().__init__(sink, query, codec, redact)
        self._emit([query.names])

    def _emit(self, rows: Any) -> None:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n", quoting=csv.QUOTE_NONNUMERIC).writerows(rows)
        self.sink.write_text(buf.getvalue())

    def write(self, rows: list[tuple[Any, ...]]) -> None:
        cols = _py_columns(self.query, _transpose(rows), self.codec, self.redact)
        for i, kind in enumerate(self.query.kinds):
            if kind == BOOL:
                cols[i] = [_NULL if v is None else (_TRUE if v else _FALSE) for v in cols[i]]
            elif None in cols[i]:
                cols[i] = [_NULL if v is None else v for v in cols[i]]
        self._emit(zip(*cols, strict=True))


def _arrow_type(pa: Any, kind: str, *, parquet: bool) -> Any:
    if kind in (INT, LEN):
        return pa.int64()
    if kind == BOOL:
        return pa.bool_()
    if kind == TS and parquet:
        return pa.timestamp("us", tz="UTC")
    return pa.string()


class _ArrowWriter(_Writer):
    """Builds Arrow record batches; per-value work is vectorized where it can be."""

    def __init__(
        self, sink: _Sink, query: _Query, codec: Codec, redact: bool, pa: Any, *, parquet: bool
    ) -> None:
        super().__init__(sink, query, codec, redact)
        self.pa = pa
        self.pc = pa.compute
        self.schema = pa.schema(
            [
                pa.field(n, _arrow_type(pa, k, parquet=parquet))
                for n, k in zip(query.names, query.kinds, strict=True)
            ]
        )
        # As the values arrive: timestamps as text, booleans as 0/1.
        self.raw_type = pa.struct(
            [
                pa.field(n, pa.int64() if k in (INT, LEN, BOOL) else pa.string())
                for n, k in zip(query.names, query.kinds, strict=True)
            ]
        )

    def _has_prefix(self, arr: Any) -> bool:
        return bool(self.pc.any(self.pc.match_substring_regex(arr, _ENCODED_RE)).as_py())

    def batch(self, rows: list[tuple[Any, ...]]) -> Any:
        # Rows to columns in C++: a struct array straight from the tuples.
        return self.transform(
            self.pa.RecordBatch.from_struct_array(self.pa.array(rows, self.raw_type))
        )

    def write(self, rows: list[tuple[Any, ...]]) -> None:
        self.put(self.batch(rows))

    def write_arrow(self, raw: Any) -> None:
        """Write a record batch as fetched (raw values, see ``raw_type``)."""
        self.put(self.transform(raw))

    def put(self, batch: Any) -> None:
        raise NotImplementedError

    def transform(self, raw: Any) -> Any:
        """Raw values (timestamps as text, booleans as 0/1) to the export's columns."""
        pa, pc, string = self.pa, self.pc, self.pa.string()
        arrays = []
        lengths = None
        for i, (kind, field) in enumerate(zip(self.query.kinds, self.schema, strict=True)):
            arr = raw.column(i)
            if kind == TS:
                if self.query.ts_mode == TS_TEXT:
                    arr = pc.replace_substring(arr, " ", "T", max_replacements=1)
                    arr = pc.binary_join_element_wise(arr, "+00:00", "")
                if field.type != string:
                    arr = arr.cast(field.type)
            elif kind in (TEXT, JSON):
                if self.redact or self._has_prefix(arr):  # rare: per-value work
                    values = arr.to_pylist()
                    if _has_prefix(values):
                        values = _decoded(values, self.codec)
                        arr = pa.array(values, string)
                    if kind == TEXT:
                        lengths = pc.utf8_length(arr).cast(pa.int64())
                    if self.redact:
                        redacted = _redacted_text if kind == TEXT else _redacted_json
                        arr = pa.array(redacted(values), string)
                elif kind == TEXT:
                    lengths = pc.utf8_length(arr).cast(pa.int64())
            elif kind == LEN:
                arr = lengths
            elif kind == BOOL:
                arr = arr.cast(field.type)
            arrays.append(arr)
        return pa.RecordBatch.from_arrays(arrays, schema=self.schema)


class _ArrowCsvWriter(_ArrowWriter):
    def __init__(self, sink: _Sink, query: _Query, codec: Codec, redact: bool, pa: Any) -> None:
        super().__init__(sink, query, codec, redact, pa, parquet=False)
        self.options = [pa.csv.WriteOptions(include_header=h) for h in (False, True)]
        self.header = True

    def put(self, batch: Any) -> None:
        self._emit(batch)

    def _emit(self, batch: Any) -> None:
        out = self.pa.BufferOutputStream()
        self.pa.csv.write_csv(batch, out, write_options=self.options[self.header])
        self.header = False
        self.sink.write_bytes(out.getvalue())

    def close(self) -> None:
        if self.header:  # no rows: still a header line
            self._emit(self.schema.empty_table())


class _ParquetWriter(_ArrowWriter):
    def __init__(self, sink: _Sink, query: _Query, codec: Codec, redact: bool, pa: Any) -> None:
        super().__init__(sink, query, codec, redact, pa, parquet=True)
        self.writer = pa.parquet.ParquetWriter(sink.file, self.schema)

    def put(self, batch: Any) -> None:
        self.writer.write_batch(batch)

    def close(self) -> None:
        self.writer.close()


def _adbc_sqlite() -> Any | None:
    """Arrow's ADBC SQLite driver (``threadstore[export]``), or None: it is optional."""
    try:
        import adbc_driver_sqlite.dbapi  # noqa: PLC0415 - optional, imported only when used
    except ImportError:
        return None
    return adbc_driver_sqlite.dbapi


def _sqlite_param(value: Any) -> Any:
    """A bound value as SQLite stores it (our datetimes: naive UTC text)."""
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")
    return value


def _adbc_batches(engine: Engine, query: _Query, size: int) -> Iterator[Any] | None:
    """Record batches read by ADBC straight into Arrow (no Python object per value).

    Python's sqlite3 spends more time making a str per cell than SQLite spends
    finding the rows; ADBC builds Arrow arrays in C. Only for the big tables of
    a SQLite file, and only when the driver is installed; None otherwise.
    """
    dbapi = _adbc_sqlite()
    database = engine.url.database or ""
    if (
        dbapi is None
        or engine.dialect.name != "sqlite"
        or not declared_kind(query.table).child_of_thread
        or database in ("", ":memory:")
        or database.startswith("file:")
    ):
        return None
    compiled = query.statement.compile(dialect=engine.dialect)
    params = compiled.construct_params()
    args = [_sqlite_param(params[name]) for name in compiled.positiontup or ()]
    # ADBC infers each column's type from the first rows, and a column that
    # starts with NULLs would be typed wrong; a leading row of typed dummies
    # (UNION ALL keeps its operands' order) pins the types. It is dropped below.
    # The query is a subquery there: an ORDER BY would apply to the compound.
    sentinel = ", ".join(
        f"{0 if kind in (INT, LEN, BOOL) else repr('')} AS {name}"
        for name, kind in zip(query.names, query.kinds, strict=True)
    )
    sql = f"SELECT {sentinel} UNION ALL SELECT * FROM ({compiled.string})"

    def batches() -> Iterator[Any]:
        try:
            conn = dbapi.connect(database)
            try:
                cursor = conn.cursor()
                cursor.adbc_statement.set_options(**{"adbc.sqlite.query.batch_rows": str(size)})
                cursor.execute(sql, args)
                for i, fetched in enumerate(cursor.fetch_record_batch()):
                    batch = fetched.slice(1) if i == 0 else fetched
                    if batch.num_rows:
                        yield batch
            finally:
                conn.close()
        except (dbapi.Error, OSError) as exc:
            raise StoreError(f"export of {query.table} failed: {exc}") from exc

    return batches()


def _prefetched(source: Iterator[Any], depth: int = 4) -> Generator[Any, None, None]:
    """Iterate ``source`` in a helper thread, up to ``depth`` items ahead.

    ADBC fetches and pyarrow writes both run in C without the GIL, so reading the
    next batch while this one is written overlaps most of the two. Memory stays
    bounded by ``depth`` batches. An error in ``source`` is raised here. Closed
    early (the consumer failed or stopped), the helper stops after the item in
    hand and closes ``source`` itself.
    """
    done = object()
    items: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def offer(item: Any) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
            except queue.Full:
                continue
            return True
        return False

    def produce() -> None:
        try:
            for item in source:
                if not offer(item):
                    return
            offer(done)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, re-raised there
            offer(exc)
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()

    worker = threading.Thread(target=produce, name="threadstore-export-fetch", daemon=True)
    worker.start()
    try:
        while (item := items.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join(timeout=5)


def _nothing() -> Lines:
    yield from ()


def _pyarrow() -> Any | None:
    """pyarrow with its csv and parquet modules loaded, or None: it is optional."""
    try:
        import pyarrow  # noqa: PLC0415 - an optional extra, imported only when used
        import pyarrow.compute  # noqa: PLC0415
        import pyarrow.csv  # noqa: PLC0415
        import pyarrow.parquet  # noqa: PLC0415
    except ImportError:
        return None
    return pyarrow


def _writer(fmt: str, sink: _Sink, query: _Query, codec: Codec, redact: bool) -> _Writer:
    if fmt == "jsonl":
        return _JsonlWriter(sink, query, codec, redact)
    pa = _pyarrow()
    if fmt == "csv" and pa is None:
        return _CsvWriter(sink, query, codec, redact)
    if fmt == "csv":
        return _ArrowCsvWriter(sink, query, codec, redact, pa)
    if pa is None:
        raise ConfigError(PARQUET_HINT)
    return _ParquetWriter(sink, query, codec, redact, pa)


# --------------------------------------------------------------------------- entry point


def _check_time(name: str, value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise ConfigError(f"{name} must be a timezone-aware datetime, not {value!r}")
    return value


@dataclass(frozen=True)
class ExportOptions:
    """What to export and how, validated on construction (:class:`ConfigError`).

    :func:`export` (and so ``ThreadStore.export`` and the CLI) builds one; see
    :meth:`ThreadStore.export` for what each option does.
    """

    table: str = "threads"
    fmt: str = "jsonl"
    since: datetime | None = None
    until: datetime | None = None
    workspace: str | None = None
    user_id: str | None = None
    redact: bool = False
    batch_size: int = BATCH

    def __post_init__(self) -> None:
        if self.table not in TABLES:
            raise ConfigError(
                f"unknown table {self.table!r}: choose one of {', '.join(TABLES)}"
            )
        if self.fmt not in FORMATS:
            raise ConfigError(
                f"unknown format {self.fmt!r}: choose one of {', '.join(FORMATS)}"
            )
        since = _check_time("since", self.since)
        until = _check_time("until", self.until)
        if since is not None and until is not None and since > until:
            raise ConfigError(
                f"since ({since.isoformat()}) is after until ({until.isoformat()})"
            )
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError("batch_size must be at least 1")


def export(
    engine: Engine,
    path_or_file: str | Path | IO[Any],
    options: ExportOptions | None = None,
    *,
    codec: Codec,
    progress: Progress | None = None,
    **keywords: Any,
) -> int:
    """Stream ``options.table`` to ``path_or_file`` in ``options.fmt``; returns the rows written.

    Without ``options``, ``keywords`` are :class:`ExportOptions`' fields.

    ``path_or_file`` is a path (written to a temporary file in the same
    directory and renamed once complete, so a failed export leaves no half
    file) or an open file object: text or binary for ``jsonl``/``csv``, binary
    for ``parquet``. ``progress``, if given, is called after each batch with the
    rows written so far. Bad options raise :class:`ConfigError` before anything
    is written; database failures raise :class:`StoreError`.
    """
    if options is None:
        options = ExportOptions(**keywords)
    elif keywords:
        raise TypeError("give ExportOptions or keywords, not both")
    table, fmt, redact, batch_size = options.table, options.fmt, options.redact, options.batch_size
    since, until = options.since, options.until
    workspace, user_id = options.workspace, options.user_id
    if fmt == "parquet":
        if _pyarrow() is None:
            raise ConfigError(PARQUET_HINT)
        if not isinstance(path_or_file, str | Path) and _is_text(path_or_file):
            raise ConfigError("parquet is binary: give a path or a file opened in binary mode")
    query = _build(
        table,
        engine.dialect.name,
        since=since,
        until=until,
        workspace=workspace,
        user_id=user_id,
    )
    written = 0
    started = time.perf_counter()
    try:
        with _open_target(path_or_file) as sink:
            # With the [export] extra, Arrow reads SQLite in C (no Python object
            # per row at all): the fastest path for CSV and Parquet.
            arrow = None
            if fmt != "jsonl" and engine.dialect.name == "sqlite" and _pyarrow() is not None:
                arrow = _adbc_batches(engine, query, batch_size)
            if arrow is not None:
                writer = _writer(fmt, sink, query, codec, redact)
                assert isinstance(writer, _ArrowWriter)  # noqa: S101 - pyarrow is installed
                for raw in _prefetched(arrow):
                    writer.write_arrow(raw)
                    written += raw.num_rows
                    if progress is not None:
                        progress(written)
                writer.close()
            else:
                with db.read(engine, snapshot=True) as conn:
                    chunks = _pg_chunks(conn, query)
                    lines = _sqlite_lines(engine, conn, query, fmt, batch_size, redact)
                    if lines is None:
                        lines = _pg_copy(engine, conn, query, fmt, batch_size, redact, chunks)
                    # Closed here, not when garbage: its threads and processes end with it.
                    with contextlib.closing(lines or _nothing()) as rendered:
                        for data, n in rendered:
                            if fmt == "csv" and not written:
                                sink.write_bytes(_csv_header(query.names))
                            sink.write_bytes(data)
                            written += n
                            if progress is not None:
                                progress(written)
                    if not written:  # no fast path, or nothing (or encoded values) in it
                        writer = _writer(fmt, sink, query, codec, redact)
                        for rows in _batches(conn, query, batch_size, chunks):
                            writer.write(rows)
                            written += len(rows)
                            if progress is not None:
                                progress(written)
                        writer.close()
    except StoreError as exc:
        raise StoreError(f"export of {table} failed: {exc}") from exc.__cause__
    log.info(
        "exported %d %s as %s to %s in %.2f s (since=%s until=%s workspace=%s user=%s%s)",
        written,
        table,
        fmt,
        path_or_file if isinstance(path_or_file, str | Path) else "a file object",
        time.perf_counter() - started,
        since.isoformat() if since else "-",
        until.isoformat() if until else "-",
        workspace or "-",
        user_id or "-",
        ", redacted" if redact else "",
    )
    return written


def count_rows(engine: Engine, options: ExportOptions) -> int:
    """How many rows :func:`export` would write with ``options`` now (one COUNT query).

    For a progress bar's total and ETA; it reads the filtered table once more, so
    the CLI asks only when it shows progress.
    """
    query = _build(
        options.table,
        engine.dialect.name,
        since=options.since,
        until=options.until,
        workspace=options.workspace,
        user_id=options.user_id,
    )
    counted = select(func.count()).select_from(query.statement.order_by(None).subquery())
    with db.read(engine) as conn:
        return int(conn.execute(counted).scalar_one())


def export_columns(table: str) -> Sequence[str]:
    """The column names an export of ``table`` has, in order."""
    return tuple(name for name, _ in COLUMNS[table])
