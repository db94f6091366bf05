"""The front door: help texts, the public API list, ``python -m``, the demo, the emulator."""

from __future__ import annotations

import csv
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import metadata, version
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, func, select

import threadstore
from threadstore import DashScopeRemote, ThreadStore
from threadstore.cli import cli
from threadstore.demo import run_demo
from threadstore.models import deletions, threads
from threadstore.testing import Emulator, FakeRemote

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _walk(
    command: click.Command, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    yield path, command
    if isinstance(command, click.Group):
        for name, sub in sorted(command.commands.items()):
            yield from _walk(sub, (*path, name))


COMMANDS = list(_walk(cli))


def _id(path: tuple[str, ...]) -> str:
    return " ".join(path) or "threadstore"


def _section(heading: str) -> str:
    """The README text under ``## heading`` up to the next level-2 heading."""
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", README, re.S | re.M)
    assert match, f"README has no '## {heading}' section"
    return match.group(1)


# ------------------------------------------------------------------------ help


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[_id(p) for p, _ in COMMANDS])
def test_every_command_explains_itself_with_an_example(
    path: tuple[str, ...], command: click.Command
) -> None:
    """`threadstore [COMMAND] --help` describes the command and every option, with an example."""
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert (command.help or "").strip(), f"{_id(path)} has no help text"
    assert "Example" in result.output, f"{_id(path)} --help shows no example"
    for param in command.params:
        if isinstance(param, click.Option) and not param.hidden:
            assert (param.help or "").strip(), f"{_id(path)} {param.opts[0]} has no help text"


def test_readme_cli_section_names_every_command_and_option() -> None:
    """README's command-line section mentions every command and every long option."""
    section = _section("Command line")
    missing = []
    for path, command in COMMANDS:
        if path and not re.search(rf"\b{re.escape(path[-1])}\b", section):
            missing.append(_id(path))
        for param in command.params:
            if isinstance(param, click.Option) and not param.hidden:
                longs = [o for o in param.opts + param.secondary_opts if o.startswith("--")]
                names = longs or param.opts
                if not any(name in section for name in names):
                    missing.append(f"{_id(path)} {names[0]}")
    assert not missing, f"README's 'Command line' section lacks: {missing}"


# ------------------------------------------------------------------------ public API


def test_public_names_are_sorted_resolve_and_match_the_readme() -> None:
    """`threadstore.__all__` is sorted, every name imports, and README lists exactly these."""
    names = threadstore.__all__
    assert names == sorted(names)
    for name in names:
        assert getattr(threadstore, name) is not None, name
    block = re.search(r"<!-- public-api -->(.*?)<!-- /public-api -->", README, re.S)
    assert block, "README lacks the <!-- public-api --> list"
    assert re.findall(r"`(\w+)`", block.group(1)) == names


def test_version_comes_from_package_metadata() -> None:
    """`python -m threadstore --version` prints the installed distribution's version."""
    done = subprocess.run(
        [sys.executable, "-m", "threadstore", "--version"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"threadstore, version {version('threadstore')}"
    assert threadstore.__version__ == version("threadstore")


def test_readme_commands_match_ci_and_extras() -> None:
    """README's test command is the one CI runs, and it documents every extra."""
    assert "python -m pytest -q" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert ".venv/bin/python -m pytest -q" in README
    assert ".venv/bin/threadstore demo" in README
    extras = metadata("threadstore").get_all("Provides-Extra") or []
    assert {"postgres", "parquet"} <= set(extras)
    for extra in extras:
        assert f"`{extra}`" in README or f"[{extra}]" in README, extra


def test_readme_python_examples_run(
    emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The quickstart and facade snippets in README run as printed (against the emulator)."""
    from threadstore.dashscope import close_stores

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("THREADSTORE_DATABASE_URL", f"sqlite:///{tmp_path / 'facade.db'}")
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    assert len(blocks) >= 2
    try:
        for number, block in enumerate(blocks):
            code = compile(block.replace("asst_…", "asst_readme"), f"README block {number}", "exec")
            exec(code, {})  # noqa: S102 - our own README, run to prove it is accurate
    finally:
        close_stores()
    with (tmp_path / "messages.csv").open(newline="", encoding="utf-8") as fh:
        header, *rows = list(csv.reader(fh))
    assert header[:4] == ["message_id", "thread_id", "role", "content"]
    assert [row[3] for row in rows] == ["hi", "I was charged twice", "Echo: I was charged twice"]


# ------------------------------------------------------------------------ demo


def test_demo_runs_offline_and_ignores_the_users_configuration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`threadstore demo` exits 0, sweeps (failure kept, then retried) and leaves the env alone."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("THREADSTORE_DATABASE_URL", f"sqlite:///{tmp_path / 'mine.db'}")
    monkeypatch.setenv("THREADSTORE_ENCRYPTION_KEY", "not-a-fernet-key")
    monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-users-real-key")
    monkeypatch.setenv("DASHSCOPE_HTTP_BASE_URL", "http://127.0.0.1:9/api/v1")
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    before = dict(os.environ)

    result = CliRunner().invoke(cli, ["demo"])

    assert result.exit_code == 0, result.output
    out = result.output
    assert "DELETE→500 → local row KEPT: attempts=1" in out
    assert "DELETE→500, DELETE→200 → local row deleted" in out
    assert re.search(r"^8\. Export", out, re.M)
    assert out.count("\n") <= 70
    assert list(tmp_path.iterdir()) == []  # no mine.db, no stray files
    assert dict(os.environ) == before


def test_demo_in_a_named_database_leaves_it_empty(db_url: str) -> None:
    """`threadstore demo --db URL` works on SQLite and PostgreSQL and removes its threads."""
    lines: list[str] = []
    summary = run_demo(db_url, out=lines.append)
    assert (summary.created, summary.deleted, len(summary.retried)) == (5, 3, 1)
    engine = create_engine(db_url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(threads)).scalar_one() == 0
            assert conn.execute(select(func.count()).select_from(deletions)).scalar_one() == 5
    finally:
        engine.dispose()


def test_demo_uses_a_db_given_on_the_command_line(tmp_path: Path) -> None:
    """`threadstore --db URL demo` runs in that database (only the env variable is ignored)."""
    url = f"sqlite:///{tmp_path / 'chosen.db'}"
    result = CliRunner().invoke(cli, ["--db", url, "demo"])
    assert result.exit_code == 0, result.output
    with ThreadStore(url, remote=FakeRemote()) as store:
        assert store.stats().deletions_total == 5
        assert store.list_threads() == []


def test_demo_refuses_a_database_that_holds_threads(sqlite_url: str) -> None:
    """The demo will not sweep someone's data: a non-empty --db is a usage error, untouched."""
    with ThreadStore(sqlite_url, remote=FakeRemote()) as store:
        kept = store.create_thread(user_id="u1")
    result = CliRunner().invoke(cli, ["demo", "--db", sqlite_url])
    assert result.exit_code == 2
    assert "needs an empty database" in result.output
    assert "Traceback" not in result.output
    with ThreadStore(sqlite_url, remote=FakeRemote()) as store:
        assert store.get_thread(kept.thread_id).user_id == "u1"


def test_demo_with_an_unreachable_database_masks_its_password() -> None:
    """`demo --db` naming a dead server is one line, exit 2, and the password stays hidden."""
    result = CliRunner().invoke(cli, ["demo", "--db", "postgresql://app:s3cret@127.0.0.1:9/x"])
    assert result.exit_code == 2
    assert "cannot open database" in result.output
    assert "s3cret" not in result.output
    assert "Traceback" not in result.output


# ------------------------------------------------------------------------ emulator


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_emulator_command_serves_the_sdk_until_stopped(stop: signal.Signals) -> None:
    """`threadstore emulator` prints the export lines, serves the SDK, stops cleanly (exit 0)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "threadstore", "emulator", "--port", "0", "--api-key", "k-1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline().strip()
        second = proc.stdout.readline().strip()
        match = re.fullmatch(r"export DASHSCOPE_HTTP_BASE_URL=(http://127[.]0[.]0[.]1:\d+/api/v1)",
                             first)
        assert match, first
        assert second == "export DASHSCOPE_API_KEY=k-1"
        remote = DashScopeRemote(api_key="k-1", base_url=match.group(1), timeout=5)
        try:
            created = remote.create_thread(metadata={"from": "test"})
            assert remote.retrieve_thread(created.id).metadata == {"from": "test"}
        finally:
            remote.close()
        proc.send_signal(stop)
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "emulator stopped" in err
    assert "Traceback" not in err


def test_emulator_command_on_a_busy_port_is_a_usage_error() -> None:
    """A port already in use gives one line on stderr and exit 2, not a traceback."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "threadstore", "emulator", "--port", str(port)],
            capture_output=True, text=True, timeout=30, check=False,
        )
    assert done.returncode == 2
    assert done.stderr.startswith(f"threadstore: error: cannot listen on 127.0.0.1:{port}")
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    "args",
    [["--port", "70000"], ["--latency", "-5"], ["--port", "x"]],
    ids=["port-out-of-range", "negative-latency", "port-not-a-number"],
)
def test_emulator_command_rejects_bad_options(args: list[str]) -> None:
    """Bad `threadstore emulator` options are a one-line usage error with exit 2."""
    result = CliRunner().invoke(cli, ["emulator", *args])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
