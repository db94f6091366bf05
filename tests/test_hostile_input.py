"""Hostile input over every option of every command, and over the library's methods.

Every numeric option uses the shared validated ``Number`` type and every free-text
option the ``Text`` type, so an option added later gets the same refusals: NaN,
infinities, overflowing numbers, non-UTF-8 bytes and NUL are exit 2 with one line.
In the library the same values are a ``ConfigError`` before anything is sent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from threadstore import ConfigError, ThreadStore
from threadstore.cli import Number, Text, cli
from threadstore.testing import FakeRemote

Case = tuple[list[str], click.Parameter]


def _options() -> Iterator[Case]:
    def walk(path: list[str], command: click.Command) -> Iterator[Case]:
        for param in command.params:
            yield path, param
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                yield from walk([*path, name], sub)

    yield from walk([], cli)


ALL = list(_options())
NUMERIC = [(p, o) for p, o in ALL if isinstance(o.type, Number) and isinstance(o, click.Option)]
TEXT = [(p, o) for p, o in ALL if isinstance(o.type, Text) and isinstance(o, click.Option)]


def _id(case: tuple[list[str], click.Parameter]) -> str:
    path, param = case
    return " ".join([*path, param.opts[0]])


def test_no_option_uses_clicks_own_number_types() -> None:
    """click's FloatRange lets 'nan' through; every numeric option must use Number."""
    plain = (click.types.FloatParamType, click.types.IntParamType)
    offenders = [
        _id(case)
        for case in ALL
        if isinstance(case[1].type, plain) and not getattr(case[1], "count", False)  # -v -v
    ]
    assert offenders == []


@pytest.fixture
def prepared(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 's.db'}"
    with ThreadStore(url, remote=FakeRemote()) as store:
        store.create_thread(user_id="u1")
    return url


def _invoke(prepared: str, path: list[str], option: str, value: str) -> click.testing.Result:
    args = ["--db", prepared, *path, option, value]
    if path and path[-1] in ("sweep", "schedule") and option not in ("--days", "--hours"):
        args += ["--days", "7"]
    return CliRunner().invoke(cli, args)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e18", "99999999999999999999", "x"])
@pytest.mark.parametrize("case", NUMERIC, ids=[_id(c) for c in NUMERIC])
def test_every_numeric_option_refuses_hostile_numbers(
    prepared: str, case: tuple[list[str], click.Parameter], value: str
) -> None:
    path, param = case
    result = _invoke(prepared, path, param.opts[0], value)
    assert result.exit_code == 2, result.output
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("value", ["\udcff", "a\x00b", "w" * 5000])
@pytest.mark.parametrize("case", TEXT, ids=[_id(c) for c in TEXT])
def test_every_text_option_refuses_hostile_text(
    prepared: str, case: tuple[list[str], click.Parameter], value: str
) -> None:
    path, param = case
    result = _invoke(prepared, path, param.opts[0], value)
    assert result.exit_code == 2, result.output
    assert len(result.stderr.strip().splitlines()) == 1


# ------------------------------------------------------------------ the library

HUGE = timedelta(days=10**8)
CALLS: list[tuple[str, Callable[[ThreadStore, str], Any]]] = [
    ("create_thread ttl huge", lambda s, t: s.create_thread(ttl=HUGE)),
    ("create_thread workspace 256", lambda s, t: s.create_thread(workspace="w" * 256)),
    ("create_thread user not utf8", lambda s, t: s.create_thread(user_id="\udcff")),
    ("create_thread user not str", lambda s, t: s.create_thread(user_id=5)),
    ("adopt workspace not utf8", lambda s, t: s.adopt("thread_x", workspace="\udcff")),
    ("adopt ttl huge", lambda s, t: s.adopt("thread_x", ttl=HUGE)),
    ("set_ttl huge", lambda s, t: s.set_ttl(t, HUGE)),
    ("set_ttl negative", lambda s, t: s.set_ttl(t, timedelta(seconds=-1))),
    ("list_threads limit huge", lambda s, t: s.list_threads(limit=10**30)),
    ("list_threads limit float", lambda s, t: s.list_threads(limit=1.5)),
    ("list_threads inactive huge", lambda s, t: s.list_threads(inactive_for=HUGE)),
    ("list_threads workspace 256", lambda s, t: s.list_threads(workspace="w" * 256)),
    ("sweep older_than huge", lambda s, t: s.sweep(HUGE)),
    ("sweep max_rps nan", lambda s, t: s.sweep(timedelta(days=7), max_rps=float("nan"))),
    ("sweep max_rps inf", lambda s, t: s.sweep(timedelta(days=7), max_rps=float("inf"))),
    ("sweep lease huge", lambda s, t: s.sweep(timedelta(days=7), lease=HUGE)),
    ("sweep retry_base nan", lambda s, t: s.sweep(timedelta(days=7), retry_base=float("nan"))),
    ("sweep limit huge", lambda s, t: s.sweep(timedelta(days=7), limit=10**30)),
    ("touch naive", lambda s, t: s.touch(t, at=datetime(2020, 1, 1))),
    ("add_message nul", lambda s, t: s.add_message(t, "a\x00b")),
    ("add_message role", lambda s, t: s.add_message(t, "x", role="system")),
    ("start_sweeper lease short", lambda s, t: s.start_sweeper(
        timedelta(days=7), lease=timedelta(seconds=1))),
]


@pytest.mark.parametrize(("name", "call"), CALLS, ids=[c[0] for c in CALLS])
def test_library_refuses_hostile_input_before_anything_is_sent(
    tmp_path: Path, name: str, call: Callable[[ThreadStore, str], Any]
) -> None:
    """ConfigError, and DashScope saw no request: nothing created, nothing deleted."""
    remote = FakeRemote()
    remote.timeout = 30  # type: ignore[attr-defined]  # as DashScopeRemote's default
    with ThreadStore(f"sqlite:///{tmp_path / 's.db'}", remote=remote) as store:
        tid = store.create_thread().thread_id
        store.touch(tid, at=datetime.now(timezone.utc))
        sent = len(remote.calls)
        with pytest.raises(ConfigError):
            call(store, tid)
        assert len(remote.calls) == sent, f"{name} reached DashScope"


@pytest.mark.parametrize("url", ["", "   "])
def test_empty_database_url_is_refused(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ThreadStore('') does not quietly create ./threadstore.db."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError):
        ThreadStore(url, remote=FakeRemote())
    assert list(tmp_path.iterdir()) == []
