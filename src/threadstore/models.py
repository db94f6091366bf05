"""The local mirror's tables (SQLAlchemy Core).

Conventions: a naming convention for every constraint and index (so Alembic can
name, diff and drop them on every backend), timezone-aware UTC datetimes that
refuse naive values, ``String`` columns with lengths (MySQL/MariaDB need them),
and an index for every filter the sweep and the export use.

``threads.metadata`` and ``messages.content``/``metadata`` are text columns: they
hold JSON (or plain text), or a Fernet token when ``THREADSTORE_ENCRYPTION_KEY`` is
set; :mod:`threadstore.codec` encodes and decodes them.

Expiry: a thread is expired when it is not pinned and either it has its own TTL
and ``ttl_expires_at`` (``last_active + ttl``, kept in step by the store) has
passed, or it has none and ``last_active`` is older than the sweep's cutoff. Both
halves are plain indexed comparisons, the same SQL on every backend.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    false,
    text,
)
from sqlalchemy.types import TypeDecorator

__all__ = [
    "MessageRecord",
    "RunRecord",
    "ThreadRecord",
    "UTCDateTime",
    "deletions",
    "messages",
    "metadata",
    "runs",
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


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend.

    Naive values are refused (a naive ``datetime`` is a bug waiting to shift by
    the server's offset); values are stored in UTC and always read back aware.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: threadstore stores aware UTC only")
        value = value.astimezone(timezone.utc)
        if dialect.name in ("sqlite", "mysql", "mariadb"):
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


threads = Table(
    "threads",
    metadata,
    Column("thread_id", String(ID), primary_key=True),
    Column("workspace", String(NAME), nullable=True),
    Column("user_id", String(NAME), nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("last_active", UTCDateTime(), nullable=False),
    Column("metadata", Text(), nullable=False, server_default=text("'{}'")),
    # creating: intent written, remote create not yet confirmed; active: mirrored.
    Column("status", String(16), nullable=False, server_default=text("'active'")),
    Column("pinned", Boolean(), nullable=False, server_default=false()),
    Column("ttl_seconds", BigInteger(), nullable=True),
    Column("ttl_expires_at", UTCDateTime(), nullable=True),
    # Sweep bookkeeping: retries of failed remote deletes, and the claim lease.
    Column("attempts", Integer(), nullable=False, server_default=text("0")),
    Column("last_error", Text(), nullable=True),
    Column("next_attempt_at", UTCDateTime(), nullable=True),
    Column("lease_owner", String(ID), nullable=True),
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
    Column("message_id", String(ID), primary_key=True),
    Column(
        "thread_id",
        String(ID),
        ForeignKey("threads.thread_id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("role", String(32), nullable=False),
    Column("content", Text(), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("run_id", String(ID), nullable=True),
    Column("assistant_id", String(ID), nullable=True),
    Column("metadata", Text(), nullable=False, server_default=text("'{}'")),
    Index(None, "thread_id", "created_at"),
    Index(None, "created_at"),
)

runs = Table(
    "runs",
    metadata,
    Column("run_id", String(ID), primary_key=True),
    Column(
        "thread_id",
        String(ID),
        ForeignKey("threads.thread_id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("assistant_id", String(ID), nullable=True),
    Column("model", String(128), nullable=True),
    Column("status", String(32), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("started_at", UTCDateTime(), nullable=True),
    Column("completed_at", UTCDateTime(), nullable=True),
    Column("failed_at", UTCDateTime(), nullable=True),
    Column("last_error", Text(), nullable=True),
    Column("prompt_tokens", Integer(), nullable=True),
    Column("completion_tokens", Integer(), nullable=True),
    Column("total_tokens", Integer(), nullable=True),
    Index(None, "thread_id", "created_at"),
    Index(None, "created_at"),
)

deletions = Table(
    "deletions",
    metadata,
    Column("id", Integer(), primary_key=True, autoincrement=True),
    Column("thread_id", String(ID), nullable=False),
    Column("workspace", String(NAME), nullable=True),
    Column("user_id", String(NAME), nullable=True),
    Column("created_at", UTCDateTime(), nullable=True),
    Column("last_active", UTCDateTime(), nullable=True),
    Column("deleted_at", UTCDateTime(), nullable=False),
    # expired (sweep), manual (delete_thread), vanished (verify --fix), failed_create
    Column("reason", String(32), nullable=False),
    # deleted: DashScope confirmed the delete; already_gone: it answered 404
    Column("remote_result", String(32), nullable=False),
    Column("message_count", Integer(), nullable=False, server_default=text("0")),
    Column("run_count", Integer(), nullable=False, server_default=text("0")),
    Column("deleted_by", String(ID), nullable=True),
    Index(None, "deleted_at"),
    Index(None, "thread_id"),
    Index(None, "user_id", "deleted_at"),
    Index(None, "workspace", "deleted_at"),
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
    messages: tuple[MessageRecord, ...] = ()
