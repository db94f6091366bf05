"""The ``threadstore`` command line: thin wrappers over the library.

Each command parses its options, opens the store, calls one library function and
prints: data to stdout, progress and diagnostics to stderr. Errors are one line on
stderr and an exit status — 0 done, 1 some remote work failed and was kept for
retry, 2 bad usage or configuration — never a traceback unless ``-v``.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import math
import os
import re
import select
import signal
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from . import db
from .codec import jsonable, to_json
from .errors import ConfigError, RemoteAuthError, ThreadNotFound, ThreadStoreError
from .models import EXPORT_FORMATS, KIND_NAMES
from .remote import DashScopeRemote
from .store import ThreadStore
from .sweep import DEFAULT_CONCURRENCY, DEFAULT_LEASE, SweepOptions, check_lease

__all__ = ["cli", "main"]

F = TypeVar("F", bound=Callable[..., Any])

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
# What a shell reports for a command killed by SIGPIPE: the reader of stdout left.
EXIT_SIGPIPE = 128 + 13

log = logging.getLogger("threadstore")


class Context:
    """What the group's options leave for the commands."""

    def __init__(self, db_url: str | None, verbosity: int) -> None:
        self.db_url = db_url
        self.verbosity = verbosity

    @property
    def url(self) -> str:
        return self.db_url if self.db_url is not None else db.DEFAULT_URL

    @contextmanager
    def store(self, *, read_only: bool = False, **kwargs: Any) -> Iterator[ThreadStore]:
        """Open the store named by ``--db`` / ``THREADSTORE_DATABASE_URL``.

        ``read_only``: a command that only reads never creates or migrates a store
        (a mistyped path in a crontab must not look like "no data"): exit 2 with
        one line naming the URL unless a store at the current schema is there.
        """
        store = ThreadStore(self.url, create=not read_only, **kwargs)
        try:
            yield store
        finally:
            store.close()


pass_ctx = click.make_pass_decorator(Context)


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from . import __version__  # noqa: PLC0415 - reads package metadata: only when asked

    click.echo(f"threadstore, version {__version__}")
    ctx.exit()


class Number(click.ParamType):  # type: ignore[type-arg]  # generic only in click >= 8.2
    """A finite number within bounds: NaN, infinities and out-of-range values are
    usage errors (exit 2, one line), never a traceback further down.

    click's own ``FloatRange`` lets ``nan`` through (every comparison with it is
    false) and ``inf``/``1e18`` overflow dates later; every numeric option of
    every command uses this type instead.
    """

    def __init__(
        self,
        low: float,
        high: float,
        *,
        integer: bool = False,
        low_open: bool = False,
        unit: str = "",
    ) -> None:
        self.low, self.high, self.integer, self.low_open, self.unit = (
            low, high, integer, low_open, unit
        )
        self.name = "integer" if integer else "number"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, bool):
            self.fail(f"{value!r} is not a number", param, ctx)
        try:
            number: float = (
                value if isinstance(value, int | float) else
                int(str(value).strip()) if self.integer else float(str(value).strip())
            )
        except (TypeError, ValueError):
            kind = "an integer" if self.integer else "a number"
            self.fail(f"{str(value)[:40]!r} is not {kind}", param, ctx)
        if self.integer and isinstance(number, float):
            if not number.is_integer():
                self.fail(f"{value!r} is not an integer", param, ctx)
            number = int(number)
        if not math.isfinite(number):
            self.fail(f"{str(value)[:40]!r} is not a finite number", param, ctx)
        too_low = number <= self.low if self.low_open else number < self.low
        if too_low or number > self.high:
            lower = f"more than {self.low:g}" if self.low_open else f"at least {self.low:g}"
            self.fail(
                f"{str(value)[:40]} is out of range: {lower} and at most {self.high:g}{self.unit}",
                param,
                ctx,
            )
        return number


class Text(click.ParamType):  # type: ignore[type-arg]  # generic only in click >= 8.2
    """Text every backend can store as it is: valid UTF-8 (no bytes that were not
    UTF-8 in argv, which arrive as lone surrogates), no NUL, at most ``limit``
    characters, and not empty unless ``empty`` is allowed."""

    name = "text"

    def __init__(self, limit: int, *, empty: bool = False) -> None:
        self.limit = limit
        self.empty = empty

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        text = str(value)
        if not text.strip() and not self.empty:
            self.fail("must not be empty", param, ctx)
        if "\x00" in text:
            self.fail("must not contain NUL (\\x00)", param, ctx)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            self.fail("is not valid UTF-8 text", param, ctx)
        if len(text) > self.limit:
            self.fail(f"is longer than {self.limit} characters", param, ctx)
        return text


NAME_TEXT = Text(255)
URL_TEXT = Text(4096)


def positive(high: float, unit: str = "") -> Number:
    """A finite number above 0 and at most ``high``."""
    return Number(0, high, low_open=True, unit=unit)


def count(low: int, high: int) -> Number:
    """An integer from ``low`` to ``high``."""
    return Number(low, high, integer=True)


MAX_DAYS = 36500.0  # a century: the longest idle time any option accepts
MAX_TIMEOUT = 3600.0


def _db_after_command(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is not None:
        ctx.find_object(Context).db_url = value  # type: ignore[union-attr]


def _metrics_path(
    _ctx: click.Context, _param: click.Parameter, value: str | None
) -> str | None:
    if value is None:
        return None
    path = Path(value).expanduser()
    if path.is_dir():
        raise click.BadParameter(f"{value!r} is a directory")
    if not path.parent.is_dir():
        raise click.BadParameter(f"no directory {str(path.parent)!r}")
    return str(path)


def metrics_file_option(fn: F) -> F:
    """``--metrics-file PATH``: Prometheus text format, written atomically."""
    option = click.option(
        "--metrics-file",
        metavar="PATH",
        callback=_metrics_path,
        help="Write Prometheus metrics to PATH (atomically; for node_exporter's "
        "textfile collector).",
    )
    return option(fn)


def write_metrics(store: ThreadStore, path: str, older_than: timedelta) -> None:
    """Snapshot the store's stats into the metrics file at ``path``."""
    from . import metrics  # noqa: PLC0415 - prometheus_client only when asked for

    metrics.write_textfile(path, store.stats(older_than=older_than))


def db_option(fn: F) -> F:
    """``--db URL`` after the command name too (``threadstore stats --db URL``).

    Given there, it wins over ``threadstore --db`` and THREADSTORE_DATABASE_URL.
    """
    option = click.option(
        "--db",
        "db_url",
        type=URL_TEXT,
        metavar="URL",
        expose_value=False,
        callback=_db_after_command,
        help="Database URL (as 'threadstore --db URL'; wins over it).",
    )
    return option(fn)


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """Print one line on stderr and exit with ``code``."""
    click.echo(f"threadstore: error: {message}", err=True)
    sys.exit(code)


def _reader_gone(stream: Any) -> bool:
    """True if ``stream`` is a pipe or socket whose reading end has been closed."""
    try:
        fd = stream.fileno()
        mode = os.fstat(fd).st_mode
    except (OSError, ValueError, AttributeError):
        return False  # not a real file (an in-process test), or already closed
    if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)) or not hasattr(select, "poll"):
        return False
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))


def _stdout_closed() -> NoReturn:
    """End quietly the way a shell tool killed by SIGPIPE does: no message, status 141.

    stdout is pointed at /dev/null first, so that the interpreter's final flush of
    whatever is still buffered does not fail (and complain) a second time.
    """
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    sys.exit(EXIT_SIGPIPE)


def finish_stdout() -> None:
    """Flush stdout and make sure its reader took everything; else end as SIGPIPE would.

    A command calls this before it prints a success line about data it wrote to
    stdout: once the reader of a pipe is gone (``| head``), part of it was lost,
    and whatever the write calls returned, the command must not say "done".
    """
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _stdout_closed()
    if _reader_gone(sys.stdout):
        _stdout_closed()


def confirm_destructive(yes: bool, question: str) -> None:
    """Ask ``question`` on a terminal; without one, refuse unless ``--yes`` was given.

    A prompt nobody can answer (cron, CI, a pipe) would read end-of-file and abort
    in a confusing way; a script must say ``--yes`` to mean it.
    """
    if yes:
        return
    if not sys.stdin.isatty():
        fail("refusing to do this without a terminal to confirm on: pass --yes", EXIT_USAGE)
    if not click.confirm(question, err=True):
        fail("aborted", EXIT_USAGE)


def _exit_code(exc: ThreadStoreError) -> int:
    """Bad usage, configuration or key: 2; a failure worth retrying: 1."""
    if isinstance(exc, ConfigError | RemoteAuthError | ThreadNotFound):
        return EXIT_USAGE
    return EXIT_FAILED


_BEARER = re.compile(r"(Bearer\s+)[^\s'\",}]+", re.IGNORECASE)


class _RedactingFormatter(logging.Formatter):
    """Formats a record, then masks ``Bearer …`` tokens and the DashScope API key.

    Applied to the whole formatted line (message, arguments and traceback), so a
    request or error that some library logs can never put the key on stderr.
    """

    def format(self, record: logging.LogRecord) -> str:
        text = _BEARER.sub(r"\1***", super().format(record))
        key = os.environ.get("DASHSCOPE_API_KEY", "").strip()
        if len(key) >= 8:  # a shorter "key" would mask ordinary words
            text = text.replace(key, "***")
        return text


def _setup_logging(verbosity: int) -> Callable[[], None]:
    """Log threadstore's records to stderr; returns a function that undoes it.

    The undo runs when the command ends, so a program or test that invokes the
    CLI in-process gets its ``threadstore`` logger back as it was.
    """
    level = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("threadstore")
    saved = (root.handlers[:], root.level, root.propagate)

    def restore() -> None:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        root.propagate = saved[2]

    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    return restore


# click >= 8.2 raises this for a group called without a command; 8.1 exits 0 itself.
_NO_ARGS_IS_HELP: tuple[type[click.UsageError], ...] = tuple(
    getattr(click.exceptions, name) for name in ("NoArgsIsHelpError",)
    if hasattr(click.exceptions, name)
)


class _OneLineErrors(click.Group):
    """The top-level group: every error is one line on stderr and an exit status.

    Library errors (:class:`ThreadStoreError`) map to 2 for usage,
    configuration or a refused key and to 1 otherwise; usage errors are exit 2.

    Click would print the usage block, a hint and the error (four lines); a
    script's log wants one. Any unexpected exception is one line too, with the
    traceback only at ``-v``.
    """

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            rv = self._one_line_main(args, prog_name, complete_var, **extra)
        finally:
            # Also on an error exit: a reader that left early makes it 141, quietly.
            finish_stdout()
        sys.exit(rv)

    def _one_line_main(
        self,
        args: Sequence[str] | None,
        prog_name: str | None,
        complete_var: str | None,
        **extra: Any,
    ) -> int:
        try:
            rv = super().main(args, prog_name, complete_var, False, **extra)
        except _NO_ARGS_IS_HELP as exc:  # a bare group: its help, as click shows it
            exc.show()
            sys.exit(exc.exit_code)
        except click.UsageError as exc:
            hint = f" (see '{exc.ctx.command_path} -h')" if exc.ctx is not None else ""
            fail(" ".join(exc.format_message().split()) + hint, EXIT_USAGE)
        except click.ClickException as exc:
            fail(" ".join(exc.format_message().split()), exc.exit_code)
        except click.Abort:
            fail("aborted", EXIT_FAILED)
        except BrokenPipeError:  # raised while click itself wrote to stdout (help, version)
            _stdout_closed()
        return rv if isinstance(rv, int) else EXIT_OK

    def invoke(self, ctx: click.Context) -> Any:
        # The last line of defence of "never a traceback": a bug, or a foreign
        # error nobody translated, is one line too (the traceback at -v). Caught
        # here, while the command's logging set-up is still in place.
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except BrokenPipeError:
            # stdout's reader went away (`| head`): the SIGPIPE convention, not an error.
            _stdout_closed()
        except ThreadStoreError as exc:
            if log.isEnabledFor(logging.INFO):
                log.exception("details")
            fail(str(exc), _exit_code(exc))
            raise  # unreachable: fail() exits
        except Exception as exc:
            if log.isEnabledFor(logging.INFO):
                log.exception("unexpected error")
            first = (str(exc).strip().splitlines() or [""])[0]
            fail(f"unexpected {type(exc).__name__}: {first} (-v shows the traceback)", EXIT_FAILED)
            raise  # unreachable: fail() exits


@click.group(
    cls=_OneLineErrors,
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
    type=URL_TEXT,
    metavar="URL",
    help="Database URL [env THREADSTORE_DATABASE_URL; default sqlite:///threadstore.db].",
)
@click.option("-v", "--verbose", count=True, help="More logging on stderr (-vv: debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors on stderr.")
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_version,
    help="Show the version and exit.",
)
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
    ctx.call_on_close(_setup_logging(verbosity))
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
    return db.open_engine(obj.url)


@db_group.command("upgrade")
@click.argument("revision", default="head", type=Text(64))
@db_option
@pass_ctx
def db_upgrade(obj: Context, revision: str) -> None:
    """Migrate the schema to REVISION (default: head).

    Opening a store migrates it too; run this to migrate ahead of a deploy.

    \b
    Examples:
      threadstore --db sqlite:///app.db db upgrade
      THREADSTORE_DATABASE_URL=postgresql://app@dbhost/threads threadstore db upgrade
    """
    engine = _engine(obj)
    try:
        db.upgrade(engine, revision, explicit=True)
        with db.read(engine) as conn:
            click.echo(f"at revision {db.current_revision(conn)}", err=True)
    finally:
        engine.dispose()


@db_group.command("downgrade")
@click.argument("revision", type=Text(64))
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@db_option
@pass_ctx
def db_downgrade(obj: Context, revision: str, yes: bool) -> None:
    """Migrate the schema down to REVISION ('base' drops every table: data is lost).

    \b
    Example:
      threadstore db downgrade base --yes
    """
    confirm_destructive(yes, f"Downgrade to {revision}? Data may be lost")
    engine = _engine(obj)
    try:
        db.downgrade(engine, revision)
    finally:
        engine.dispose()


@db_group.command("current")
@db_option
@pass_ctx
def db_current(obj: Context) -> None:
    """Print the schema revision of the store (creates nothing).

    A missing SQLite file, an empty database or one without threadstore's schema
    is exit 2 with one line that says so.

    \b
    Example:
      threadstore --db sqlite:///app.db db current
    """
    found = db.inspect_store(obj.url)
    if found.revision is None:
        fail(found.problem() or f"no schema revision at {found.url}")
    click.echo(found.revision)


@db_group.command("check")
@db_option
@pass_ctx
def db_check(obj: Context) -> None:
    """Exit 0 if the schema is at head, 1 if a migration is pending (creates nothing).

    Exit 2 when there is no store at all (missing file, empty or foreign database).

    \b
    Example:
      threadstore db check || threadstore db upgrade
    """
    found = db.inspect_store(obj.url)
    if found.ready:
        click.echo(f"up to date ({found.revision})", err=True)
        return
    problem = found.problem() or found.state
    if found.revision is None:
        fail(problem)
    click.echo(problem, err=True)
    sys.exit(EXIT_FAILED)


# ---------------------------------------------------------------- demo, emulator


@cli.command("demo")
@click.option(
    "--db",
    "demo_db",
    type=URL_TEXT,
    metavar="URL",
    help="An EMPTY database to run in instead of a temporary SQLite file "
    "(e.g. postgresql://…); the demo deletes its threads from it at the end.",
)
@pass_ctx
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
    # THREADSTORE_DATABASE_URL names the user's real store: only an explicit --db counts.
    source = click.get_current_context().find_root().get_parameter_source("db_url")
    url = demo_db or (obj.db_url if source is click.core.ParameterSource.COMMANDLINE else None)
    if obj.verbosity <= 0:
        # The demo narrates the sweep's outcome itself; its log warnings would repeat it.
        logging.getLogger("threadstore").setLevel(logging.ERROR)
    from .demo import run_demo  # noqa: PLC0415 - lean start-up: only `demo` needs it

    run_demo(url, out=click.echo)


@cli.command("emulator")
@click.option(
    "--port",
    type=count(0, 65535),
    default=0,
    show_default=True,
    help="TCP port on 127.0.0.1; 0 picks a free one.",
)
@click.option(
    "--latency",
    "latency_ms",
    type=Number(0, 60_000, unit=" ms"),
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
    from .testing.emulator import Emulator  # noqa: PLC0415 - lean start-up

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
    if any(os.environ.get(name) for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")):
        # requests would send even loopback traffic through the proxy.
        click.echo('export NO_PROXY="${NO_PROXY:+$NO_PROXY,}127.0.0.1"')
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


# ---------------------------------------------------------------------------- verify


@cli.command("verify")
@click.option("--fix", is_flag=True, help="Remove the local rows of threads that vanished.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@click.option(
    "--concurrency",
    type=count(1, 256),
    default=8,
    show_default=True,
    metavar="N",
    help="Threads checked at once.",
)
@click.option(
    "--max-rps",
    type=positive(1e6),
    default=None,
    metavar="X",
    help="At most X DashScope requests per second.",
)
@db_option
@pass_ctx
def verify_command(
    obj: Context, fix: bool, as_json: bool, concurrency: int, max_rps: float | None
) -> None:
    """Compare the mirror with DashScope: find mirrored threads that no longer exist.

    Retrieves every mirrored thread. Ids that DashScope answers 404 for are
    printed on stdout (one per line); with --fix their local rows are removed
    and logged in the deletions table (reason "vanished"). Threads that could
    not be checked (5xx, 429, timeouts) are reported as unknown and never fixed.

    \b
    Exit status: 0 no drift, or all of it fixed; 1 drift remains or some
    threads could not be checked; 2 bad usage, configuration or API key.

    \b
    Examples:
      threadstore verify
      threadstore verify --fix --max-rps 20
      threadstore verify --json > drift.json
    """
    progress = Progress(obj, "verify", "threads")
    try:
        with obj.store(read_only=True) as store:
            report = store.verify(fix=fix, concurrency=concurrency, max_rps=max_rps,
                                  progress=progress)
    finally:
        progress.close()
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        for thread_id in report.missing:
            click.echo(thread_id)
        if obj.verbosity == 0:  # at -v the log has already given each its line
            for thread_id, error in report.errors:
                click.echo(f"unknown: {thread_id}: {error}", err=True)
        if obj.verbosity >= 0:
            click.echo(
                f"checked {report.checked} threads: {len(report.missing)} missing on DashScope, "
                f"{report.fixed} fixed, {len(report.errors)} unknown ({report.elapsed:.1f} s)",
                err=True,
            )
    if not report.clean:
        sys.exit(EXIT_FAILED)


@db_group.command("rotate-key")
@click.option(
    "--batch-size",
    type=count(1, 1_000_000),
    default=500,
    show_default=True,
    help="Rows re-encrypted per transaction.",
)
@db_option
@pass_ctx
def db_rotate_key(obj: Context, batch_size: int) -> None:
    """Re-encrypt stored messages and metadata with THREADSTORE_ENCRYPTION_KEY.

    Rows written with a key listed in THREADSTORE_ENCRYPTION_OLD_KEYS
    (comma-separated) are re-encrypted with the current key; plain rows of a
    store that had no key before are encrypted. Safe to interrupt and rerun.
    Switch every writer to the new key (keeping the old one in
    THREADSTORE_ENCRYPTION_OLD_KEYS) before rotating; drop the old keys after.

    \b
    Example:
      THREADSTORE_ENCRYPTION_KEY=$NEW THREADSTORE_ENCRYPTION_OLD_KEYS=$OLD \\
        threadstore db rotate-key
    """
    progress = Progress(obj, "rotate-key", "rows")
    try:
        with obj.store() as store:
            rewritten = store.rotate_key(batch_size=batch_size, progress=progress)
    finally:
        progress.close()
    if obj.verbosity >= 0:
        click.echo(f"re-encrypted {rewritten} rows with the current key", err=True)


# ---------------------------------------------------------------------------- sweep, schedule


class _Duration(click.ParamType):  # type: ignore[type-arg]  # generic only in click >= 8.2
    """A duration such as ``30s``, ``15m``, ``1h``, ``1d``."""

    name = "DURATION"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, timedelta):
            return value
        try:
            from .schedule import parse_duration  # noqa: PLC0415 - APScheduler only to schedule

            return parse_duration(str(value))
        except ConfigError as exc:
            self.fail(str(exc), param, ctx)


def _older_than(days: float | None, hours: float | None) -> timedelta:
    if (days is None) == (hours is None):
        raise click.UsageError("give exactly one of --days N or --hours N")
    return timedelta(days=days) if days is not None else timedelta(hours=hours or 0)


def _sweep_options(fn: F) -> F:
    """The options that ``sweep`` and ``schedule`` share."""
    for option in reversed(
        [
            click.option("--days", type=positive(MAX_DAYS), metavar="N",
                         help="Expire threads idle for more than N days."),
            click.option("--hours", type=positive(MAX_DAYS * 24), metavar="N",
                         help="Expire threads idle for more than N hours."),
            click.option("--limit", type=count(1, 2**53), default=None, metavar="N",
                         help="Delete at most N threads in one sweep."),
            click.option("--concurrency", type=count(1, 256),
                         default=DEFAULT_CONCURRENCY,
                         metavar="N", show_default=True, help="Remote deletes in flight at once."),
            click.option("--max-rps", type=positive(1e6), default=None, metavar="X",
                         help="At most X DashScope deletes per second."),
            click.option("--lease", "lease_seconds", type=count(1, 86400),
                         default=int(DEFAULT_LEASE.total_seconds()),
                         show_default=True, metavar="SECONDS",
                         help="How long a claimed thread stays reserved for this sweeper; "
                              "a crashed sweeper's threads are retried after it. Must "
                              "exceed twice --timeout."),
            click.option("--timeout", type=positive(MAX_TIMEOUT), default=30.0,
                         show_default=True, metavar="SECONDS",
                         help="Longest wait for one DashScope request."),
            click.option("--archive", type=click.Path(dir_okay=False, writable=True),
                         default=None, metavar="FILE",
                         help="Append each deleted thread, with its messages and runs, "
                              "to FILE as one JSON line."),
            click.option("--intent-days", type=positive(MAX_DAYS),
                         default=7.0, show_default=True, metavar="N",
                         help="Remove rows of creates whose answer was lost ('creating' "
                              "for more than N days); each is logged in deletions."),
        ]
    ):
        fn = option(fn)
    return fn


def _build_sweep_options(parsed: dict[str, Any], **extra: Any) -> SweepOptions:
    """The :class:`SweepOptions` that ``sweep`` and ``schedule`` both run with."""
    return SweepOptions(
        _older_than(parsed["days"], parsed["hours"]),
        limit=parsed["limit"],
        concurrency=parsed["concurrency"],
        max_rps=parsed["max_rps"],
        lease=timedelta(seconds=parsed["lease_seconds"]),
        archive=parsed["archive"],
        intent_age=timedelta(days=parsed["intent_days"]),
        **extra,
    )


PROGRESS_INTERVAL = 10.0
"""Seconds between progress lines off a terminal (with -v); tests lower it."""


class Progress:
    """Progress of long work on stderr, from ``progress(done, total)`` callbacks.

    On a terminal a tqdm bar (count, rate, ETA; gone when the work ends). Off a
    terminal, with ``-v``, a line about every :data:`PROGRESS_INTERVAL` seconds,
    printed from a callback or, if the work stalls, from a ticker thread, so a log
    shows a long run is alive. Otherwise (``-q``, or no ``-v`` in a pipe) nothing.
    """

    def __init__(self, obj: Context, label: str, unit: str, *, enabled: bool = True) -> None:
        self.label = label
        self.unit = unit
        self.done = 0
        self.total: int | None = None
        self._bar: Any = None
        self._lock = threading.Lock()
        self._started = self._last = time.monotonic()
        self._stop: threading.Event | None = None
        if not enabled or obj.verbosity < 0:
            return
        if sys.stderr.isatty():
            from tqdm import tqdm  # noqa: PLC0415 - only on a terminal

            self._bar = tqdm(desc=label, unit=f" {unit}", file=sys.stderr, leave=False,
                             dynamic_ncols=True, mininterval=0.25, unit_scale=True)
        elif obj.verbosity > 0:
            self._stop = threading.Event()
            ticker = threading.Thread(target=self._tick, name="threadstore-progress",
                                      daemon=True)
            ticker.start()

    @property
    def shown(self) -> bool:
        """True if this progress is drawn or printed at all (worth a total's cost)."""
        return self._bar is not None or self._stop is not None

    def __call__(self, done: int, total: int | None = None) -> None:
        with self._lock:
            self.done, self.total = done, total
            if self._bar is not None:
                if total is not None and self._bar.total != total:
                    self._bar.total = total
                self._bar.update(done - self._bar.n)
            elif self._stop is not None:
                self._line_if_due()

    def _line_if_due(self) -> None:
        now = time.monotonic()
        if now - self._last < PROGRESS_INTERVAL:
            return
        self._last = now
        elapsed = max(now - self._started, 1e-9)
        rate = self.done / elapsed
        text = f"{self.label}: {self.done:,}"
        if self.total:
            text += f"/{self.total:,} {self.unit} ({100 * self.done / self.total:.0f}%"
        else:
            text += f" {self.unit} ("
        text += f"{', ' if self.total else ''}{rate:,.1f}/s"
        if self.total and rate > 0 and self.done < self.total:
            text += f", ETA {_span(timedelta(seconds=int((self.total - self.done) / rate)))}"
        click.echo(text + ")", err=True)

    def _tick(self) -> None:
        assert self._stop is not None  # noqa: S101 - set before the thread starts
        while not self._stop.wait(max(PROGRESS_INTERVAL, 0.5)):
            with self._lock:
                self._line_if_due()

    def close(self) -> None:
        """End the bar or the ticker (call when the work ends, however it ends)."""
        with self._lock:
            if self._bar is not None:
                self._bar.close()
                self._bar = None
            if self._stop is not None:
                self._stop.set()


@cli.command(
    "sweep",
    epilog="""\b
Examples:
  threadstore sweep --days 7 --dry-run           # list what would expire
  threadstore sweep --days 30 --archive old.jsonl --json > report.json
  threadstore --db postgresql://app@db/threads sweep --hours 12 --max-rps 20
""",
)
@_sweep_options
@click.option("--dry-run", is_flag=True, help="Only list (stdout) what would be deleted.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@metrics_file_option
@db_option
@pass_ctx
def sweep_command(
    obj: Context, /, dry_run: bool, as_json: bool, metrics_file: str | None, **sweep: Any
) -> None:
    """Delete threads idle longer than --days/--hours (or their own TTL).

    Each expired thread is deleted on DashScope first; its local row, messages
    and runs go only once the delete is confirmed (or DashScope says 404).
    Pinned threads never expire. A failed delete is kept, with a backoff, for
    the next sweep. Several sweepers may run at once against one database.

    \b
    Exit status: 0 all expired threads deleted; 1 some deletions failed and
    were kept for retry; 2 bad usage, configuration or API key.
    """
    progress = Progress(obj, "sweep", "threads", enabled=not dry_run)
    timeout = sweep.pop("timeout")
    options = _build_sweep_options(sweep, dry_run=dry_run, progress=progress)
    with obj.store(remote=DashScopeRemote(timeout=timeout)) as store:
        try:
            report = store.sweep(options)
        except BaseException:
            progress.close()
            if metrics_file is not None:  # the failure shows in the metrics too
                with contextlib.suppress(ThreadStoreError):
                    write_metrics(store, metrics_file, options.older_than)
            raise
        progress.close()
        if metrics_file is not None:
            write_metrics(store, metrics_file, options.older_than)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    elif dry_run:
        for thread_id in report.would_delete:
            click.echo(thread_id)
    if obj.verbosity == 0:  # at -v the log has already given each failure its line
        for thread_id, error in report.failed[:20]:
            click.echo(f"kept for retry: {thread_id}: {error}", err=True)
        if len(report.failed) > 20:
            click.echo(f"... and {len(report.failed) - 20} more", err=True)
    if obj.verbosity >= 0:
        click.echo(f"sweep: {report.summary()}", err=True)
    if report.failed:
        sys.exit(EXIT_FAILED)


@cli.command(
    "schedule",
    epilog="""\b
Examples:
  threadstore schedule --days 7 --every 1h
  threadstore --db postgresql://app@db/threads schedule --hours 12 --every 15m --max-rps 20
""",
)
@_sweep_options
@click.option("--every", type=_Duration(), default="1h", show_default=True,
              help="Time between sweeps: 30s, 15m, 1h, 1d.")
@metrics_file_option
@click.option("--metrics-port", type=count(0, 65535), default=None, metavar="N",
              help="Serve Prometheus metrics on http://0.0.0.0:N/metrics (0: a free port).")
@db_option
@pass_ctx
def schedule_command(
    obj: Context,
    /,
    every: timedelta,
    metrics_file: str | None,
    metrics_port: int | None,
    **sweep: Any,
) -> None:
    """Sweep now and then every --every, until Ctrl-C or SIGTERM.

    Each run is logged on stderr. A failed run (DashScope down, a refused key)
    is logged and the schedule goes on. Run it on as many hosts as you like:
    sweepers claim disjoint threads.
    """
    stop = threading.Event()
    timeout = sweep.pop("timeout")
    options = _build_sweep_options(sweep, stop=stop)
    if obj.verbosity >= 0:
        logging.getLogger("threadstore.schedule").setLevel(logging.INFO)
    schedule_log = logging.getLogger("threadstore.schedule")
    older_than = options.older_than
    with obj.store(remote=DashScopeRemote(timeout=timeout)) as store:
        # Refuse bad options now, not in a log line at every run.
        check_lease(options.lease, store.remote)
        from .schedule import run_blocking  # noqa: PLC0415 - APScheduler only to schedule

        def sweep_once() -> Any:
            try:
                return store.sweep(options)
            finally:
                if metrics_file is not None:
                    try:
                        write_metrics(store, metrics_file, older_than)
                    except ThreadStoreError as exc:  # the schedule goes on
                        schedule_log.error("cannot write metrics: %s", exc)

        server = None
        if metrics_port is not None:
            from . import metrics  # noqa: PLC0415 - prometheus_client only when asked for

            server = metrics.serve(metrics_port, lambda: store.stats(older_than=older_than))
            schedule_log.info("serving metrics on http://0.0.0.0:%d/metrics", server.port)
        try:
            run_blocking(sweep_once, every=every, stop=stop)
        finally:
            if server is not None:
                server.close()


# ---------------------------------------------------------------------------- doctor


@cli.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON on stdout.")
@click.option(
    "--max-sweep-age",
    type=_Duration(),
    default="25h",
    show_default=True,
    metavar="DURATION",
    help="Warn when the last successful sweep is older than this (30m, 2h, 1d).",
)
@db_option
@pass_ctx
def doctor_command(obj: Context, as_json: bool, max_sweep_age: timedelta) -> None:
    """Check the installation: database, key, DashScope, last sweep, backlog.

    One line per check on stdout: the database is reachable and at the schema
    head; the encryption key decrypts a stored row; DashScope is reachable,
    accepts the key and answers an unknown thread with its own 404 (one or two
    cheap requests, nothing changed); the last successful sweep is younger than
    --max-sweep-age; failed deletions and lost creates. Creates nothing.

    \b
    Exit status: 0 all good; 1 warnings; 2 something is broken.

    \b
    Examples:
      threadstore doctor
      threadstore doctor --max-sweep-age 3h --json
    """
    from .doctor import diagnose  # noqa: PLC0415 - only this command needs it
    from .remote import DashScopeRemote  # noqa: PLC0415

    remote = DashScopeRemote(timeout=15)
    try:
        report = diagnose(obj.url, remote=remote, max_sweep_age=max_sweep_age)
    finally:
        remote.close()
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    else:
        for check in report.checks:
            click.echo(check.line())
    sys.exit(report.exit_code)


# ---------------------------------------------------------------------------- export, stats, list


class _DateTimeParam(click.ParamType):  # type: ignore[type-arg]  # generic only in click >= 8.2
    """``YYYY-MM-DD`` or full ISO 8601; a value without an offset is UTC."""

    name = "date"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, datetime):
            parsed = value
        else:
            text = str(value).strip()
            if text[-1:] in ("Z", "z"):  # fromisoformat before 3.11 does not take "Z"
                text = text[:-1] + "+00:00"
            try:
                parsed = datetime.fromisoformat(text)
            except ValueError:
                self.fail(
                    f"{value!r} is not a date: use YYYY-MM-DD or ISO 8601 "
                    "(e.g. 2026-01-02T03:04:05Z)",
                    param,
                    ctx,
                )
        if parsed.tzinfo is None or parsed.utcoffset() is None:
            parsed = parsed.replace(tzinfo=timezone.utc)
        try:
            # Compared in UTC downstream: 9999-12-31T23:59:59-23:59 has no UTC form.
            parsed.astimezone(timezone.utc)
        except OverflowError:
            self.fail(f"{str(value)[:40]!r} is out of range once in UTC", param, ctx)
        return parsed


DATETIME = _DateTimeParam()
LIST_COUNT_CAP = 10_000
"""``list`` counts the threads past its --limit up to this many, so the hint stays cheap."""


def _when(value: datetime | None) -> str:
    """A timestamp for tables: UTC, to the second."""
    if value is None:
        return "-"
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def _span(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0 and seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    for line in (headers, *rows):
        click.echo("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())


@cli.command("export")
@click.argument(
    "table", type=click.Choice(KIND_NAMES), default="threads", required=False
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(EXPORT_FORMATS),
    default="jsonl",
    show_default=True,
    help="Output format (parquet needs pip install 'threadstore[parquet]').",
)
@click.option(
    "-o",
    "--output",
    default="-",
    metavar="FILE|-",
    help="Write to FILE (a regular file is replaced only once complete; a FIFO or "
    "device is written through; a read-only file is refused); '-' is stdout (the default).",
)
@click.option("--since", type=DATETIME, help="From this time on (inclusive); naive = UTC.")
@click.option("--until", type=DATETIME, help="Before this time (exclusive); naive = UTC.")
@click.option("--workspace", type=NAME_TEXT, metavar="W",
              help="Only threads of this DashScope workspace.")
@click.option("--user", "user_id", type=NAME_TEXT, metavar="U", help="Only threads of this user.")
@click.option("--redact", is_flag=True, help="Blank message text and metadata values.")
@db_option
@pass_ctx
def export_command(
    obj: Context,
    table: str,
    fmt: str,
    output: str,
    since: datetime | None,
    until: datetime | None,
    workspace: str | None,
    user_id: str | None,
    redact: bool,
) -> None:
    """Stream TABLE (threads, messages, runs, steps, assistants, deletions or sweeps) out.

    threads has one row per thread with its message and run counts and token
    sums; sweeps is the history of sweeps (outcome, counts, options). --since/
    --until filter on last_active (threads), created_at (messages, runs),
    deleted_at (deletions) or started_at (sweeps); dates are YYYY-MM-DD or ISO
    8601. Memory stays flat however many rows; a progress bar on a terminal (a
    line every ~10 s with -v otherwise), a summary line at the end.

    \b
    Examples:
      threadstore export messages --format csv -o messages.csv
      threadstore export threads --since 2026-01-01 --user u1 | jq .
      threadstore export messages --format parquet --redact -o messages.parquet
      threadstore export sweeps --since 2026-01-01 --format csv
    """
    from .export import ExportOptions  # noqa: PLC0415 - only `export` loads the exporter

    options = ExportOptions(
        table=table, fmt=fmt, since=since, until=until, workspace=workspace,
        user_id=user_id, redact=redact,
    )
    to_stdout = output == "-"
    if to_stdout and fmt == "parquet" and sys.stdout.isatty():
        fail("parquet is binary: refusing to write it to a terminal (use -o FILE or redirect)")
    target: Any = output
    if to_stdout:
        target = sys.stdout.buffer if fmt == "parquet" else sys.stdout
    # No bar over rows that scroll past on the same terminal.
    progress = Progress(obj, f"export {table}", "rows",
                        enabled=not (to_stdout and sys.stdout.isatty()))

    where = "stdout" if to_stdout else output
    try:
        with obj.store(read_only=True) as store:
            # A total (one COUNT) only when progress is shown: it gives the bar its ETA.
            total = store.count_export(options) if progress.shown else None
            progress(0, total)
            rows = store.export(
                target, options, progress=lambda done: progress(done, total)
            )
        if to_stdout:
            target.flush()
            # A reader that left early (`| head -c`) may have lost rows without
            # any write failing: never report a truncated export as done.
            finish_stdout()
    except BrokenPipeError:
        _stdout_closed()
    except OSError as exc:
        fail(f"cannot write the export to {where}: {exc.strerror or exc}", EXIT_FAILED)
    finally:
        progress.close()
    if obj.verbosity >= 0:
        click.echo(f"exported {rows:,} {table} to {where}", err=True)


@cli.command("stats")
@click.option("--json", "as_json", is_flag=True, help="Print JSON with stable keys on stdout.")
@click.option(
    "--days",
    type=positive(MAX_DAYS),
    default=7.0,
    show_default=True,
    help="Idle days after which a thread counts as expired (as sweep --days).",
)
@metrics_file_option
@db_option
@pass_ctx
def stats_command(obj: Context, as_json: bool, days: float, metrics_file: str | None) -> None:
    """Counts to check before and after a sweep, or for a monitor to scrape.

    Threads (total, active, expired and waiting for a sweep, pinned, being
    deleted, being created), failed deletions waiting for a retry (with the
    oldest error and the earliest retry time), messages, runs, token sums,
    and deletions in the last day and week.

    \b
    The last sweep and the last successful one (with its age) come from the
    sweep history. --metrics-file writes the same numbers in Prometheus text
    format (see README "Operating threadstore").

    \b
    Examples:
      threadstore stats
      threadstore stats --days 30 --json
      threadstore stats --metrics-file /var/lib/node_exporter/threadstore.prom > /dev/null
    """
    with obj.store(read_only=True) as store:
        stats = store.stats(older_than=timedelta(days=days))
    if metrics_file is not None:
        from . import metrics  # noqa: PLC0415 - prometheus_client only when asked for

        metrics.write_textfile(metrics_file, stats)
    data = stats.to_dict()
    if as_json:
        click.echo(json.dumps(data, indent=2, ensure_ascii=False))
        return
    width = max(len(k) for k in data)
    for key, value in data.items():
        if isinstance(value, dict):
            shown = ", ".join(f"{k} {v:,}" for k, v in value.items()) or "-"
        else:
            shown = "-" if value is None else f"{value:,}" if isinstance(value, int) else str(value)
        click.echo(f"{key.ljust(width)}  {shown}")


@cli.command("list")
@click.option("--user", "user_id", type=NAME_TEXT, metavar="U", help="Only threads of this user.")
@click.option("--workspace", type=NAME_TEXT, metavar="W",
              help="Only threads of this DashScope workspace.")
@click.option(
    "--inactive-days",
    type=Number(0, MAX_DAYS),
    default=None,
    help="Only threads idle for more than this many days.",
)
@click.option(
    "--limit", type=count(1, 1_000_000), default=50, show_default=True, help="At most N threads."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (one array) on stdout.")
@db_option
@pass_ctx
def list_command(
    obj: Context,
    user_id: str | None,
    workspace: str | None,
    inactive_days: float | None,
    limit: int,
    as_json: bool,
) -> None:
    """List mirrored threads, most recently active first.

    \b
    Examples:
      threadstore list --user u1
      threadstore list --inactive-days 30 --limit 200
    """
    inactive = timedelta(days=inactive_days) if inactive_days is not None else None
    filters: dict[str, Any] = {"user_id": user_id, "workspace": workspace,
                               "inactive_for": inactive}
    more = 0
    with obj.store(read_only=True) as store:
        # One row past the limit tells whether there are more, at no extra cost;
        # only then are the rest counted, and never more than LIST_COUNT_CAP of them.
        found = store.list_threads(**filters, limit=limit + 1)
        if len(found) > limit:
            found = found[:limit]
            more = store.count_threads(**filters, at_most=limit + LIST_COUNT_CAP) - limit
        counts = store.thread_counts([t.thread_id for t in found])
    if as_json:
        items = [
            {**jsonable(t), "message_count": counts[t.thread_id].messages,
             "run_count": counts[t.thread_id].runs}
            for t in found
        ]
        click.echo(to_json(items, indent=True))
    elif not found:
        if obj.verbosity >= 0:
            click.echo("no threads match", err=True)
    else:
        rows = [
            [
                t.thread_id,
                t.user_id or "-",
                _when(t.last_active),
                str(counts[t.thread_id].messages),
                "pinned" if t.pinned else f"ttl {_span(t.ttl)}" if t.ttl else "-",
            ]
            for t in found
        ]
        _table(["THREAD ID", "USER", "LAST ACTIVE (UTC)", "MESSAGES", "PIN/TTL"], rows)
    if more and obj.verbosity >= 0:
        finish_stdout()  # the rows first, then the hint, when both go to one terminal
        plus = "+" if more >= LIST_COUNT_CAP else ""
        click.echo(f"{more:,}{plus} more; use --limit N to see more than {limit:,}", err=True)


@cli.command("show")
@click.argument("thread_id", type=Text(64))
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
@db_option
@pass_ctx
def show_command(obj: Context, thread_id: str, as_json: bool) -> None:
    """Show a mirrored thread with its messages and runs.

    \b
    Examples:
      threadstore show thread_0123abcd
      threadstore show thread_0123abcd --json | jq '.messages[].content'
    """
    with obj.store(read_only=True) as store:
        thread = store.get_thread(thread_id)
        children = store.children(thread_id)
    if as_json:
        click.echo(to_json({"thread": thread, **children}, indent=True))
        return
    items, done = children.pop("messages"), children.pop("runs")
    fields = [
        ("thread", thread.thread_id),
        ("user", thread.user_id or "-"),
        ("workspace", thread.workspace or "-"),
        ("created", _when(thread.created_at)),
        ("last active", _when(thread.last_active)),
        ("pinned", "yes" if thread.pinned else "no"),
        ("ttl", _span(thread.ttl) if thread.ttl else "-"),
        ("metadata", json.dumps(thread.metadata, ensure_ascii=False)),
    ]
    if thread.attempts:
        fields += [
            ("delete attempts", str(thread.attempts)),
            ("last error", thread.last_error or "-"),
            ("next attempt", _when(thread.next_attempt_at)),
        ]
    for key, value in fields:
        click.echo(f"{key:<16}{value}")
    click.echo(f"\nmessages ({len(items)}):")
    for m in items:
        text = m.content.replace("\n", "\n" + " " * 6)
        click.echo(f"  {_when(m.created_at)} {m.role}: {text}")
    click.echo(f"\nruns ({len(done)}):")
    for r in done:
        tokens = (
            f" tokens {r.prompt_tokens}+{r.completion_tokens}={r.total_tokens}"
            if r.total_tokens is not None
            else ""
        )
        error = f" error: {r.last_error}" if r.last_error else ""
        click.echo(
            f"  {_when(r.created_at)} {r.run_id} {r.status} {r.assistant_id or '-'} "
            f"{r.model or '-'}{tokens}{error}"
        )
    for name, records in children.items():  # kinds without a layout of their own
        click.echo(f"\n{name} ({len(records)}):")
        for record in records:
            click.echo(f"  {to_json(record)}")


def main() -> None:
    """Console-script entry point: run the command, then end the process at once.

    Once the command is done — its output flushed, its store closed, the exit
    status decided — there is nothing left for the interpreter's own teardown
    (tens of milliseconds freeing every module's objects) to do but to delay a
    cron job or a pipeline. So the atexit handlers run (logging's flush among
    them), stdout and stderr are flushed, and the process ends with
    :func:`os._exit`. Only from the main thread, with no other non-daemon thread
    alive, and with no profiler, tracer or debugger attached (``python -m
    cProfile``, pyinstrument, pdb report or stop after the program returns);
    otherwise, or for a non-numeric exit status, the usual :class:`SystemExit`
    and interpreter exit.

    Code after ``main()`` therefore does not run: to run a command in process and
    go on, call ``cli.main(args)`` (it raises :class:`SystemExit`) or use click's
    ``CliRunner``.
    """
    try:
        cli(prog_name="threadstore")
    except SystemExit as exc:
        code = 0 if exc.code is None else exc.code
        if not isinstance(code, int) or not _alone() or _observed():
            raise
        _end_process(code)


def _alone() -> bool:
    """True in the main thread when no other non-daemon thread is alive.

    The interpreter would wait for such a thread before exiting; so do we, by
    taking the ordinary exit.
    """
    main_thread = threading.main_thread()
    return threading.current_thread() is main_thread and not any(
        t is not main_thread and not t.daemon and t.is_alive() for t in threading.enumerate()
    )


def _observed() -> bool:
    """True under a profiler, tracer or debugger, which has work to do once we return."""
    return sys.getprofile() is not None or sys.gettrace() is not None


def _end_process(code: int) -> NoReturn:
    """What the interpreter does at exit that matters here, then ``os._exit(code)``."""
    atexit._run_exitfuncs()  # logging.shutdown, coverage, users' handlers: as at exit
    try:
        for out in (sys.stdout, sys.__stdout__):  # what the handlers may have printed
            if out is not None and not out.closed:
                out.flush()
    except BrokenPipeError:  # the reader left: the SIGPIPE convention, quietly
        code = EXIT_SIGPIPE
    except OSError as exc:  # e.g. a full disk under `> file`: never a silent loss
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.write(f"threadstore: error: cannot write to stdout: {exc}\n")
        code = code or EXIT_FAILED
    for err in (sys.stderr, sys.__stderr__):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            err.flush()  # type: ignore[union-attr]
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    main()
