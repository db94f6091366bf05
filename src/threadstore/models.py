"""The local mirror's tables (SQLAlchemy Core).

Conventions: a naming convention for every constraint and index (so Alembic can
name, diff and drop them on every backend), timezone-aware UTC datetimes that
refuse naive values, ``String`` columns with lengths (MySQL/MariaDB need them),
and an index for every filter the sweep and the export use.

MySQL/MariaDB: every string column is ``utf8mb4`` with a binary NO PAD collation
(ids, user ids and workspaces compare case- and trailing-space-exact, as on
PostgreSQL and SQLite; emoji and CJK round-trip), text columns are ``LONGTEXT``
(``TEXT`` stops at 64 KiB) and datetimes are ``DATETIME(6)`` (microseconds, so
rows keep their order). :class:`ExactString`, :class:`LongText` and
:class:`UTCDateTime` are the column types that say so: use them (not ``String``,
``Text``, ``DateTime``) for every column; a test checks a MySQL store's columns.

``threads.metadata`` and ``messages.content``/``metadata`` are text columns: they
hold JSON (or plain text), or a Fernet token when ``THREADSTORE_ENCRYPTION_KEY`` is
set. Which columns are encrypted is part of each kind's declaration (below); the
declaration's row mapping (:meth:`Kind.row`, :meth:`Kind.to_record`) is the one
place that encodes and decodes them with :mod:`threadstore.codec`.

**One declaration per mirrored kind.** Each object type the mirror holds (thread,
message, run; the deletions log too) is a :class:`Kind`: its table, id and time
columns, how a remote object becomes a row (:meth:`Kind.from_remote`), how rows are
written (:meth:`Kind.upsert`: idempotent by id, never older-over-newer), its record
type, its export columns, its encrypted columns, and whether it is a child of a
thread (removed, archived and counted with it). Store, sweep, export, stats, the
CLI's ``show`` and ``rotate-key`` read :data:`KINDS` instead of listing kinds.

Thread-state rules (statuses, expiry, lease) live in :mod:`threadstore._rules`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    RowMapping,
    String,
    Table,
    Text,
    false,
    func,
    insert,
    literal_column,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.types import TypeDecorator, TypeEngine

if TYPE_CHECKING:
    from .codec import Codec

__all__ = [
    "ASSISTANTS",
    "DELETIONS",
    "EXPORT_FORMATS",
    "KINDS",
    "KIND_NAMES",
    "MESSAGES",
    "RUNS",
    "RUN_RANK",
    "RUN_STEPS",
    "SWEEPS",
    "THREADS",
    "THREAD_CHILDREN",
    "AssistantRecord",
    "ExactString",
    "Kind",
    "LongText",
    "MessageRecord",
    "RunRecord",
    "RunStepRecord",
    "ThreadRecord",
    "UTCDateTime",
    "assistants",
    "decode_stored",
    "deletions",
    "kind",
    "messages",
    "metadata",
    "run_steps",
    "runs",
    "sweeps",
    "threads",
    "utcnow",
]

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

ID = 64  # DashScope ids are "thread_" + 32 hex digits; room to spare
NAME = 255


MYSQL_DIALECTS = ("mysql", "mariadb")
# The types below import sqlalchemy.dialects.mysql only when a MySQL/MariaDB
# dialect asks for them: a SQLite or PostgreSQL store, and every CLI start-up,
# would otherwise load all of that dialect's drivers' modules for nothing.


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def exact_collation(dialect: Dialect) -> str:
    """The binary utf8mb4 collation without PAD SPACE (``'a' != 'a '``) on this server."""
    # utf8mb4_bin pads: it ignores trailing spaces. MariaDB and MySQL 8 each name
    # their NO PAD binary collation differently.
    return "utf8mb4_nopad_bin" if getattr(dialect, "is_mariadb", False) else "utf8mb4_0900_bin"


class ExactString(TypeDecorator[str]):
    """``VARCHAR(length)`` compared exactly (case, accents, trailing spaces) everywhere.

    PostgreSQL and SQLite compare so already; MySQL/MariaDB get ``utf8mb4`` with
    the binary NO PAD collation (:func:`exact_collation`).
    """

    impl = String
    cache_ok = True

    def __init__(self, length: int) -> None:
        super().__init__(length)
        self.length = length

    @property
    def python_type(self) -> type[str]:
        return str

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name in MYSQL_DIALECTS:
            from sqlalchemy.dialects import mysql  # noqa: PLC0415 - see MYSQL_DIALECTS

            return dialect.type_descriptor(
                mysql.VARCHAR(self.length, charset="utf8mb4", collation=exact_collation(dialect))
            )
        return super().load_dialect_impl(dialect)


class LongText(TypeDecorator[str]):
    """Unbounded text: ``LONGTEXT`` in ``utf8mb4`` on MySQL/MariaDB (``TEXT`` ends at 64 KiB)."""

    impl = Text
    cache_ok = True

    @property
    def python_type(self) -> type[str]:
        return str

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name in MYSQL_DIALECTS:
            from sqlalchemy.dialects import mysql  # noqa: PLC0415 - see MYSQL_DIALECTS

            return dialect.type_descriptor(
                mysql.LONGTEXT(charset="utf8mb4", collation=exact_collation(dialect))
            )
        return super().load_dialect_impl(dialect)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend.

    Naive values are refused (a naive ``datetime`` is a bug waiting to shift by
    the server's offset); values are stored in UTC and always read back aware.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name in MYSQL_DIALECTS:
            from sqlalchemy.dialects import mysql  # noqa: PLC0415 - see MYSQL_DIALECTS

            # MySQL's DATETIME keeps whole seconds unless asked for microseconds.
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return super().load_dialect_impl(dialect)

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: threadstore stores aware UTC only")
        value = value.astimezone(timezone.utc)
        if dialect.name in ("sqlite", *MYSQL_DIALECTS):
            # These keep no offset: store the UTC wall time, re-attach UTC on read.
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):  # SQLite with a raw string in the column
            value = datetime.fromisoformat(value)
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)  # type: ignore[no-any-return]
        return value.astimezone(timezone.utc)  # type: ignore[no-any-return]


def decode_stored(values: Sequence[Any], codec: Codec) -> list[Any]:
    """Stored values of one encrypted text column, decoded (``None`` stays ``None``).

    The bulk form of :meth:`Kind.plain` for readers that fetch raw columns (the
    export's fast paths); with :meth:`Kind.row` and :meth:`Kind.plain`, the only
    places that call the codec.
    """
    return [v if v is None else codec.decode_text(v) for v in values]


def _thread_id() -> Column[Any]:
    """A child kind's ``thread_id``: the thread it belongs to (removed with it)."""
    return Column(
        "thread_id",
        ExactString(ID),
        ForeignKey("threads.thread_id", ondelete="CASCADE"),
        nullable=False,
    )


def _token_usage() -> tuple[Column[Any], ...]:
    """DashScope's usage, flattened: prompt, completion and total tokens."""
    return tuple(
        Column(name, Integer(), nullable=True)
        for name in ("prompt_tokens", "completion_tokens", "total_tokens")
    )


threads = Table(
    "threads",
    metadata,
    Column("thread_id", ExactString(ID), primary_key=True),
    Column("workspace", ExactString(NAME), nullable=True),
    Column("user_id", ExactString(NAME), nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("last_active", UTCDateTime(), nullable=False),
    Column("metadata", LongText(), nullable=False, server_default=text("'{}'")),
    # creating: intent written, remote create not yet confirmed; active: mirrored.
    Column("status", ExactString(16), nullable=False, server_default=text("'active'")),
    Column("pinned", Boolean(), nullable=False, server_default=false()),
    Column("ttl_seconds", BigInteger(), nullable=True),
    Column("ttl_expires_at", UTCDateTime(), nullable=True),
    # Sweep bookkeeping: retries of failed remote deletes, and the claim lease.
    Column("attempts", Integer(), nullable=False, server_default=text("0")),
    Column("last_error", LongText(), nullable=True),
    Column("next_attempt_at", UTCDateTime(), nullable=True),
    Column("lease_owner", ExactString(ID), nullable=True),
    Column("lease_expires_at", UTCDateTime(), nullable=True),
    Index(None, "last_active"),
    Index(None, "ttl_expires_at"),
    Index(None, "user_id", "last_active"),
    Index(None, "workspace", "last_active"),
    Index(None, "status"),
    Index(None, "next_attempt_at"),
    Index(None, "lease_expires_at"),
)

messages = Table(
    "messages",
    metadata,
    Column("message_id", ExactString(ID), primary_key=True),
    _thread_id(),
    Column("role", ExactString(32), nullable=False),
    Column("content", LongText(), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("run_id", ExactString(ID), nullable=True),
    Column("assistant_id", ExactString(ID), nullable=True),
    Column("metadata", LongText(), nullable=False, server_default=text("'{}'")),
    Index(None, "thread_id", "created_at"),
    Index(None, "created_at"),
)

runs = Table(
    "runs",
    metadata,
    Column("run_id", ExactString(ID), primary_key=True),
    _thread_id(),
    Column("assistant_id", ExactString(ID), nullable=True),
    Column("model", ExactString(128), nullable=True),
    Column("status", ExactString(32), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("started_at", UTCDateTime(), nullable=True),
    Column("completed_at", UTCDateTime(), nullable=True),
    Column("failed_at", UTCDateTime(), nullable=True),
    Column("last_error", LongText(), nullable=True),
    *_token_usage(),
    # JSON list: the calls the run asked for in requires_action, with the outputs given.
    Column("tool_calls", LongText(), nullable=True),
    Index(None, "thread_id", "created_at"),
    Index(None, "created_at"),
)

run_steps = Table(
    "run_steps",
    metadata,
    Column("step_id", ExactString(ID), primary_key=True),
    Column("run_id", ExactString(ID), nullable=False),
    _thread_id(),
    Column("assistant_id", ExactString(ID), nullable=True),
    Column("type", ExactString(32), nullable=False),  # message_creation | tool_calls
    Column("status", ExactString(32), nullable=False),
    Column("message_id", ExactString(ID), nullable=True),  # what a message_creation step wrote
    # JSON list of {id, type, name, arguments, output}: tool calls live with their step.
    Column("tool_calls", LongText(), nullable=True),
    Column("last_error", LongText(), nullable=True),
    *_token_usage(),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("completed_at", UTCDateTime(), nullable=True),
    Column("failed_at", UTCDateTime(), nullable=True),
    Column("cancelled_at", UTCDateTime(), nullable=True),
    Column("expired_at", UTCDateTime(), nullable=True),
    Index(None, "thread_id", "created_at"),
    Index(None, "run_id"),
    Index(None, "created_at"),
)

assistants = Table(
    "assistants",
    metadata,
    Column("assistant_id", ExactString(ID), primary_key=True),
    Column("workspace", ExactString(NAME), nullable=True),
    Column("name", ExactString(NAME), nullable=True),
    Column("model", ExactString(128), nullable=True),
    Column("description", LongText(), nullable=True),
    Column("instructions", LongText(), nullable=True),
    Column("tools", LongText(), nullable=True),  # JSON list, as DashScope holds it
    Column("metadata", LongText(), nullable=False, server_default=text("'{}'")),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("seen_at", UTCDateTime(), nullable=False),  # last time an answer showed it
    Index(None, "workspace", "created_at"),
    Index(None, "created_at"),
)

deletions = Table(
    "deletions",
    metadata,
    Column("id", Integer(), primary_key=True, autoincrement=True),
    Column("thread_id", ExactString(ID), nullable=False),
    Column("workspace", ExactString(NAME), nullable=True),
    Column("user_id", ExactString(NAME), nullable=True),
    Column("created_at", UTCDateTime(), nullable=True),
    Column("last_active", UTCDateTime(), nullable=True),
    Column("deleted_at", UTCDateTime(), nullable=False),
    # expired (sweep), manual (delete_thread), vanished (verify --fix), failed_create
    Column("reason", ExactString(32), nullable=False),
    # deleted: DashScope confirmed the delete; already_gone: it answered 404
    Column("remote_result", ExactString(32), nullable=False),
    Column("message_count", Integer(), nullable=False, server_default=text("0")),
    Column("run_count", Integer(), nullable=False, server_default=text("0")),
    Column("deleted_by", ExactString(ID), nullable=True),
    Index(None, "deleted_at"),
    Index(None, "thread_id"),
    Index(None, "user_id", "deleted_at"),
    Index(None, "workspace", "deleted_at"),
)


sweeps = Table(
    "sweeps",
    metadata,
    # One row per sweep (CLI, scheduler, library): written when it starts,
    # completed when it ends. A row left "running" is a sweeper that died.
    Column("id", Integer(), primary_key=True, autoincrement=True),
    # The sweep's lease owner: the same text as deletions.deleted_by.
    Column("owner", ExactString(ID), nullable=False),
    Column("host", ExactString(NAME), nullable=False),
    Column("pid", Integer(), nullable=False),
    Column("started_at", UTCDateTime(), nullable=False),
    Column("finished_at", UTCDateTime(), nullable=True),
    # running, ok, failed (some deletes kept for retry), auth_failed, untrusted (404s that
    # could not be trusted stopped it), interrupted, error
    Column("outcome", ExactString(16), nullable=False),
    Column("options", LongText(), nullable=False, server_default=text("'{}'")),
    Column("expired", Integer(), nullable=False, server_default=text("0")),
    Column("deleted", Integer(), nullable=False, server_default=text("0")),
    Column("already_gone", Integer(), nullable=False, server_default=text("0")),
    Column("failed", Integer(), nullable=False, server_default=text("0")),
    Column("skipped", Integer(), nullable=False, server_default=text("0")),
    Column("lost_creates", Integer(), nullable=False, server_default=text("0")),
    Column("error", LongText(), nullable=True),
    Index(None, "started_at"),
    Index(None, "outcome", "finished_at"),
)


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class ThreadRecord:
    """A mirrored thread as the store holds it.

    ``status`` is ``active`` for a mirrored thread; ``attempts``, ``last_error`` and
    ``next_attempt_at`` describe failed remote deletes waiting for a retry.
    """

    thread_id: str
    user_id: str | None
    workspace: str | None
    created_at: datetime
    last_active: datetime
    metadata: dict[str, Any]
    pinned: bool
    ttl: timedelta | None
    status: str
    attempts: int = 0
    last_error: str | None = None
    next_attempt_at: datetime | None = None


@dataclass(frozen=True)
class MessageRecord:
    """A mirrored message; ``content`` is its text."""

    message_id: str
    thread_id: str
    role: str
    content: str
    created_at: datetime
    run_id: str | None = None
    assistant_id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RunRecord:
    """A mirrored run with its token usage; ``messages`` are those it added."""

    run_id: str
    thread_id: str
    status: str
    created_at: datetime
    assistant_id: str | None = None
    model: str | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    failed_at: datetime | None = None
    last_error: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    # Not taken from a remote run snapshot (Kind.from_remote): the mirror reads them
    # from the run's required_action and keeps the outputs already stored.
    tool_calls: tuple[dict[str, Any], ...] = field(default=(), metadata={"remote": False})
    # Not a column: the messages this run added (not part of its JSON form).
    messages: tuple[MessageRecord, ...] = field(default=(), metadata={"json": False})


@dataclass(frozen=True)
class RunStepRecord:
    """A mirrored run step: what the run did (wrote a message, called tools), with usage.

    ``tool_calls`` are dicts ``{id, type, name, arguments, output}``.
    """

    step_id: str
    run_id: str
    thread_id: str
    type: str
    status: str
    created_at: datetime
    assistant_id: str | None = None
    message_id: str | None = None
    tool_calls: tuple[dict[str, Any], ...] = ()
    last_error: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    completed_at: datetime | None = None
    failed_at: datetime | None = None
    cancelled_at: datetime | None = None
    expired_at: datetime | None = None


@dataclass(frozen=True)
class AssistantRecord:
    """A mirrored assistant, in the workspace it lives in; ``tools`` as DashScope holds them."""

    assistant_id: str
    workspace: str | None
    created_at: datetime
    seen_at: datetime
    name: str | None = None
    model: str | None = None
    description: str | None = None
    instructions: str | None = None
    tools: tuple[dict[str, Any], ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- declarations

Row = Mapping[str, Any] | RowMapping

# How an export column is typed (Parquet) and treated on the way out.
STR, INT, BOOL, TS, JSON, TEXT, LEN = "str", "int", "bool", "ts", "json", "text", "len"
EXPORT_FORMATS = ("jsonl", "csv", "parquet")
"""The export's formats (here, with the column types, so the CLI need not load the export)."""


@dataclass(frozen=True)
class Kind:
    """One mirrored object type, declared once.

    ``name`` is the table's name, which is also the export's table name and the
    key of the kind in the sweep archive and ``show --json``. ``id_column`` is the
    primary key (DashScope's id); ``time_column`` the natural time (export's
    ``since``/``until``, the order children are read in). ``record`` is the frozen
    dataclass a row becomes; ``export`` the export columns with their types.

    ``child_of_thread``: the table has a ``thread_id`` and its rows belong to that
    thread: they are removed with it (explicitly — ``ON DELETE CASCADE`` needs
    foreign keys on), written to the archive with it, and — if ``deletion_count``
    names a column of the ``deletions`` log — counted there.

    ``encrypted_text`` / ``encrypted_json`` are the columns stored through the
    codec (encrypted when a key is set); :meth:`row` and :meth:`to_record` are the
    only places that encode and decode them.

    ``progress`` says how far along an object is (for runs: the status rank);
    :meth:`upsert` never replaces a stored row by one less far along, so a late
    ``in_progress`` snapshot cannot overwrite ``completed``. ``refresh=False``
    keeps the first row written for an id (messages: their stored order is
    ours).
    """

    name: str
    table: Table
    id_column: str
    time_column: str
    record: type[Any] | None
    export: tuple[tuple[str, str], ...]
    child_of_thread: bool = False
    encrypted_text: tuple[str, ...] = ()
    encrypted_json: tuple[str, ...] = ()
    deletion_count: str | None = None
    progress: Callable[[Mapping[str, Any]], Any] | None = None
    refresh: bool = True
    adapt: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    aliases: tuple[str, ...] = ()  # other names the export accepts (``steps``)

    @property
    def id(self) -> Column[Any]:
        return self.table.c[self.id_column]

    @property
    def time(self) -> Column[Any]:
        return self.table.c[self.time_column]

    @property
    def encrypted(self) -> tuple[str, ...]:
        return self.encrypted_text + self.encrypted_json

    # -- rows

    def from_remote(self, obj: Any, **values: Any) -> dict[str, Any]:
        """Column values (plain) for a remote object: its fields of the same names.

        ``obj.id`` fills the id column; ``values`` override; a missing
        ``created_at`` becomes now.
        """
        row: dict[str, Any] = {}
        local = (
            {f.name for f in fields(obj) if not f.metadata.get("remote", True)}
            if is_dataclass(obj) else set()
        )
        for column in self.table.c:
            attr = "id" if column.name == self.id_column else column.name
            if hasattr(obj, attr) and attr not in local:
                row[column.name] = getattr(obj, attr)
        row.update(values)
        if "created_at" in self.table.c and row.get("created_at") is None:
            row["created_at"] = utcnow()
        return row

    def row(self, values: Mapping[str, Any], codec: Codec) -> dict[str, Any]:
        """Plain values as stored: encrypted columns encoded; other keys dropped."""
        stored = {k: v for k, v in values.items() if k in self.table.c}
        for name in self.encrypted_text:
            if stored.get(name) is not None:
                stored[name] = codec.encode_text(stored[name])
        for name in self.encrypted_json:
            if name in stored:
                stored[name] = codec.encode_json(stored[name])
        return stored

    def plain(self, row: Row, codec: Codec) -> dict[str, Any]:
        """A stored row with its encrypted columns decoded."""
        values = dict(row)
        for name in self.encrypted_text:
            if values.get(name) is not None:
                values[name] = codec.decode_text(values[name])
        for name in self.encrypted_json:
            if name in values:
                values[name] = codec.decode_json(values[name])
        return values

    def to_record(self, row: Row, codec: Codec, **extra: Any) -> Any:
        """The record for a stored row (decoded); ``extra`` fills non-column fields."""
        return self.record_of(self.plain(row, codec), **extra)

    def record_of(self, values: Mapping[str, Any], **extra: Any) -> Any:
        """The record for plain (decoded) column values."""
        if self.record is None:
            raise TypeError(f"{self.name} has no record type")
        if self.adapt is not None:
            values = self.adapt(dict(values))
        names = {f.name for f in fields(self.record)}
        return self.record(**{k: v for k, v in values.items() if k in names}, **extra)

    def upsert(
        self, conn: Connection, rows: Sequence[Mapping[str, Any]], codec: Codec
    ) -> list[dict[str, Any]]:
        """Write ``rows`` (plain values) by id; returns those written (plain).

        Unknown ids are inserted; known ones are updated when ``refresh`` is set
        and the new row is at least as far along (``progress``) as the stored one.
        Idempotent: writing the same rows twice changes nothing the second time.
        """
        if not rows:
            return []
        ids = [r[self.id_column] for r in rows]
        known = {
            r[self.id_column]: dict(r)
            for r in conn.execute(select(self.table).where(self.id.in_(ids))).mappings()
        }
        new: list[dict[str, Any]] = []
        written: list[dict[str, Any]] = []
        for values in rows:
            stored = known.get(values[self.id_column])
            if stored is None:
                new.append(dict(values))
                written.append(dict(values))
                continue
            if not self.refresh:
                continue
            if self.progress is not None and self.progress(values) < self.progress(stored):
                continue  # never older over newer
            conn.execute(
                update(self.table)
                .where(self.id == values[self.id_column])
                .values(**self.row(values, codec))
            )
            written.append(dict(values))
        if new:
            conn.execute(insert(self.table), [self.row(v, codec) for v in new])
        return written

    def of_threads(self, thread_ids: Iterable[str]) -> Any:
        """SELECT of this child kind's rows for ``thread_ids``, in stored order."""
        return (
            select(self.table)
            .where(self.table.c.thread_id.in_(list(thread_ids)))
            .order_by(self.time, self.id)
        )

    def count_by_thread(self, conn: Connection, thread_ids: Sequence[str]) -> dict[str, int]:
        """Rows of this child kind per thread (threads without any left out), one query."""
        column = self.table.c.thread_id
        query = select(column, func.count()).where(column.in_(thread_ids)).group_by(column)
        return {tid: int(n) for tid, n in conn.execute(query)}


def _thread_record(values: dict[str, Any]) -> dict[str, Any]:
    ttl = values.get("ttl_seconds")
    values["ttl"] = timedelta(seconds=ttl) if ttl is not None else None
    values["pinned"] = bool(values.get("pinned"))
    return values


# A run moves forward: queued → in_progress ⇄ requires_action → cancelling → an end.
RUN_RANK = {
    "queued": 0,
    "in_progress": 1,
    "requires_action": 1,
    "cancelling": 2,
    "completed": 3,
    "failed": 3,
    "cancelled": 3,
    "expired": 3,
}


def _run_progress(row: Mapping[str, Any]) -> int:
    return RUN_RANK.get(row["status"], 0)


def _step_progress(row: Mapping[str, Any]) -> int:
    return 0 if row["status"] == "in_progress" else 1  # a step only ends


def _json_list(text: str | None) -> tuple[dict[str, Any], ...]:
    """A JSON list column (decoded) as a tuple of dicts."""
    if not text:
        return ()
    try:
        loaded = json.loads(text)
    except ValueError:
        return ()
    return tuple(x for x in loaded if isinstance(x, dict)) if isinstance(loaded, list) else ()


def _with_tool_calls(values: dict[str, Any]) -> dict[str, Any]:
    values["tool_calls"] = _json_list(values.get("tool_calls"))
    return values


def _assistant_record(values: dict[str, Any]) -> dict[str, Any]:
    values["tools"] = _json_list(values.get("tools"))
    return values


THREADS = Kind(
    name="threads",
    table=threads,
    id_column="thread_id",
    time_column="last_active",
    record=ThreadRecord,
    encrypted_json=("metadata",),
    adapt=_thread_record,
    export=(
        ("thread_id", STR),
        ("workspace", STR),
        ("user_id", STR),
        ("created_at", TS),
        ("last_active", TS),
        ("metadata", JSON),
        ("pinned", BOOL),
        ("ttl_seconds", INT),
        ("ttl_expires_at", TS),
        # Aggregated from the children by the export.
        ("message_count", INT),
        ("run_count", INT),
        ("prompt_tokens", INT),
        ("completion_tokens", INT),
        ("total_tokens", INT),
    ),
)

MESSAGES = Kind(
    name="messages",
    table=messages,
    id_column="message_id",
    time_column="created_at",
    record=MessageRecord,
    child_of_thread=True,
    encrypted_text=("content",),
    encrypted_json=("metadata",),
    deletion_count="message_count",
    refresh=False,
    export=(
        ("message_id", STR),
        ("thread_id", STR),
        ("role", STR),
        ("content", TEXT),
        ("content_length", LEN),
        ("created_at", TS),
        ("run_id", STR),
        ("assistant_id", STR),
        ("metadata", JSON),
    ),
)

RUNS = Kind(
    name="runs",
    table=runs,
    id_column="run_id",
    time_column="created_at",
    record=RunRecord,
    child_of_thread=True,
    deletion_count="run_count",
    progress=_run_progress,
    encrypted_text=("tool_calls",),
    adapt=_with_tool_calls,
    export=(
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
        ("tool_calls", JSON),
    ),
)

# Tool calls are not a kind of their own: they are JSON on the run that asked for
# them (runs.tool_calls) and on the step that made them (run_steps.tool_calls).
RUN_STEPS = Kind(
    name="run_steps",
    table=run_steps,
    id_column="step_id",
    time_column="created_at",
    record=RunStepRecord,
    child_of_thread=True,
    progress=_step_progress,
    aliases=("steps",),
    encrypted_text=("tool_calls", "last_error"),
    adapt=_with_tool_calls,
    export=(
        ("step_id", STR),
        ("run_id", STR),
        ("thread_id", STR),
        ("assistant_id", STR),
        ("type", STR),
        ("status", STR),
        ("message_id", STR),
        ("tool_calls", JSON),
        ("last_error", TEXT),
        ("prompt_tokens", INT),
        ("completion_tokens", INT),
        ("total_tokens", INT),
        ("created_at", TS),
        ("completed_at", TS),
        ("failed_at", TS),
        ("cancelled_at", TS),
        ("expired_at", TS),
    ),
)

ASSISTANTS = Kind(
    name="assistants",
    table=assistants,
    id_column="assistant_id",
    time_column="created_at",
    record=AssistantRecord,
    encrypted_text=("description", "instructions", "tools"),
    encrypted_json=("metadata",),
    adapt=_assistant_record,
    export=(
        ("assistant_id", STR),
        ("workspace", STR),
        ("name", STR),
        ("model", STR),
        ("description", TEXT),
        ("instructions", TEXT),
        ("tools", JSON),
        ("metadata", JSON),
        ("created_at", TS),
        ("seen_at", TS),
    ),
)

DELETIONS = Kind(
    name="deletions",
    table=deletions,
    id_column="id",
    time_column="deleted_at",
    record=None,
    export=(
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
)

SWEEPS = Kind(
    name="sweeps",
    table=sweeps,
    id_column="id",
    time_column="started_at",
    record=None,
    # ``options`` is the sweep's options as JSON text.
    export=(
        ("id", INT),
        ("owner", STR),
        ("host", STR),
        ("pid", INT),
        ("started_at", TS),
        ("finished_at", TS),
        ("outcome", STR),
        ("options", STR),
        ("expired", INT),
        ("deleted", INT),
        ("already_gone", INT),
        ("failed", INT),
        ("skipped", INT),
        ("lost_creates", INT),
        ("error", STR),
    ),
)

KINDS: tuple[Kind, ...] = (THREADS, MESSAGES, RUNS, RUN_STEPS, ASSISTANTS, DELETIONS, SWEEPS)
"""Every declared kind, in export order. A new kind is declared above and added here."""
THREAD_CHILDREN: tuple[Kind, ...] = tuple(k for k in KINDS if k.child_of_thread)
"""The kinds removed, archived and counted with their thread."""
_BY_NAME = {name: k for k in KINDS for name in (k.name, *k.aliases)}
KIND_NAMES: tuple[str, ...] = tuple(_BY_NAME)
"""Every name :func:`kind` accepts, aliases included, in declaration order (export's tables)."""


def kind(name: str) -> Kind:
    """The kind declared as ``name`` or one of its aliases (KeyError if none)."""
    return _BY_NAME[name]


# --------------------------------------------------------------------------- encoded rows

ENCODED_PREFIXES = ("fernet:", "plain:")
"""How :class:`~threadstore.codec.Codec` marks a stored value it must decode: a
Fernet token, or plain text escaped because it began like one. Every other value
is stored as it is (``test_kinds`` checks these match the codec's)."""

PARTIAL_INDEX_DIALECTS = ("sqlite", "postgresql")
"""Backends with partial indexes (MySQL and MariaDB have none: they scan)."""


def encoded_values(declared: Kind) -> ColumnElement[bool] | None:
    """True for a row of ``declared`` holding any value stored encoded; None if
    the kind stores nothing through the codec.

    The patterns are literals, and the expression is the one the partial index
    ``ix_<table>_encoded`` (below) is declared with, so that SQLite and
    PostgreSQL answer "is anything encoded?" from that index: empty on a store
    without encryption, where the question would otherwise read the whole table
    (an export asks it before taking its fast path).
    """
    columns = [declared.table.c[name] for name in declared.encrypted]
    if not columns:
        return None
    return or_(
        *(c.like(literal_column(f"'{p}%'")) for c in columns for p in ENCODED_PREFIXES)
    )


def _encoded_index(declared: Kind) -> Index | None:
    predicate = encoded_values(declared)
    if predicate is None:
        return None
    # The predicate lives in ``info``, not as ``sqlite_where=``/``postgresql_where=``:
    # those load both dialects' modules (~20 ms of every start-up). Migration 0005
    # makes the real, partial index; Alembic compares names and columns only.
    index = Index(
        f"ix_{declared.table.name}_encoded",
        declared.id,
        info={"dialects": PARTIAL_INDEX_DIALECTS, "where": predicate},
    )
    # ddl_if takes a tuple of names too (its annotation says str only).
    return index.ddl_if(dialect=PARTIAL_INDEX_DIALECTS)  # type: ignore[arg-type]


for _declared in KINDS:
    _encoded_index(_declared)
