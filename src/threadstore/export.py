"""Streaming exports of the mirror: ``threads``, ``messages``, ``runs``, ``deletions``.

Everything streams: one read transaction (``DEFERRED`` on SQLite, so an export
never blocks writers), a server-side cursor on PostgreSQL, rows fetched in
batches of :data:`BATCH` and written batch by batch, so memory stays flat however
large the table is.

Formats:

* ``jsonl`` — one JSON object per line, UTF-8; ``metadata`` is embedded as an
  object.
* ``csv`` — a header row, RFC 4180 quoting, UTF-8, ``\\n`` line ends;
  ``metadata`` is its JSON text. An empty field is NULL (with pyarrow installed,
  an empty string is written quoted, ``""``). pyarrow's CSV writer is used when
  it is installed (about twice as fast), Python's ``csv`` module otherwise.
* ``parquet`` — needs pyarrow (``pip install 'threadstore[parquet]'``); written in
  record batches with an explicit schema, timestamps as ``timestamp[us, tz=UTC]``.

Timestamps in text formats are ISO 8601 in UTC with microseconds and an explicit
offset: ``2026-01-02T03:04:05.123456+00:00``. They are formatted by the database
(no per-row Python work), which is what keeps the CSV path fast.

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

Rows come out ordered by the table's natural time (then id): ``last_active`` for
threads, ``created_at`` for messages and runs, ``deleted_at`` for deletions — the
same column that ``since`` (inclusive) and ``until`` (exclusive) filter on.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from sqlalchemy import (
    ColumnElement,
    Engine,
    Select,
    String,
    func,
    literal,
    select,
    type_coerce,
)
from sqlalchemy.exc import SQLAlchemyError

from . import db
from .codec import PREFIX, Codec
from .errors import ConfigError, StoreError
from .models import deletions, messages, runs, threads

__all__ = ["BATCH", "COLUMNS", "FORMATS", "TABLES", "export"]

TABLES = ("threads", "messages", "runs", "deletions")
FORMATS = ("jsonl", "csv", "parquet")
BATCH = 5000
PARQUET_HINT = "parquet export needs pyarrow: pip install 'threadstore[parquet]'"

# Column kinds: how a value is typed in Parquet and treated on the way out.
STR, INT, BOOL, TS, JSON, TEXT = "str", "int", "bool", "ts", "json", "text"

COLUMNS: dict[str, tuple[tuple[str, str], ...]] = {
    "threads": (
        ("thread_id", STR),
        ("workspace", STR),
        ("user_id", STR),
        ("created_at", TS),
        ("last_active", TS),
        ("metadata", JSON),
        ("pinned", BOOL),
        ("ttl_seconds", INT),
        ("ttl_expires_at", TS),
        ("message_count", INT),
        ("run_count", INT),
        ("prompt_tokens", INT),
        ("completion_tokens", INT),
        ("total_tokens", INT),
    ),
    "messages": (
        ("message_id", STR),
        ("thread_id", STR),
        ("role", STR),
        ("content", TEXT),
        ("content_length", INT),
        ("created_at", TS),
        ("run_id", STR),
        ("assistant_id", STR),
        ("metadata", JSON),
    ),
    "runs": (
        ("run_id", STR),
        ("thread_id", STR),
        ("assistant_id", STR),
        ("model", STR),
        ("status", STR),
        ("created_at", TS),
        ("started_at", TS),
        ("completed_at", TS),
        ("failed_at", TS),
        ("last_error", STR),
        ("prompt_tokens", INT),
        ("completion_tokens", INT),
        ("total_tokens", INT),
    ),
    "deletions": (
        ("id", INT),
        ("thread_id", STR),
        ("workspace", STR),
        ("user_id", STR),
        ("created_at", TS),
        ("last_active", TS),
        ("deleted_at", TS),
        ("reason", STR),
        ("remote_result", STR),
        ("message_count", INT),
        ("run_count", INT),
    ),
}

Progress = Callable[[int], None]


# --------------------------------------------------------------------------- SQL


def _iso_sql(col: Any, dialect: str) -> tuple[ColumnElement[Any], bool]:
    """The column as ISO 8601 UTC text computed by the database, if it can.

    Returns ``(expression, in_sql)``; when ``in_sql`` is False the column is
    selected as a datetime and formatted in Python.
    """
    if dialect == "sqlite":
        # UTCDateTime stores naive UTC as 'YYYY-MM-DD HH:MM:SS.ffffff'.
        raw = type_coerce(col, String())
        return func.replace(raw, " ", "T", type_=String()) + literal("+00:00"), True
    if dialect == "postgresql":
        return (
            func.to_char(
                func.timezone("UTC", col), 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"', type_=String()
            ),
            True,
        )
    return col, False


def _iso_py(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(timezone.utc).isoformat(timespec="microseconds")


@dataclass(frozen=True)
class _Query:
    statement: Select[Any]
    names: tuple[str, ...]
    kinds: tuple[str, ...]
    py_ts: frozenset[int]  # timestamp columns that still need formatting in Python


def _build(
    table: str,
    dialect: str,
    *,
    since: datetime | None,
    until: datetime | None,
    workspace: str | None,
    user_id: str | None,
) -> _Query:
    spec = COLUMNS[table]
    base = {"threads": threads, "messages": messages, "runs": runs, "deletions": deletions}[table]
    time_col = {
        "threads": threads.c.last_active,
        "messages": messages.c.created_at,
        "runs": runs.c.created_at,
        "deletions": deletions.c.deleted_at,
    }[table]
    id_col = {
        "threads": threads.c.thread_id,
        "messages": messages.c.message_id,
        "runs": runs.c.run_id,
        "deletions": deletions.c.id,
    }[table]

    conds: list[ColumnElement[bool]] = []
    if since is not None:
        conds.append(time_col >= since)
    if until is not None:
        conds.append(time_col < until)

    owner_conds: list[ColumnElement[bool]] = []
    owner_table = deletions if table == "deletions" else threads
    if workspace is not None:
        owner_conds.append(owner_table.c.workspace == workspace)
    if user_id is not None:
        owner_conds.append(owner_table.c.user_id == user_id)

    exprs: dict[str, ColumnElement[Any]] = {}
    from_: Any = base
    if table == "threads":
        conds += [threads.c.status == "active", *owner_conds]
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
        exprs = {
            "message_count": func.coalesce(m.c.n, 0),
            "run_count": func.coalesce(r.c.n, 0),
            "prompt_tokens": func.coalesce(r.c.prompt, 0),
            "completion_tokens": func.coalesce(r.c.completion, 0),
            "total_tokens": func.coalesce(r.c.total, 0),
        }
    elif table == "messages":
        exprs = {"content_length": func.length(messages.c.content)}
        if owner_conds:
            conds.append(messages.c.thread_id.in_(select(threads.c.thread_id).where(*owner_conds)))
    elif table == "runs":
        if owner_conds:
            conds.append(runs.c.thread_id.in_(select(threads.c.thread_id).where(*owner_conds)))
    else:
        conds += owner_conds

    columns: list[ColumnElement[Any]] = []
    py_ts: set[int] = set()
    for i, (name, kind) in enumerate(spec):
        expr: ColumnElement[Any] = exprs[name] if name in exprs else base.c[name]
        if kind == TS:
            expr, in_sql = _iso_sql(expr, dialect)
            if not in_sql:
                py_ts.add(i)
        columns.append(expr.label(name))
    statement = select(*columns).select_from(from_).where(*conds).order_by(time_col, id_col)
    return _Query(
        statement,
        tuple(n for n, _ in spec),
        tuple(k for _, k in spec),
        frozenset(py_ts),
    )


# --------------------------------------------------------------------------- values


def _redact_json(text: str) -> str:
    try:
        loaded = json.loads(text)
    except ValueError:
        return "{}"
    if not isinstance(loaded, dict):
        return "{}"
    return json.dumps(dict.fromkeys(loaded), ensure_ascii=False)


def _prepare(query: _Query, columns: list[list[Any]], codec: Codec, redact: bool) -> None:
    """Turn raw column values into exported ones, in place; cheap when nothing to do."""
    names = query.names
    for i, kind in enumerate(query.kinds):
        col = columns[i]
        if i in query.py_ts:
            columns[i] = [_iso_py(v) for v in col]
        elif kind == BOOL:
            columns[i] = [None if v is None else bool(v) for v in col]
        elif kind == TEXT:
            length = columns[names.index("content_length")]
            for j, v in enumerate(col):
                # Only encrypted values need work; plain rows pass untouched.
                if v is not None and v.startswith(PREFIX):
                    plain = codec.decode_text(v)
                    col[j] = plain
                    length[j] = len(plain)
            if redact:
                columns[i] = ["" if v is not None else None for v in col]
        elif kind == JSON:
            for j, v in enumerate(col):
                if v is not None and v.startswith(PREFIX):
                    col[j] = codec.decode_text(v)
            if redact:
                columns[i] = [None if v is None else _redact_json(v) for v in col]


# --------------------------------------------------------------------------- sinks


class _Sink:
    """Where bytes or text go: a binary or a text file object."""

    def __init__(self, file: IO[Any], *, binary: bool) -> None:
        self.file = file
        self.binary = binary

    def write_text(self, text: str) -> None:
        self.file.write(text.encode("utf-8") if self.binary else text)

    def write_bytes(self, data: bytes) -> None:
        self.file.write(data if self.binary else data.decode("utf-8"))


def _is_text(file: object) -> bool:
    return isinstance(file, io.TextIOBase) or hasattr(file, "encoding")


@contextlib.contextmanager
def _open_target(target: str | Path | IO[Any]) -> Iterator[_Sink]:
    """A sink for ``target``; a path is written to a temp file renamed on success."""
    if not isinstance(target, str | Path):
        yield _Sink(target, binary=not _is_text(target))
        return
    path = Path(target).expanduser()
    if path.is_dir():
        raise ConfigError(f"export target {str(path)!r} is a directory")
    if not path.parent.is_dir():
        raise ConfigError(f"cannot write export {str(path)!r}: no directory {path.parent}")
    try:
        # mkstemp makes the file 0600: an export holds private conversations.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    except OSError as exc:
        raise ConfigError(f"cannot write export {str(path)!r}: {exc.strerror}") from exc
    try:
        with os.fdopen(fd, "wb") as f:
            yield _Sink(f, binary=True)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# --------------------------------------------------------------------------- writers


class _Writer:
    def __init__(self, sink: _Sink, query: _Query) -> None:
        self.sink = sink
        self.query = query

    def write(self, columns: list[list[Any]]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Finish the file (e.g. a header for an empty CSV, a Parquet footer)."""


class _JsonlWriter(_Writer):
    def __init__(self, sink: _Sink, query: _Query) -> None:
        super().__init__(sink, query)
        self.encode = json.JSONEncoder(ensure_ascii=False).encode
        self.json_cols = [i for i, k in enumerate(query.kinds) if k == JSON]

    def write(self, columns: list[list[Any]]) -> None:
        for i in self.json_cols:
            columns[i] = [None if v is None else _loads(v) for v in columns[i]]
        names = self.query.names
        encode = self.encode
        lines = [encode(dict(zip(names, row, strict=True))) for row in zip(*columns, strict=True)]
        lines.append("")
        self.sink.write_text("\n".join(lines))


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text  # not JSON (written by another tool): keep it as a string


class _CsvWriter(_Writer):
    """Python's csv module (the fallback without pyarrow)."""

    def __init__(self, sink: _Sink, query: _Query) -> None:
        super().__init__(sink, query)
        self.bool_cols = [i for i, k in enumerate(query.kinds) if k == BOOL]
        self._header()

    def _header(self) -> None:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(self.query.names)
        self.sink.write_text(buf.getvalue())

    def write(self, columns: list[list[Any]]) -> None:
        for i in self.bool_cols:
            columns[i] = [None if v is None else ("true" if v else "false") for v in columns[i]]
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(zip(*columns, strict=True))
        self.sink.write_text(buf.getvalue())


def _arrow_type(pa: Any, kind: str, *, parquet: bool) -> Any:
    if kind == INT:
        return pa.int64()
    if kind == BOOL:
        return pa.bool_()
    if kind == TS and parquet:
        return pa.timestamp("us", tz="UTC")
    return pa.string()


class _ArrowWriter(_Writer):
    def __init__(self, sink: _Sink, query: _Query, pa: Any, *, parquet: bool) -> None:
        super().__init__(sink, query)
        self.pa = pa
        self.parquet = parquet
        self.schema = pa.schema(
            [
                pa.field(n, _arrow_type(pa, k, parquet=parquet))
                for n, k in zip(query.names, query.kinds, strict=True)
            ]
        )
        self.ts_cols = {i for i, k in enumerate(query.kinds) if k == TS} if parquet else set()

    def batch(self, columns: list[list[Any]]) -> Any:
        pa = self.pa
        arrays = []
        for i, field in enumerate(self.schema):
            if i in self.ts_cols:
                arrays.append(pa.array(columns[i], pa.string()).cast(field.type))
            else:
                arrays.append(pa.array(columns[i], field.type))
        return pa.RecordBatch.from_arrays(arrays, schema=self.schema)


class _ArrowCsvWriter(_ArrowWriter):
    def __init__(self, sink: _Sink, query: _Query, pa: Any) -> None:
        super().__init__(sink, query, pa, parquet=False)
        self.pacsv = pa.csv
        self.options = [pa.csv.WriteOptions(include_header=h) for h in (False, True)]
        self.header = True

    def write(self, columns: list[list[Any]]) -> None:
        self._emit(self.batch(columns))

    def _emit(self, batch: Any) -> None:
        out = self.pa.BufferOutputStream()
        self.pacsv.write_csv(batch, out, write_options=self.options[self.header])
        self.header = False
        self.sink.write_bytes(out.getvalue().to_pybytes())

    def close(self) -> None:
        if self.header:  # no rows: still a header line
            self._emit(self.schema.empty_table())


class _ParquetWriter(_ArrowWriter):
    def __init__(self, sink: _Sink, query: _Query, pa: Any) -> None:
        super().__init__(sink, query, pa, parquet=True)
        self.writer = pa.parquet.ParquetWriter(sink.file, self.schema)

    def write(self, columns: list[list[Any]]) -> None:
        self.writer.write_batch(self.batch(columns))

    def close(self) -> None:
        self.writer.close()


def _pyarrow() -> Any | None:
    """pyarrow with its csv and parquet modules loaded, or None: it is optional."""
    try:
        import pyarrow  # noqa: PLC0415 - an optional extra, imported only when used
        import pyarrow.csv  # noqa: PLC0415
        import pyarrow.parquet  # noqa: PLC0415
    except ImportError:
        return None
    return pyarrow


def _writer(fmt: str, sink: _Sink, query: _Query) -> _Writer:
    if fmt == "jsonl":
        return _JsonlWriter(sink, query)
    pa = _pyarrow()
    if fmt == "csv":
        return _ArrowCsvWriter(sink, query, pa) if pa is not None else _CsvWriter(sink, query)
    if pa is None:
        raise ConfigError(PARQUET_HINT)
    return _ParquetWriter(sink, query, pa)


# --------------------------------------------------------------------------- entry point


def _check_time(name: str, value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise ConfigError(f"{name} must be a timezone-aware datetime, not {value!r}")
    return value


def export(
    engine: Engine,
    path_or_file: str | Path | IO[Any],
    *,
    codec: Codec,
    table: str = "threads",
    fmt: str = "jsonl",
    since: datetime | None = None,
    until: datetime | None = None,
    workspace: str | None = None,
    user_id: str | None = None,
    redact: bool = False,
    progress: Progress | None = None,
    batch_size: int = BATCH,
) -> int:
    """Stream ``table`` to ``path_or_file`` in ``fmt``; returns the rows written.

    ``path_or_file`` is a path (written to a temporary file in the same
    directory and renamed once complete, so a failed export leaves no half
    file) or an open file object: text or binary for ``jsonl``/``csv``, binary
    for ``parquet``. ``progress``, if given, is called after each batch with the
    rows written so far. Bad options raise :class:`ConfigError` before anything
    is written; database failures raise :class:`StoreError`.
    """
    if table not in TABLES:
        raise ConfigError(f"unknown table {table!r}: choose one of {', '.join(TABLES)}")
    if fmt not in FORMATS:
        raise ConfigError(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS)}")
    since = _check_time("since", since)
    until = _check_time("until", until)
    if since is not None and until is not None and since > until:
        raise ConfigError(f"since ({since.isoformat()}) is after until ({until.isoformat()})")
    if batch_size < 1:
        raise ConfigError("batch_size must be at least 1")
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
    try:
        with _open_target(path_or_file) as sink, db.read(engine) as conn:
            writer = _writer(fmt, sink, query)
            result = conn.execution_options(yield_per=batch_size).execute(query.statement)
            for rows in result.partitions():
                columns = [list(c) for c in zip(*rows, strict=True)]
                _prepare(query, columns, codec, redact)
                writer.write(columns)
                written += len(rows)
                if progress is not None:
                    progress(written)
            writer.close()
    except SQLAlchemyError as exc:
        raise StoreError(f"export of {table} failed: {db._short(exc)}") from exc
    return written


def export_columns(table: str) -> Sequence[str]:
    """The column names an export of ``table`` has, in order."""
    return tuple(name for name, _ in COLUMNS[table])
