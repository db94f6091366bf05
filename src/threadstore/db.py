"""Engines, transactions and migrations.

* :func:`open_engine` turns a URL into an engine with the right settings per
  backend and refuses bad URLs with :class:`~threadstore.errors.ConfigError`.
  SQLite files get WAL, ``synchronous=NORMAL``, a 30 s busy timeout, foreign
  keys, mode 0600 when threadstore creates them, and write transactions that
  begin ``IMMEDIATE`` (so two writers queue on the busy timeout instead of one of
  them failing with "database is locked" when it upgrades a read lock).
* :func:`write` opens the one transaction of a write operation; :func:`read` a
  read-only one (``DEFERRED`` on SQLite, so exports never block writers).
  :func:`write_retrying` runs a unit of work in a write transaction and runs it
  again (a few times, after a random pause) when the database chose it as a
  deadlock victim or its lock wait timed out — what MySQL/MariaDB do to row-lock
  cycles that PostgreSQL would simply queue. MySQL/MariaDB connections use
  ``READ COMMITTED``, as PostgreSQL does: no gap locks, so far fewer such cycles.
* :func:`upgrade` migrates to head under a cross-process lock; it is what
  ``ThreadStore(url)`` calls on open. :func:`inspect_store` looks at a database
  without creating or changing anything (read-only commands open through it).
  The Alembic scripts ship inside the wheel (``threadstore/_migrations``) and
  live in ``migrations/`` in a checkout.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import sqlite3
import stat
import threading
import time
import urllib.parse
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (
    Connection,
    Engine,
    Insert,
    Select,
    Table,
    create_engine,
    event,
    insert,
    inspect,
    text,
)
from sqlalchemy.dialects.sqlite.base import SQLiteCompiler
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.pool import StaticPool
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ClauseElement

from .errors import ConfigError, StoreError

__all__ = [
    "DEFAULT_URL",
    "HeldConnection",
    "Prepared",
    "StoreState",
    "compare_server_default",
    "current_revision",
    "head_revision",
    "include_object",
    "inspect_store",
    "mask_secrets",
    "open_engine",
    "read",
    "safe_url",
    "upgrade",
    "walk_index",
    "write",
    "write_retrying",
]

T = TypeVar("T")
log = logging.getLogger("threadstore")

DEFAULT_URL = "sqlite:///threadstore.db"
# The newest migration's revision. Opening a store compares the database with
# it in plain SQL, so the common case never imports Alembic (a test keeps this
# equal to the scripts' head).
SCHEMA_HEAD = "0005"
_BEGIN_OPTION = "threadstore_sqlite_begin"
VERSION_TABLE = "threadstore_alembic_version"
"""threadstore's own Alembic version table, so that a host application's Alembic
(``alembic_version``) can live in the same database."""
LEGACY_VERSION_TABLE = "alembic_version"  # where 0.1 kept threadstore's revision
MIGRATION_LOCK_TIMEOUT = 60
"""Seconds a MySQL/MariaDB upgrade waits for another process's migration lock."""
MYSQL_DIALECTS = ("mysql", "mariadb")
# MySQL/MariaDB: deadlock victim, lock wait timeout. PostgreSQL: deadlock detected,
# serialization failure. Each means "nothing was done: run the transaction again".
_MYSQL_CONFLICTS = frozenset({1213, 1205})
_PG_CONFLICTS = frozenset({"40P01", "40001"})
RETRY_ATTEMPTS = 8
_jitter = random.Random()  # noqa: S311 - spreads retries apart; not a secret


_SECRET_PARAM = re.compile(
    r"(?i)\b((?:ssl)?password|passwd|pwd|secret|token|api[_-]?key)=([^&\s'\";]*)"
)
_USERINFO = re.compile(r"(://[^:/@\s]*):([^@\s]*)@")


def mask_secrets(text: str) -> str:
    """``text`` with URL passwords (``user:***@``) and ``password=***`` parameters masked.

    For messages that may quote a database URL or a driver's connection string.
    """
    return _USERINFO.sub(r"\1:***@", _SECRET_PARAM.sub(r"\1=***", text))


def safe_url(url: URL | str) -> str:
    """The URL with any password masked — in the user part and in the query
    (``?password=…``) — for messages, logs and ``repr``."""
    try:
        rendered = make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return "<malformed database URL>"
    return mask_secrets(rendered)


def _parse(url: str | URL) -> URL:
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        # Not chained: the parser's message repeats the URL, password and all.
        raise ConfigError(
            f"malformed database URL {mask_secrets(str(url))!r}: expected e.g. "
            "sqlite:///threadstore.db or postgresql://user@host/dbname"
        ) from None
    backend = parsed.get_backend_name()
    if backend == "postgresql" and parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    if backend in ("mysql", "mariadb") and "+" not in parsed.drivername:
        parsed = parsed.set(drivername=f"{backend}+pymysql")
    return parsed


def _prepare_sqlite_file(database: str) -> None:
    path = Path(database).expanduser()
    if not path.parent.is_dir():
        raise ConfigError(f"cannot create SQLite database {database!r}: no directory {path.parent}")
    if path.exists():
        if path.is_dir():
            raise ConfigError(f"SQLite database path {database!r} is a directory")
        return
    # Created 0600 up front: conversations are private, and SQLite gives its
    # -wal/-shm files the database file's permissions.
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, stat.S_IRUSR | stat.S_IWUSR)
    except FileExistsError:
        return
    except OSError as exc:
        raise ConfigError(f"cannot create SQLite database {database!r}: {exc.strerror}") from exc
    os.close(fd)


class _SQLiteCompiler(SQLiteCompiler):
    """SQLite's compiler, rendering ``with_hint(..., dialect_name="sqlite")`` hints
    (``INDEXED BY …``) after the table name, which SQLAlchemy's leaves out."""

    def get_from_hint_text(self, table: Any, text: str | None) -> str | None:
        return text


def _sqlite_file(url: URL) -> Path | None:
    """The file of a SQLite URL; None for other backends and in-memory databases."""
    if url.get_backend_name() != "sqlite":
        return None
    database = url.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        return None
    return Path(database).expanduser()


def _sqlite_events(engine: Engine, *, memory: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event, not the driver, decide how to BEGIN.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        try:
            if not memory:
                cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
        finally:
            cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get(_BEGIN_OPTION, "IMMEDIATE")
        conn.exec_driver_sql(f"BEGIN {mode}")


def walk_index(query: Select[Any], table: Table, *columns: str) -> Select[Any]:
    """``query`` reading ``table`` through its index on ``columns`` (SQLite only).

    SQLite's planner has no statistics unless someone runs ANALYZE, and then
    prefers the index of an equality (``status = 'active'``, true of nearly every
    row) over the one that yields rows in ``ORDER BY`` order, sorting the whole
    table to return ten rows. ``INDEXED BY`` makes ``… ORDER BY last_active LIMIT
    n`` read about n rows, whatever the store's size. Other backends plan from
    statistics and get the query unchanged.
    """
    name = f"ix_{table.name}_{'_'.join(columns)}"  # models' naming convention
    return query.with_hint(table, f"INDEXED BY {name}", dialect_name="sqlite")


def open_engine(url: str | URL, *, echo: bool = False) -> Engine:
    """Create an engine for ``url``; ConfigError for anything wrong with it."""
    parsed = _parse(url)
    backend = parsed.get_backend_name()
    kwargs: dict[str, Any] = {"echo": echo, "future": True}
    memory = False
    if backend == "sqlite":
        database = parsed.database or ""
        memory = database in ("", ":memory:") or database.startswith("file::memory:")
        if memory:
            # One shared connection, or every new connection would see an empty db.
            kwargs["poolclass"] = StaticPool
        else:
            _prepare_sqlite_file(database)
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
    else:
        kwargs["pool_pre_ping"] = True
    if backend in MYSQL_DIALECTS:
        # PostgreSQL's default, and what the claims are designed for: REPEATABLE
        # READ's gap locks turn concurrent claims and deletes into deadlocks.
        kwargs["isolation_level"] = "READ COMMITTED"
    try:
        engine = create_engine(parsed, **kwargs)
    except (NoSuchModuleError, ImportError) as exc:
        extra = {"postgresql": "postgres", "mysql": "mysql", "mariadb": "mysql"}.get(backend)
        hint = f" (pip install 'threadstore[{extra}]')" if extra else ""
        raise ConfigError(
            f"no driver for {parsed.drivername!r}{hint}: {exc}"
        ) from exc
    except ArgumentError as exc:
        raise ConfigError(
            f"bad database URL {safe_url(parsed)}: {mask_secrets(str(exc))}"
        ) from None
    if backend == "sqlite":
        engine.dialect.statement_compiler = _SQLiteCompiler
        _sqlite_events(engine, memory=memory)
    return engine


@contextlib.contextmanager
def write(engine: Engine) -> Iterator[Connection]:
    """One write transaction (``BEGIN IMMEDIATE`` on SQLite); commits on success.

    The one place where database errors become :class:`StoreError` (rolled
    back; the SQLAlchemy error chained), for every module that writes.
    """
    try:
        with engine.begin() as conn:
            yield conn
    except SQLAlchemyError as exc:
        raise StoreError(f"database write failed: {_short(exc)}") from exc


class Prepared:
    """A statement compiled once for a dialect, its values processed as SQLAlchemy would."""

    def __init__(self, stmt: ClauseElement, dialect: Any, keys: Sequence[str] | None) -> None:
        compiled = stmt.compile(dialect=dialect, column_keys=list(keys) if keys else None)
        assert isinstance(compiled, SQLCompiler)  # noqa: S101 - DML compiles to SQL
        self.sql = compiled.string
        self.order = list(compiled.positiontup or ()) if compiled.positional else None
        self.procs: dict[str, Callable[[Any], Any]] = {}
        for name, bind in compiled.binds.items():
            proc = bind.type.bind_processor(dialect)
            if proc is not None:
                self.procs[name] = proc
        # Literals inside the statement (``status='active'`` …) are binds with a value.
        self.defaults = {n: b.effective_value for n, b in compiled.binds.items() if not b.required}

    def params(self, values: Mapping[str, Any]) -> Any:
        procs = self.procs
        merged = {**self.defaults, **values}
        for k, v in merged.items():
            if v is not None and k in procs:
                merged[k] = procs[k](v)
        return merged if self.order is None else [merged.get(k) for k in self.order]


_PREPARED: weakref.WeakKeyDictionary[Engine, dict[tuple[int, tuple[str, ...]], Prepared]] = (
    weakref.WeakKeyDictionary()
)


class DriverTx:
    """Statements run on the driver's own cursor (see :func:`write_fast`)."""

    def __init__(self, engine: Engine, cursor: Any) -> None:
        self._cache = _PREPARED.setdefault(engine, {})
        self._dialect = engine.dialect
        self._cursor = cursor

    def run(self, stmt: ClauseElement, values: Mapping[str, Any], *, insert: bool = False) -> int:
        """Execute ``stmt`` with ``values``; the rows it changed.

        ``insert``: an INSERT of exactly the columns named by ``values``' keys.
        """
        keys = tuple(values) if insert else ()
        prepared = self._cache.get((id(stmt), keys))
        if prepared is None:
            prepared = self._cache[(id(stmt), keys)] = Prepared(stmt, self._dialect, keys)
        self._cursor.execute(prepared.sql, prepared.params(values))
        return int(self._cursor.rowcount)


class _WatchedTx(DriverTx):
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def run(self, stmt: ClauseElement, values: Mapping[str, Any], *, insert: bool = False) -> int:
        return int(self._conn.execute(stmt, values).rowcount)  # type: ignore[call-overload]


class HeldConnection:
    """One pooled connection kept checked out for :func:`write_fast` (SQLite files).

    A create pays two short write transactions; taking a connection from the pool
    and giving it back costs about as much as one of them. The first writer to
    find the held connection free uses it (never waiting for it: the others take
    one from the pool as before, so threads never queue behind it). It is given
    back after any error (the pool checks connections it hands out) and by
    :meth:`close`; a forked child never uses its parent's. Only SQLite files hold
    one: a server connection held out of the pool would miss the pool's liveness
    check (``pool_pre_ping``) after a server restart, and there a commit's round
    trip dwarfs a checkout anyway.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._lock = threading.Lock()
        self._raw: Any = None
        self._pid = os.getpid()
        self.enabled = engine.dialect.name == "sqlite" and not isinstance(engine.pool, StaticPool)

    @contextlib.contextmanager
    def borrow(self) -> Iterator[Any]:
        """The held connection, or None if it is in use (or not held for this engine)."""
        if not self.enabled or not self._lock.acquire(blocking=False):
            yield None
            return
        try:
            if self._pid != os.getpid():  # forked: the parent's connection is not ours
                self._raw, self._pid = None, os.getpid()
            if self._raw is None:
                self._raw = _checkout(self._engine)
            yield self._raw
        except BaseException:
            self._give_back()
            raise
        finally:
            self._lock.release()

    def _give_back(self) -> None:
        raw, self._raw = self._raw, None
        if raw is not None and self._pid == os.getpid():
            with contextlib.suppress(Exception):
                raw.close()

    def close(self) -> None:
        """Return the connection to the pool (before the engine is disposed)."""
        with self._lock:
            self._give_back()


def _checkout(engine: Engine) -> Any:
    try:
        return engine.raw_connection()
    except SQLAlchemyError as exc:
        raise StoreError(f"database write failed: {_short(exc)}") from exc


def write_one(
    engine: Engine,
    stmt: ClauseElement,
    values: Mapping[str, Any],
    *,
    insert: bool = False,
    held: HeldConnection | None = None,
) -> int:
    """:func:`write_fast` for one statement; the rows it changed.

    On SQLite the statement runs on its own in autocommit mode: one statement is
    one transaction there (atomic, and waiting for the write lock as ``BEGIN
    IMMEDIATE`` would), so an explicit ``BEGIN`` and ``COMMIT`` would only add two
    driver calls to every create.
    """
    with write_fast(engine, held, single=True) as tx:
        return tx.run(stmt, values, insert=insert)


@contextlib.contextmanager
def write_fast(
    engine: Engine, held: HeldConnection | None = None, *, single: bool = False
) -> Iterator[DriverTx]:
    """:func:`write` for a few fixed statements on a hot path (a create's two steps).

    The same transaction (``BEGIN IMMEDIATE`` on SQLite), errors and rollback, but
    statements compiled once per engine and run on the driver's cursor: SQLAlchemy's
    per-execution work costs more than SQLite's insert and commit together. Only
    for module-level statements (cached by identity). With statement listeners on
    the engine (or ``echo``), it is :func:`write` itself, so that they see everything.
    ``held``: use that connection when it is free instead of the pool's.
    ``single``: the block runs one statement (see :func:`write_one`).
    """
    if engine.echo or engine.dispatch.before_cursor_execute or engine.dispatch.after_cursor_execute:
        # Someone watches the statements (logging, tracing, a test's fault
        # injection): they go through SQLAlchemy, where the watchers see them.
        with write(engine) as conn:
            yield _WatchedTx(conn)
        return
    with contextlib.nullcontext(None) if held is None else held.borrow() as kept:
        raw = kept if kept is not None else _checkout(engine)
        try:
            yield from _driver_tx(engine, raw, single=single)
        finally:
            if kept is None:
                raw.close()


def _driver_tx(engine: Engine, raw: Any, *, single: bool) -> Iterator[DriverTx]:
    dbapi_error = engine.dialect.loaded_dbapi.Error
    # The connect hook puts SQLite connections in autocommit mode (BEGIN is ours).
    autocommit = single and engine.dialect.name == "sqlite"
    try:
        cursor = raw.cursor()
        if engine.dialect.name == "sqlite" and not autocommit:
            cursor.execute("BEGIN IMMEDIATE")
        yield DriverTx(engine, cursor)
        if not autocommit:
            raw.commit()
    except BaseException as exc:
        try:
            raw.rollback()
        except dbapi_error:
            raw.invalidate()
        if isinstance(exc, dbapi_error):
            line = str(exc).strip().splitlines()
            raise StoreError(
                f"database write failed: {line[0] if line else type(exc).__name__}"
            ) from exc
        raise


def is_lock_conflict(exc: BaseException | None) -> bool:
    """True for a deadlock or lock-wait timeout: the transaction may simply be rerun."""
    if not isinstance(exc, DBAPIError):
        return False
    orig = exc.orig
    if getattr(orig, "sqlstate", None) in _PG_CONFLICTS:
        return True
    args: tuple[Any, ...] = getattr(orig, "args", ())
    return bool(args) and args[0] in _MYSQL_CONFLICTS


def write_retrying(
    engine: Engine, work: Callable[[Connection], T], *, attempts: int = RETRY_ATTEMPTS
) -> T:
    """``work(conn)`` in one :func:`write` transaction, rerun after a lock conflict.

    A deadlock victim's transaction was rolled back whole, so running ``work``
    again is safe as long as it has no effect outside the transaction. After
    ``attempts`` conflicts in a row the last one is raised as :func:`write` would.
    """
    attempt = 1
    while True:
        try:
            with write(engine) as conn:
                return work(conn)
        except StoreError as exc:
            if attempt >= attempts or not is_lock_conflict(exc.__cause__):
                raise
            log.debug("lock conflict (attempt %d), retrying: %s", attempt, exc)
        # Random, growing pauses: the transactions that collided must not meet again.
        time.sleep(_jitter.uniform(0, 0.01 * 2**attempt))
        attempt += 1


@contextlib.contextmanager
def read(engine: Engine, *, snapshot: bool = False) -> Iterator[Connection]:
    """One read transaction that never takes SQLite's write lock; errors as in :func:`write`.

    ``snapshot``: on PostgreSQL, ``REPEATABLE READ``, so that every statement reads
    the snapshot of the first (which ``pg_export_snapshot()`` can share). SQLite's
    read transactions are so already.
    """
    try:
        with engine.connect() as raw:
            conn = raw.execution_options(**{_BEGIN_OPTION: "DEFERRED"})
            if snapshot and engine.dialect.name == "postgresql":
                conn = conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                yield conn
    except SQLAlchemyError as exc:
        raise StoreError(f"database read failed: {_short(exc)}") from exc


# --------------------------------------------------------------------------- migrations


def migrations_dir() -> Path:
    """The Alembic script directory: inside the wheel, else the checkout's."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "_migrations", here.parent.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise ConfigError("threadstore's migration scripts are missing from this installation")


def alembic_config(connection: Connection | None = None) -> Any:
    """An Alembic ``Config`` pointing at our scripts, bound to ``connection``."""
    from alembic.config import Config  # noqa: PLC0415 - Alembic loads only to migrate

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str | None:
    """The head revision of the migration scripts (reads the scripts)."""
    from alembic.script import ScriptDirectory  # noqa: PLC0415

    head: str | None = ScriptDirectory.from_config(alembic_config()).get_current_head()
    return head


def current_revision(conn: Connection) -> str | None:
    """The threadstore schema revision of the database, or None if it has none.

    Read from threadstore's own version table, :data:`VERSION_TABLE`; a 0.1 store
    still has its revision in Alembic's default table (see :func:`inspect_store`).
    """
    tables = set(inspect(conn).get_table_names())
    if VERSION_TABLE in tables:
        rows = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()
        if len(rows) > 1:
            raise ConfigError(f"threadstore's version table holds {len(rows)} revisions")
        return rows[0] if rows else None
    return _legacy_revision(conn, tables)


def _legacy_revision(conn: Connection, tables: set[str]) -> str | None:
    """A 0.1 store's revision, kept in Alembic's default ``alembic_version``.

    Only when that table holds exactly one revision, one of threadstore's, next to
    threadstore's tables: a host application's own Alembic history is not ours.
    """
    if VERSION_TABLE in tables or LEGACY_VERSION_TABLE not in tables or "threads" not in tables:
        return None
    rows = conn.execute(text(f"SELECT version_num FROM {LEGACY_VERSION_TABLE}")).scalars().all()
    if len(rows) != 1 or rows[0] not in _known_revisions():
        return None
    return str(rows[0])


def include_object(dialect_name: str) -> Callable[..., bool]:
    """Alembic's ``include_object`` hook for a backend: the models' objects that
    exist there.

    An index declared for some backends only (the partial ``ix_<table>_encoded``
    indexes, ``info["dialects"]``) is not missing where it was never made. Used by
    ``migrations/env.py`` and the schema test alike.
    """

    def include(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
        dialects = getattr(obj, "info", {}).get("dialects") if type_ == "index" else None
        return dialects is None or dialect_name in dialects

    return include


def compare_server_default(
    context: Any,
    inspected_column: Any,
    metadata_column: Any,
    inspected_default: str | None,
    metadata_default: Any,
    rendered_metadata_default: str | None,
) -> bool | None:
    """Alembic's server-default comparison, told that MySQL spells ``false`` as ``0``.

    ``None`` lets Alembic compare as usual; used by ``migrations/env.py`` and the
    schema test alike.
    """
    booleans = {"false": "0", "true": "1"}
    if (
        context.dialect.name in ("mysql", "mariadb")
        and rendered_metadata_default is not None
        and inspected_default is not None
    ):
        wanted = booleans.get(rendered_metadata_default.strip("'").lower())
        if wanted is not None:
            return inspected_default.strip("'") != wanted
    return None


@contextlib.contextmanager
def _migration_lock(conn: Connection, engine_url: URL) -> Iterator[None]:
    """Hold the cross-process migration lock of this database for the block.

    PostgreSQL: a transaction-level advisory lock (released at commit or rollback).
    MySQL/MariaDB: ``GET_LOCK``, a session-level lock: its answer is checked
    (0 after :data:`MIGRATION_LOCK_TIMEOUT` seconds: another process is still
    migrating) and it is released before the connection goes back to the pool,
    where it would otherwise stay held. SQLite: ``BEGIN IMMEDIATE`` is the lock.
    """
    backend = conn.dialect.name
    if backend == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(7462711)"))
    if backend not in MYSQL_DIALECTS:
        yield
        return
    # Lock names are server-wide: one per database (names are at most 64 characters).
    name = conn.execute(text("SELECT CONCAT('threadstore_migrate_', MD5(DATABASE()))")).scalar()
    got = conn.execute(
        text("SELECT GET_LOCK(:name, :timeout)"),
        {"name": name, "timeout": MIGRATION_LOCK_TIMEOUT},
    ).scalar()
    if got != 1:
        raise ConfigError(
            f"cannot migrate {safe_url(engine_url)}: another process has held its migration "
            f"lock for {MIGRATION_LOCK_TIMEOUT} s (an upgrade still running?); try again later"
        )
    try:
        yield
    finally:
        # A dead connection has lost the lock with the session already.
        with contextlib.suppress(SQLAlchemyError):
            conn.execute(text("SELECT RELEASE_LOCK(:name)"), {"name": name})


def at_head(engine: Engine) -> bool:
    """True if the database is at :data:`SCHEMA_HEAD`, checked in plain SQL."""
    try:
        with read(engine) as conn:
            rows = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).all()
    except StoreError:
        return False  # no version table yet, or unreachable: the slow path says which
    return [r[0] for r in rows] == [SCHEMA_HEAD]


def upgrade(engine: Engine, revision: str = "head", *, explicit: bool = False) -> None:
    """Migrate to ``revision``; safe when several processes open a store at once.

    Refuses (:class:`ConfigError`) a store whose schema is newer than this
    threadstore knows and, unless ``explicit`` (``threadstore db upgrade``), a
    database that holds other tables but no threadstore schema. Adopts a 0.1
    store's revision from ``alembic_version`` into :data:`VERSION_TABLE`. An
    upgrade interrupted half-way on MySQL/MariaDB (whose DDL is not
    transactional) is completed: every migration step skips what exists.
    """
    if revision == "head" and at_head(engine):
        return
    found = inspect_store(engine)
    if found.state == "newer" or (found.state == "foreign" and not explicit):
        raise ConfigError(found.problem() or found.state)
    from alembic import command  # noqa: PLC0415

    try:
        with write(engine) as conn, _migration_lock(conn, engine.url):
            _adopt_legacy_version(conn)
            command.upgrade(alembic_config(conn), revision)
    except StoreError as exc:
        cause = exc.__cause__
        detail = _short(cause) if isinstance(cause, SQLAlchemyError) else str(exc)
        raise ConfigError(
            f"cannot open database {safe_url(engine.url)}: {mask_secrets(detail)}"
        ) from exc


def _adopt_legacy_version(conn: Connection) -> None:
    """Move a 0.1 store's revision from ``alembic_version`` to :data:`VERSION_TABLE`.

    Also removes an *empty* ``alembic_version`` left next to nothing but
    threadstore's tables: the remains of a 0.1 first upgrade killed half-way.
    """
    tables = set(inspect(conn).get_table_names())
    if VERSION_TABLE in tables or LEGACY_VERSION_TABLE not in tables:
        return
    legacy = _legacy_revision(conn, tables)
    if legacy is not None:
        from alembic import command  # noqa: PLC0415

        command.stamp(alembic_config(conn), legacy)
        conn.execute(
            text(f"DELETE FROM {LEGACY_VERSION_TABLE} WHERE version_num = :rev"), {"rev": legacy}
        )
    left = conn.execute(text(f"SELECT COUNT(*) FROM {LEGACY_VERSION_TABLE}")).scalar()
    others = tables - _threadstore_tables() - {LEGACY_VERSION_TABLE}
    if left == 0 and not others:
        conn.execute(text(f"DROP TABLE {LEGACY_VERSION_TABLE}"))


def downgrade(engine: Engine, revision: str) -> None:
    """Migrate down to ``revision`` (``base`` drops every table)."""
    from alembic import command  # noqa: PLC0415

    with write(engine) as conn, _migration_lock(conn, engine.url):
        _adopt_legacy_version(conn)
        command.downgrade(alembic_config(conn), revision)


# ------------------------------------------------------------------------- store state


@dataclass(frozen=True)
class StoreState:
    """What :func:`inspect_store` found at a database URL.

    ``state`` is one of ``missing`` (no SQLite file), ``empty`` (no tables, or
    only what an interrupted first upgrade of threadstore left), ``foreign``
    (tables, but no threadstore schema: threadstore adds its tables only when
    ``threadstore db upgrade`` is run), ``behind`` (an older schema, or a 0.1
    store's revision still in ``alembic_version``: ``threadstore db upgrade``),
    ``head`` (ready), ``newer`` (a schema this threadstore does not know).
    ``url`` has its password masked.
    """

    url: str
    state: str
    revision: str | None = None

    @property
    def ready(self) -> bool:
        """True when the store can be used as it is (schema at head)."""
        return self.state == "head"

    def problem(self) -> str | None:
        """One line saying what is wrong and what to do; None when ready."""
        check = "check --db / THREADSTORE_DATABASE_URL"
        if self.state == "missing":
            return (f"no threadstore store at {self.url} (no such file): {check}, "
                    "or create it with 'threadstore db upgrade'")
        if self.state == "empty":
            return (f"the database at {self.url} is empty (no threadstore schema): {check}, "
                    "or create the schema with 'threadstore db upgrade'")
        if self.state == "foreign":
            return (f"the database at {self.url} is not a threadstore store: {check}, "
                    "or add threadstore's tables with 'threadstore db upgrade'")
        if self.state == "behind":
            return (f"the store at {self.url} is at schema {self.revision}, this threadstore "
                    f"needs {SCHEMA_HEAD}: run 'threadstore db upgrade'")
        if self.state == "newer":
            return (f"the store at {self.url}: schema {self.revision} is newer than this "
                    f"threadstore ({SCHEMA_HEAD}); use the threadstore release that made it")
        return None


def _threadstore_tables() -> set[str]:
    from .models import metadata  # noqa: PLC0415 - the models are not needed to open a store

    return {*metadata.tables, VERSION_TABLE}


def _interrupted_01(conn: Connection, tables: set[str]) -> bool:
    """An empty ``alembic_version`` next to nothing but threadstore's tables.

    What 0.1's first upgrade left when killed on MySQL/MariaDB: the version table
    and some of the tables, no revision (DDL cannot be rolled back there).
    """
    if LEGACY_VERSION_TABLE not in tables or not tables - {LEGACY_VERSION_TABLE}:
        return False
    if tables - _threadstore_tables() - {LEGACY_VERSION_TABLE}:
        return False
    return not conn.execute(text(f"SELECT COUNT(*) FROM {LEGACY_VERSION_TABLE}")).scalar()


def _known_revisions() -> set[str]:
    from alembic.script import ScriptDirectory  # noqa: PLC0415

    scripts = ScriptDirectory.from_config(alembic_config())
    return {script.revision for script in scripts.walk_revisions()}


def inspect_store(url: str | URL | Engine) -> StoreState:
    """Look at the database at ``url`` without creating, migrating or changing anything.

    A missing SQLite file stays missing (no engine is even made). Raises
    :class:`ConfigError` for a bad URL or a database that cannot be reached.
    """
    if isinstance(url, Engine):
        engine, owned = url, False
    else:
        parsed = _parse(url)
        path = _sqlite_file(parsed)
        if path is not None and not path.exists():
            return StoreState(safe_url(parsed), "missing")
        if path is not None:
            # Read-only, and none of open_engine's pragmas: WAL would write a header
            # into an empty file, or convert somebody else's database.
            uri = f"file:{urllib.parse.quote(str(path.resolve()))}?mode=ro"
            engine = create_engine(
                parsed, creator=lambda: sqlite3.connect(uri, uri=True, check_same_thread=False)
            )
            owned = True
        else:
            engine, owned = open_engine(parsed), True
    shown = safe_url(engine.url)
    try:
        with read(engine) as conn:
            tables = set(inspect(conn).get_table_names())
            revision = current_revision(conn)
            ours = VERSION_TABLE in tables or revision is not None or _interrupted_01(
                conn, tables
            )
            if not ours:
                return StoreState(shown, "foreign" if tables else "empty")
    except StoreError as exc:
        cause = exc.__cause__
        detail = _short(cause) if isinstance(cause, SQLAlchemyError) else str(exc)
        raise ConfigError(f"cannot open database {shown}: {detail}") from exc
    finally:
        if owned:
            engine.dispose()
    if revision is None:
        # Ours, without a revision: a first upgrade that did not finish (MySQL keeps
        # the tables it had made); the next upgrade completes it.
        return StoreState(shown, "empty")
    if revision == SCHEMA_HEAD and VERSION_TABLE in tables:
        return StoreState(shown, "head", revision)
    state = "behind" if revision in _known_revisions() else "newer"
    return StoreState(shown, state, revision)


def _short(exc: SQLAlchemyError) -> str:
    orig = getattr(exc, "orig", None)
    line = str(orig if orig is not None else exc).strip().splitlines()
    return line[0] if line else type(exc).__name__


def insert_ignore(table: Table, dialect: str) -> Insert:
    """``INSERT`` that skips rows whose key exists, in ``dialect``'s own words.

    (``ON CONFLICT DO NOTHING`` on SQLite and PostgreSQL, ``INSERT IGNORE`` on
    MySQL/MariaDB.) The rowcount says whether the row was new.
    """
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert  # noqa: PLC0415

        return pg_insert(table).on_conflict_do_nothing()
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert  # noqa: PLC0415

        return sqlite_insert(table).on_conflict_do_nothing()
    return insert(table).prefix_with("IGNORE")
