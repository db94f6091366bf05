"""The ``threadstore`` command line: thin wrappers over the library.

Each command parses its options, opens the store, calls one library function and
prints: data to stdout, progress and diagnostics to stderr. Errors are one line on
stderr and an exit status — 0 done, 1 some remote work failed and was kept for
retry, 2 bad usage or configuration — never a traceback unless ``-v``.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import click

from . import __version__, db
from .errors import ConfigError, RemoteAuthError, ThreadNotFound, ThreadStoreError
from .store import ThreadStore

F = TypeVar("F", bound=Callable[..., Any])

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

log = logging.getLogger("threadstore")


class Context:
    """What the group's options leave for the commands."""

    def __init__(self, db_url: str | None, verbosity: int) -> None:
        self.db_url = db_url
        self.verbosity = verbosity

    @contextmanager
    def store(self, **kwargs: Any) -> Iterator[ThreadStore]:
        """Open the store named by ``--db`` / ``THREADSTORE_DATABASE_URL``."""
        store = ThreadStore(self.db_url or db.DEFAULT_URL, **kwargs)
        try:
            yield store
        finally:
            store.close()


pass_ctx = click.make_pass_decorator(Context)


def fail(message: str, code: int = EXIT_USAGE) -> None:
    """Print one line on stderr and exit with ``code``."""
    click.echo(f"threadstore: error: {message}", err=True)
    sys.exit(code)


def handle_errors(fn: F) -> F:
    """Turn library errors into one line and an exit code (traceback only with -v)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ThreadStoreError as exc:
            ctx = click.get_current_context(silent=True)
            obj = ctx.find_object(Context) if ctx else None
            if obj is not None and obj.verbosity > 0:
                log.exception("details")
            code = EXIT_USAGE if isinstance(exc, ConfigError | RemoteAuthError) else EXIT_FAILED
            if isinstance(exc, ThreadNotFound):
                code = EXIT_USAGE
            fail(str(exc), code)
        return None

    return wrapper  # type: ignore[return-value]


def _setup_logging(verbosity: int) -> None:
    level = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("threadstore")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog="""\b
Examples:
  threadstore demo                          # the whole lifecycle, offline
  threadstore --db sqlite:///app.db stats
  threadstore sweep --days 7 --dry-run      # what would expire
  threadstore export messages --format csv -o messages.csv
""",
)
@click.option(
    "--db",
    "db_url",
    envvar="THREADSTORE_DATABASE_URL",
    metavar="URL",
    help="Database URL [env THREADSTORE_DATABASE_URL; default sqlite:///threadstore.db].",
)
@click.option("-v", "--verbose", count=True, help="More logging on stderr (-vv: debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors on stderr.")
@click.version_option(__version__, "--version", prog_name="threadstore")
@click.pass_context
def cli(ctx: click.Context, db_url: str | None, verbose: int, quiet: bool) -> None:
    """threadstore: the local memory DashScope's Assistant API lacks.

    Mirrors every thread created through it, deletes idle threads on a TTL
    (remote first, local only once DashScope confirmed), exports the mirror.

    DashScope is reached with the SDK's own DASHSCOPE_API_KEY and
    DASHSCOPE_HTTP_BASE_URL. Exit status: 0 done, 1 some remote deletions
    failed and were kept for retry, 2 bad usage or configuration.
    """
    verbosity = -1 if quiet else verbose
    _setup_logging(verbosity)
    ctx.obj = Context(db_url, verbosity)


# ---------------------------------------------------------------------------- db


@cli.group("db")
def db_group() -> None:
    """Schema migrations (Alembic) of the store.

    \b
    Examples:
      threadstore --db sqlite:///app.db db upgrade
      threadstore --db postgresql://app@dbhost/threads db current
    """


def _engine(obj: Context) -> Any:
    return db.open_engine(obj.db_url or db.DEFAULT_URL)


@db_group.command("upgrade")
@click.argument("revision", default="head")
@pass_ctx
@handle_errors
def db_upgrade(obj: Context, revision: str) -> None:
    """Migrate the schema to REVISION (default: head)."""
    engine = _engine(obj)
    try:
        db.upgrade(engine, revision)
        with db.read(engine) as conn:
            click.echo(f"at revision {db.current_revision(conn)}", err=True)
    finally:
        engine.dispose()


@db_group.command("downgrade")
@click.argument("revision")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_ctx
@handle_errors
def db_downgrade(obj: Context, revision: str, yes: bool) -> None:
    """Migrate the schema down to REVISION ('base' drops every table: data is lost).

    \b
    Example:
      threadstore db downgrade base --yes
    """
    if not yes and not click.confirm(f"Downgrade to {revision}? Data may be lost", err=True):
        fail("aborted", EXIT_USAGE)
    engine = _engine(obj)
    try:
        db.downgrade(engine, revision)
    finally:
        engine.dispose()


@db_group.command("current")
@pass_ctx
@handle_errors
def db_current(obj: Context) -> None:
    """Print the schema revision of the database (empty line if none)."""
    engine = _engine(obj)
    try:
        with db.read(engine) as conn:
            click.echo(db.current_revision(conn) or "")
    except Exception as exc:
        raise ConfigError(f"cannot open database {db.safe_url(engine.url)}: {exc}") from exc
    finally:
        engine.dispose()


@db_group.command("check")
@pass_ctx
@handle_errors
def db_check(obj: Context) -> None:
    """Exit 0 if the schema is at head, 1 if a migration is pending."""
    engine = _engine(obj)
    try:
        with db.read(engine) as conn:
            current = db.current_revision(conn)
    finally:
        engine.dispose()
    head = db.head_revision()
    if current == head:
        click.echo(f"up to date ({head})", err=True)
        return
    click.echo(f"schema at {current or 'nothing'}, head is {head}: run 'threadstore db upgrade'",
               err=True)
    sys.exit(EXIT_FAILED)


# ---------------------------------------------------------------- demo, emulator


@cli.command("demo")
@click.option(
    "--db",
    "demo_db",
    metavar="URL",
    help="An EMPTY database to run in instead of a temporary SQLite file "
    "(e.g. postgresql://…); the demo deletes its threads from it at the end.",
)
@pass_ctx
@handle_errors
def demo_command(obj: Context, demo_db: str | None) -> None:
    """Show the whole lifecycle offline: create, message, run, expire, sweep, export.

    Starts the bundled DashScope emulator on 127.0.0.1 (a random port) and talks
    to it through the real dashscope SDK with a demo key, in a SQLite file in a
    temporary directory. Needs no configuration and no network, and ignores the
    DASHSCOPE_* and THREADSTORE_* variables (a --db given before 'demo' is used).

    \b
    Examples:
      threadstore demo
      threadstore demo --db postgresql://postgres@127.0.0.1/scratch
    """
    from .demo import run_demo

    ctx = click.get_current_context()
    group = ctx.find_root()
    from_command_line = group.get_parameter_source("db_url") == click.core.ParameterSource.COMMANDLINE
    url = demo_db or (obj.db_url if from_command_line else None)
    run_demo(url, out=click.echo)


@cli.command("emulator")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=0,
    show_default=True,
    help="TCP port on 127.0.0.1; 0 picks a free one.",
)
@click.option(
    "--latency",
    "latency_ms",
    type=click.FloatRange(min=0),
    default=0.0,
    metavar="MS",
    help="Milliseconds added to every API request.",
)
@click.option(
    "--api-key",
    default="test-key",
    show_default=True,
    metavar="KEY",
    help="The key clients must send; '' accepts any key.",
)
@pass_ctx
def emulator_command(obj: Context, port: int, latency_ms: float, api_key: str) -> None:
    """Serve the DashScope emulator for offline tests of your own app; Ctrl-C stops it.

    Prints the lines that point the dashscope SDK at it (stdout), then serves
    until interrupted. State is in memory. Faults, latency and run outcomes are
    steered over HTTP under /_emulator/ (see threadstore.testing.emulator), e.g.
    POST /_emulator/faults {"op": "threads.delete", "status": 500, "times": 1}.

    \b
    Examples:
      threadstore emulator --port 8089 --latency 50
      export DASHSCOPE_HTTP_BASE_URL=http://127.0.0.1:8089/api/v1 DASHSCOPE_API_KEY=test-key
      threadstore sweep --days 7      # in another shell: sweeps against the emulator
    """
    import signal
    import threading

    from .testing.emulator import Emulator

    emu = Emulator(api_key=api_key or None, port=port, latency=latency_ms / 1000.0,
                   verbose=obj.verbosity > 0)
    try:
        emu.start()
    except OSError as exc:
        fail(f"cannot listen on 127.0.0.1:{port}: {exc.strerror or exc}")
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        # SIGTERM (docker stop, systemd, kill) ends it as cleanly as Ctrl-C.
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    click.echo(f"export DASHSCOPE_HTTP_BASE_URL={emu.url}")
    click.echo(f"export DASHSCOPE_API_KEY={api_key or 'any-key'}")
    sys.stdout.flush()
    admin = emu.url.rsplit("/api/", 1)[0] + "/_emulator/"
    click.echo(f"DashScope emulator on {emu.url} (admin: {admin}); Ctrl-C to stop", err=True)
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        emu.stop()
    click.echo("emulator stopped", err=True)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="threadstore")


if __name__ == "__main__":  # pragma: no cover
    main()
