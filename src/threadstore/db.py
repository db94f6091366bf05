"""Engines, transactions and migrations.

* :func:`open_engine` turns a URL into an engine with the right settings per
  backend and refuses bad URLs with :class:`~threadstore.errors.ConfigError`.
  SQLite files get WAL, ``synchronous=NORMAL``, a 30 s busy timeout, foreign
  keys, mode 0600 when threadstore creates them, and write transactions that
  begin ``IMMEDIATE`` (so two writers queue on the busy timeout instead of one of
  them failing with "database is locked" when it upgrades a read lock).
* :func:`write` opens the one transaction of a write operation; :func:`read` a
  read-only one (``DEFERRED`` on SQLite, so exports never block writers).
* :func:`upgrade` migrates to head under a cross-process lock; it is what
  ``ThreadStore(url)`` calls on open. :func:`inspect_store` looks at a database
  without creating or changing anything (read-only commands open through it).
  The Alembic scripts ship inside the wheel (``threadstore/_migrations``) and
  live in ``migrations/`` in a checkout.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import stat
import urllib.parse
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.pool import StaticPool
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ClauseElement

from .errors import ConfigError, StoreError

__all__ = [
    "DEFAULT_URL",
    "Prepared",
    "StoreState",
    "current_revision",
    "head_revision",
    "inspect_store",
    "mask_secrets",
    "open_engine",
    "read",
    "safe_url",
    "upgrade",
    "walk_index",
    "write",
]

DEFAULT_URL = "sqlite:///threadstore.db"
# The newest migration's revision. Opening a store compares the database with
# it in plain SQL, so the common case never imports Alembic (a test keeps this
# equal to the scripts' head).
SCHEMA_HEAD = "0003"
_BEGIN_OPTION = "threadstore_sqlite_begin"


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
    try:
        engine = create_engine(parsed, **kwargs)
    except (NoSuchModuleError, ImportError) as exc:
        extra = {"postgresql": "postgres"}.get(backend)
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


@contextlib.contextmanager
def write_fast(engine: Engine) -> Iterator[DriverTx]:
    """:func:`write` for a few fixed statements on a hot path (a create's two steps).

    The same transaction (``BEGIN IMMEDIATE`` on SQLite), errors and rollback, but
    statements compiled once per engine and run on the driver's cursor: SQLAlchemy's
    per-execution work costs more than SQLite's insert and commit together. Only
    for module-level statements (cached by identity). With statement listeners on
    the engine (or ``echo``), it is :func:`write` itself, so that they see everything.
    """
    if engine.echo or engine.dispatch.before_cursor_execute or engine.dispatch.after_cursor_execute:
        # Someone watches the statements (logging, tracing, a test's fault
        # injection): they go through SQLAlchemy, where the watchers see them.
        with write(engine) as conn:
            yield _WatchedTx(conn)
        return
    dbapi_error = engine.dialect.loaded_dbapi.Error
    try:
        raw = engine.raw_connection()
    except SQLAlchemyError as exc:
        raise StoreError(f"database write failed: {_short(exc)}") from exc
    try:
        cursor = raw.cursor()
        if engine.dialect.name == "sqlite":
            cursor.execute("BEGIN IMMEDIATE")
        yield DriverTx(engine, cursor)
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
    finally:
        raw.close()


@contextlib.contextmanager
def read(engine: Engine) -> Iterator[Connection]:
    """One read transaction that never takes SQLite's write lock; errors as in :func:`write`."""
    try:
        with engine.connect() as raw:
            conn = raw.execution_options(**{_BEGIN_OPTION: "DEFERRED"})
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
    """The revision the database is at, or None for an empty database."""
    from alembic.runtime.migration import MigrationContext  # noqa: PLC0415

    rev: str | None = MigrationContext.configure(conn).get_current_revision()
    return rev


def _lock_for_migration(conn: Connection) -> None:
    backend = conn.dialect.name
    if backend == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(7462711)"))
    elif backend in ("mysql", "mariadb"):
        conn.execute(text("SELECT GET_LOCK('threadstore_migrate', 60)"))
    # SQLite: the write transaction's BEGIN IMMEDIATE is the lock.


def at_head(engine: Engine) -> bool:
    """True if the database is at :data:`SCHEMA_HEAD`, checked in plain SQL."""
    try:
        with read(engine) as conn:
            rows = conn.execute(text("SELECT version_num FROM alembic_version")).all()
    except StoreError:
        return False  # no version table yet, or unreachable: the slow path says which
    return [r[0] for r in rows] == [SCHEMA_HEAD]


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate to ``revision``; safe when several processes open a store at once."""
    if revision == "head" and at_head(engine):
        return
    from alembic import command  # noqa: PLC0415

    try:
        if revision == "head":
            with read(engine) as conn:
                if current_revision(conn) == head_revision():
                    return
        with write(engine) as conn:
            _lock_for_migration(conn)
            command.upgrade(alembic_config(conn), revision)
    except StoreError as exc:
        cause = exc.__cause__
        detail = _short(cause) if isinstance(cause, SQLAlchemyError) else str(exc)
        raise ConfigError(
            f"cannot open database {safe_url(engine.url)}: {mask_secrets(detail)}"
        ) from exc


def downgrade(engine: Engine, revision: str) -> None:
    """Migrate down to ``revision`` (``base`` drops every table)."""
    from alembic import command  # noqa: PLC0415

    with write(engine) as conn:
        _lock_for_migration(conn)
        command.downgrade(alembic_config(conn), revision)


# ------------------------------------------------------------------------- store state


@dataclass(frozen=True)
class StoreState:
    """What :func:`inspect_store` found at a database URL.

    ``state`` is one of ``missing`` (no SQLite file), ``empty`` (no tables),
    ``foreign`` (tables, but no threadstore schema), ``behind`` (an older schema:
    ``threadstore db upgrade``), ``head`` (ready), ``newer`` (a schema this
    threadstore does not know). ``url`` has its password masked.
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
            return (f"the store at {self.url} is at schema {self.revision}, newer than this "
                    f"threadstore knows ({SCHEMA_HEAD}): upgrade threadstore")
        return None


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
            if not tables:
                return StoreState(shown, "empty")
            if "alembic_version" not in tables:
                return StoreState(shown, "foreign")
            revision = current_revision(conn)
    except StoreError as exc:
        cause = exc.__cause__
        detail = _short(cause) if isinstance(cause, SQLAlchemyError) else str(exc)
        raise ConfigError(f"cannot open database {shown}: {detail}") from exc
    finally:
        if owned:
            engine.dispose()
    if revision is None:
        return StoreState(shown, "empty")
    if revision == SCHEMA_HEAD:
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
