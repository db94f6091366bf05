"""`ThreadStore.verify` / `threadstore verify`: noticing threads that vanished from DashScope."""

from __future__ import annotations

import json
import logging
from datetime import timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from threadstore import ConfigError, RemoteAuthError, ThreadNotFound, ThreadStore
from threadstore.cli import cli
from threadstore.models import deletions
from threadstore.sweep import claim_thread
from threadstore.testing import Emulator
from threadstore.verify import VerifyReport


def _make(store: ThreadStore, n: int) -> list[str]:
    ids = []
    for i in range(n):
        t = store.create_thread(user_id=f"u{i}", messages=[{"role": "user", "content": f"m{i}"}])
        ids.append(t.thread_id)
    return ids


def _vanish(store: ThreadStore, *ids: str) -> None:
    """Delete threads on DashScope without telling the store."""
    for tid in ids:
        store.remote.delete_thread(tid)


def test_verify_reports_threads_deleted_behind_the_stores_back(store: ThreadStore) -> None:
    """Threads deleted remotely by someone else are reported as missing; nothing changes."""
    ids = _make(store, 4)
    _vanish(store, ids[0], ids[2])
    report = store.verify()
    assert isinstance(report, VerifyReport)
    assert report.checked == 4
    assert report.missing == sorted([ids[0], ids[2]])
    assert report.fixed == 0
    assert report.errors == []
    assert not report.clean
    assert {t.thread_id for t in store.list_threads()} == set(ids)


def test_verify_on_a_clean_mirror_is_clean(store: ThreadStore) -> None:
    """A mirror that matches DashScope verifies clean and changes nothing."""
    ids = _make(store, 3)
    report = store.verify(concurrency=2, max_rps=1000)
    assert report.checked == 3
    assert report.missing == []
    assert report.clean
    assert report.to_dict()["missing"] == []
    assert {t.thread_id for t in store.list_threads()} == set(ids)


def test_verify_fix_removes_vanished_rows_and_logs_them(store: ThreadStore) -> None:
    """With fix, vanished threads leave the mirror and the deletions log says why."""
    ids = _make(store, 3)
    store.add_message(ids[1], "second")
    _vanish(store, ids[1])
    report = store.verify(fix=True)
    assert report.missing == [ids[1]]
    assert report.fixed == 1
    assert report.clean
    with pytest.raises(ThreadNotFound):
        store.get_thread(ids[1])
    assert [m.content for m in store.messages(ids[0])] == ["m0"]
    with store.engine.connect() as conn:
        logged = conn.execute(select(deletions)).mappings().all()
    assert [(r["thread_id"], r["reason"], r["remote_result"], r["message_count"])
            for r in logged] == [(ids[1], "vanished", "already_gone", 2)]
    assert store.verify().clean


@pytest.mark.parametrize("status", [500, 429, 503])
def test_verify_transient_errors_are_unknown_and_never_fixed(
    store: ThreadStore, emulator: Emulator, status: int
) -> None:
    """A thread DashScope could not answer for is reported unknown and kept, even with fix."""
    ids = _make(store, 3)
    _vanish(store, ids[0])
    emulator.fail("threads.retrieve", status=status, thread_id=ids[0])
    report = store.verify(fix=True)
    assert report.missing == []
    assert report.fixed == 0
    assert [tid for tid, _ in report.errors] == [ids[0]]
    assert str(status) in report.errors[0][1]
    assert not report.clean
    assert store.get_thread(ids[0]).thread_id == ids[0]


def test_verify_stops_at_once_on_an_auth_error_and_fixes_nothing(
    store: ThreadStore, emulator: Emulator
) -> None:
    """A refused API key stops verify after one call; vanished rows stay."""
    ids = _make(store, 8)
    _vanish(store, ids[3])
    emulator.reset_counters()
    emulator.fail("threads.retrieve", status=401)
    with pytest.raises(RemoteAuthError):
        store.verify(fix=True, concurrency=1)
    assert emulator.count("threads.retrieve") == 1
    assert len(store.list_threads()) == 8


def test_verify_fix_leaves_a_thread_that_a_deleter_holds(store: ThreadStore) -> None:
    """A vanished thread claimed by a sweeper is left for the sweeper to finish."""
    ids = _make(store, 2)
    with store.engine.begin() as conn:
        assert claim_thread(conn, ids[0], owner="other-sweeper", lease=timedelta(minutes=5))
    _vanish(store, ids[0])
    report = store.verify(fix=True)
    assert report.missing == [ids[0]]
    assert report.fixed == 0
    with store.engine.connect() as conn:
        assert conn.execute(select(deletions)).first() is None


def test_verify_logs_what_it_did(store: ThreadStore, caplog: pytest.LogCaptureFixture) -> None:
    """Each verify run logs a summary line and each removal at INFO (shown with -v)."""
    ids = _make(store, 2)
    _vanish(store, ids[0])
    with caplog.at_level(logging.INFO, logger="threadstore"):
        store.verify(fix=True)
    text = caplog.text
    assert "checked 2 threads" in text
    assert "1 missing on DashScope, 1 fixed" in text
    assert f"removed the local rows of vanished thread {ids[0]}" in text


@pytest.mark.parametrize(
    "options",
    [{"concurrency": 0}, {"concurrency": -3}, {"max_rps": 0}, {"max_rps": -1.0}, {"limit": -1}],
)
def test_verify_refuses_bad_options(fake_store: ThreadStore, options: dict[str, float]) -> None:
    """Nonsense options raise ConfigError before any remote call."""
    fake_store.create_thread(user_id="u")
    with pytest.raises(ConfigError):
        fake_store.verify(**options)  # type: ignore[arg-type]


def test_verify_limit_checks_only_the_first_threads(fake_store: ThreadStore) -> None:
    """limit=N checks N threads."""
    for _ in range(5):
        fake_store.create_thread()
    assert fake_store.verify(limit=2).checked == 2
    assert fake_store.verify().checked == 5


# ---------------------------------------------------------------------------- CLI


def _run(db_url: str, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["--db", db_url, "verify", *args])
    return result.exit_code, result.stdout, result.stderr


def test_cli_verify_exit_codes_follow_the_drift(
    store: ThreadStore, db_url: str, emulator: Emulator
) -> None:
    """Exit 0 when clean, 1 (ids on stdout) with drift, 0 after --fix fixed it."""
    ids = _make(store, 3)
    code, out, err = _run(db_url)
    assert (code, out) == (0, "")
    assert "checked 3 threads: 0 missing" in err
    _vanish(store, ids[1])
    code, out, err = _run(db_url)
    assert (code, out.split()) == (1, [ids[1]])
    code, out, _ = _run(db_url, "--fix", "--json", "--concurrency", "2", "--max-rps", "500")
    assert code == 0
    assert json.loads(out)["fixed"] == 1
    assert json.loads(out)["missing"] == [ids[1]]
    assert _run(db_url)[0] == 0


def test_cli_verify_unknown_threads_exit_1(
    store: ThreadStore, db_url: str, emulator: Emulator
) -> None:
    """Threads that could not be checked make the exit status 1 and are named on stderr."""
    ids = _make(store, 2)
    emulator.fail("threads.retrieve", status=500, thread_id=ids[0])
    code, out, _ = _run(db_url, "--json")
    assert code == 1
    assert json.loads(out)["errors"][0]["thread_id"] == ids[0]
    code, out, err = _run(db_url)
    assert (code, out) == (1, "")
    assert f"unknown: {ids[0]}: threads.retrieve" in err


def test_cli_verify_auth_error_is_one_line_exit_2(
    store: ThreadStore, db_url: str, emulator: Emulator
) -> None:
    """A refused key gives exit 2 and one line on stderr, no traceback."""
    _make(store, 2)
    emulator.fail("threads.retrieve", status=401)
    code, out, err = _run(db_url)
    assert code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert "HTTP 401" in err
    assert "Traceback" not in err
