"""A 404 is evidence, not proof: no misconfiguration ever drops a local row.

Every path that reads a 404 as "already gone" — the sweep, ``verify --fix``,
``delete_thread`` and the facade's ``Threads.delete`` (which goes through it) — is
pointed at a wrong endpoint (a base URL without ``/api/v1``; a proxy answering 404
to everything, in HTML or in JSON that is not DashScope's) and at a wrong scope
(DashScope's own 404s for a workspace that does not hold our threads). Each must
drop nothing and say which setting is likely wrong. Threads really deleted behind
our back still complete as ``already_gone``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import dashscope
import pytest
from click.testing import CliRunner
from sqlalchemy import select, update

from conftest import API_KEY
from threadstore import DashScopeRemote, ThreadStore, UntrustedNotFound
from threadstore.cli import cli
from threadstore.models import deletions, threads
from threadstore.remote import is_dashscope_error
from threadstore.testing import Emulator

WEEK = timedelta(days=7)


def _backdate(store: ThreadStore, ids: list[str], idle: timedelta = timedelta(days=10)) -> None:
    with store.engine.begin() as conn:
        conn.execute(
            update(threads)
            .where(threads.c.thread_id.in_(ids))
            .values(last_active=datetime.now(timezone.utc) - idle)
        )


def _expired(store: ThreadStore, n: int, *, workspace: str | None = None) -> list[str]:
    ids = [store.create_thread(workspace=workspace).thread_id for _ in range(n)]
    _backdate(store, ids)
    return ids


def _local(store: ThreadStore) -> set[str]:
    with store.engine.connect() as conn:
        return set(conn.execute(select(threads.c.thread_id)).scalars())


def _logged(store: ThreadStore) -> list[str]:
    with store.engine.connect() as conn:
        return list(conn.execute(select(deletions.c.thread_id)).scalars())


# ------------------------------------------------------------------ wrong endpoints


class _Proxy404(BaseHTTPRequestHandler):
    """A proxy or gateway that answers 404 to every request."""

    body: bytes = b"<html><body><h1>404 Not Found</h1></body></html>"
    content_type = "text/html"

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(404)
        self.send_header("Content-Type", self.content_type)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    do_GET = do_POST = do_DELETE = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _JsonProxy404(_Proxy404):
    body = json.dumps({"error": {"code": 404, "message": "Not Found"}}).encode()
    content_type = "application/json"


def _serve(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/api/v1"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(params=["no-api-prefix", "html-proxy", "json-proxy"])
def wrong_endpoint(request: pytest.FixtureRequest, emulator: Emulator) -> Iterator[str]:
    """A base URL whose every thread request meets a 404 that is not DashScope's."""
    if request.param == "no-api-prefix":
        yield emulator.url.removesuffix("/api/v1")
        return
    yield from _serve(_Proxy404 if request.param == "html-proxy" else _JsonProxy404)


def _point_at(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setattr(dashscope, "base_http_api_url", url)
    monkeypatch.setenv("DASHSCOPE_HTTP_BASE_URL", url)


def test_error_shape_is_dashscopes_own() -> None:
    """Only {code, message, request_id} with a code and a request id is DashScope's shape."""
    assert is_dashscope_error({"code": "NotFound", "message": "x", "request_id": "r1"})
    for body in (
        None,
        "<html>404</html>",
        {"error": "not found"},
        {"code": 404, "message": "Not Found", "request_id": "r"},
        {"code": "NotFound", "message": "x"},
        {"code": "", "message": "x", "request_id": "r"},
    ):
        assert not is_dashscope_error(body)


def test_emulator_answers_unknown_routes_like_a_gateway(emulator: Emulator) -> None:
    """Outside /api/v1 the emulator's 404 is a gateway page, not DashScope's JSON."""
    import requests

    answer = requests.delete(
        emulator.url.removesuffix("/api/v1") + "/threads/thread_x",
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=5,
    )
    assert answer.status_code == 404
    assert "json" not in answer.headers["Content-Type"]


def test_sweep_against_a_wrong_endpoint_drops_nothing(
    store: ThreadStore, emulator: Emulator, wrong_endpoint: str
) -> None:
    """Base URL without /api/v1 or a 404-everything proxy: the sweep stops, every row stays."""
    ids = _expired(store, 12)
    store.remote = store.trust.remote = DashScopeRemote(
        api_key=API_KEY, base_url=wrong_endpoint, timeout=5
    )
    with pytest.raises(UntrustedNotFound) as info:
        store.sweep(WEEK, concurrency=4)
    assert "base URL" in str(info.value)
    assert _local(store) == set(ids)
    assert _logged(store) == []
    assert all(emulator.thread_exists(t) for t in ids)
    assert all(t.attempts == 0 for t in store.list_threads())


def test_delete_thread_against_a_wrong_endpoint_keeps_the_row(
    store: ThreadStore, emulator: Emulator, wrong_endpoint: str
) -> None:
    """delete_thread raises UntrustedNotFound and the row stays, unclaimed."""
    keep, tid = (store.create_thread().thread_id for _ in range(2))
    store.remote = store.trust.remote = DashScopeRemote(
        api_key=API_KEY, base_url=wrong_endpoint, timeout=5
    )
    with pytest.raises(UntrustedNotFound):
        store.delete_thread(tid)
    assert _local(store) == {keep, tid}
    store.remote = store.trust.remote = DashScopeRemote(
        api_key=API_KEY, base_url=emulator.url, timeout=5
    )
    store.delete_thread(tid)  # the claim was given back: fixed config, delete works
    assert not emulator.thread_exists(tid)


def test_verify_fix_against_a_wrong_endpoint_fixes_nothing(
    store: ThreadStore, emulator: Emulator, wrong_endpoint: str
) -> None:
    """verify --fix stops with UntrustedNotFound before removing anything."""
    ids = [store.create_thread().thread_id for _ in range(5)]
    store.remote = store.trust.remote = DashScopeRemote(
        api_key=API_KEY, base_url=wrong_endpoint, timeout=5
    )
    with pytest.raises(UntrustedNotFound):
        store.verify(fix=True)
    assert _local(store) == set(ids)


def _cli(db_url: str, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["--db", db_url, *args])
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize("command", [["sweep", "--days", "7"], ["verify", "--fix"]])
def test_cli_against_a_wrong_endpoint_exits_2_naming_the_url(
    store: ThreadStore,
    db_url: str,
    emulator: Emulator,
    wrong_endpoint: str,
    monkeypatch: pytest.MonkeyPatch,
    command: list[str],
) -> None:
    """`sweep` and `verify --fix`: exit 2, one line naming the base URL, every row kept."""
    ids = _expired(store, 6)
    _point_at(monkeypatch, wrong_endpoint)
    code, _, err = _cli(db_url, *command)
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert "base URL" in err
    assert "Traceback" not in err
    assert _local(store) == set(ids)


# ------------------------------------------------------------------ wrong scope


def _misplace(store: ThreadStore, ids: list[str], workspace: str | None) -> None:
    """Make the mirror name another workspace than the one DashScope holds the threads in."""
    with store.engine.begin() as conn:
        conn.execute(
            update(threads).where(threads.c.thread_id.in_(ids)).values(workspace=workspace)
        )


@pytest.mark.parametrize(
    ("created_in", "recorded_as"),
    [("ws-real", "ws-wrong"), ("ws-real", None)],
    ids=["wrong-workspace", "key-of-another-workspace"],
)
def test_sweep_in_a_scope_that_sees_nothing_drops_nothing(
    store: ThreadStore, emulator: Emulator, created_in: str, recorded_as: str | None
) -> None:
    """DashScope's own 404 for every thread of a scope: stop, name key/workspace, keep rows."""
    ids = _expired(store, 30, workspace=created_in)
    live = store.create_thread(workspace=created_in).thread_id
    _misplace(store, [*ids, live], recorded_as)

    with pytest.raises(UntrustedNotFound) as info:
        store.sweep(WEEK, concurrency=4)

    assert info.value.cause == "scope"
    assert "API key or the workspace" in str(info.value)
    assert _local(store) == {*ids, live}
    assert _logged(store) == []
    assert all(emulator.thread_exists(t, created_in) for t in ids)


def test_sweep_with_no_live_thread_stops_at_the_breaker(
    store: ThreadStore, emulator: Emulator
) -> None:
    """No canary to ask: a run of 404s that nothing vouches for stops the sweep early."""
    ids = _expired(store, 130, workspace="ws-real")
    _misplace(store, ids, "ws-wrong")
    with pytest.raises(UntrustedNotFound):
        store.sweep(WEEK, concurrency=2)  # claims 64 at a time
    assert _local(store) == set(ids)
    assert emulator.count("threads.delete") <= 64  # no second batch was claimed


def test_delete_thread_in_a_scope_that_sees_nothing_keeps_the_row(
    store: ThreadStore, emulator: Emulator
) -> None:
    """delete_thread: DashScope's 404, and the canary 404s too: UntrustedNotFound, row kept."""
    ids = [store.create_thread(workspace="ws-real").thread_id for _ in range(3)]
    _misplace(store, ids, "ws-wrong")
    with pytest.raises(UntrustedNotFound) as info:
        store.delete_thread(ids[0])
    assert info.value.workspace == "ws-wrong"
    assert _local(store) == set(ids)
    assert store.get_thread(ids[0]).attempts == 0


def test_verify_fix_in_a_scope_that_sees_nothing_fixes_nothing(
    store: ThreadStore, emulator: Emulator, db_url: str
) -> None:
    """verify --fix: every thread 404s in its recorded workspace: exit 2, nothing removed."""
    ids = [store.create_thread(workspace="ws-real").thread_id for _ in range(4)]
    _misplace(store, ids, "ws-wrong")
    with pytest.raises(UntrustedNotFound):
        store.verify(fix=True)
    code, _, err = _cli(db_url, "verify", "--fix")
    assert code == 2
    assert "workspace" in err
    assert _local(store) == set(ids)


def test_cli_sweep_in_a_wrong_scope_exits_2(
    store: ThreadStore, emulator: Emulator, db_url: str
) -> None:
    """`threadstore sweep`: exit 2 and one line that names the key or workspace."""
    ids = _expired(store, 8, workspace="ws-real")
    _misplace(store, ids, "ws-wrong")
    code, _, err = _cli(db_url, "sweep", "--days", "7")
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert "API key or the workspace" in err
    assert _local(store) == set(ids)


# ------------------------------------------------------------------ genuine 404s


def test_mixed_case_10_of_40_deleted_behind_our_back(
    store: ThreadStore, emulator: Emulator, db_url: str
) -> None:
    """10 of 40 expired threads deleted elsewhere: 10 already gone, 30 deleted, exit 0."""
    ids = _expired(store, 40)
    for tid in ids[:10]:  # the oldest-first sweep meets these first
        assert dashscope.Threads.delete(tid, api_key=API_KEY).status_code == 200
    code, _, err = _cli(db_url, "sweep", "--days", "7", "--concurrency", "4")
    assert code == 0, err
    assert "30 deleted, 10 already gone" in err
    assert _local(store) == set()
    with store.engine.connect() as conn:
        results = sorted(conn.execute(select(deletions.c.remote_result)).scalars())
    assert results == ["already_gone"] * 10 + ["deleted"] * 30


def test_only_vanished_threads_left_are_proven_by_a_live_one(
    store: ThreadStore, emulator: Emulator
) -> None:
    """Every expired thread vanished, none deleted now: a live thread of ours vouches."""
    ids = _expired(store, 5)
    live = store.create_thread().thread_id
    for tid in ids:
        dashscope.Threads.delete(tid, api_key=API_KEY)
    report = store.sweep(WEEK)
    assert (report.deleted, report.already_gone, report.failed) == (0, 5, [])
    assert _local(store) == {live}


def test_verify_fix_removes_genuinely_vanished_threads(store: ThreadStore) -> None:
    """verify --fix still removes threads that vanished while others are found."""
    ids = [store.create_thread().thread_id for _ in range(4)]
    dashscope.Threads.delete(ids[0], api_key=API_KEY)
    report = store.verify(fix=True)
    assert report.missing == [ids[0]]
    assert report.fixed == 1
    assert _local(store) == set(ids[1:])


# ------------------------------------------------------------------ the facade


@pytest.fixture
def facade_url(
    emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    url = f"sqlite:///{tmp_path / 'facade.db'}"
    monkeypatch.setenv("THREADSTORE_DATABASE_URL", url)
    from threadstore import dashscope as facade_module

    yield url
    facade_module.close_stores()


def _facade_threads(facade_url: str) -> set[str]:
    from threadstore.testing import FakeRemote

    with ThreadStore(facade_url, remote=FakeRemote()) as mirror:
        return {t.thread_id for t in mirror.list_threads()}


def test_facade_delete_against_a_wrong_endpoint_keeps_the_row(
    facade_url: str, wrong_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Threads.delete answers the 404 like the SDK would, and the mirror keeps the row."""
    from threadstore.dashscope import Threads

    tid = Threads.create(metadata={"a": "1"}).id
    _point_at(monkeypatch, wrong_endpoint)
    answer = Threads.delete(tid)
    assert answer.status_code == 404
    assert _facade_threads(facade_url) == {tid}


def test_facade_delete_in_a_scope_that_sees_nothing_keeps_the_row(
    facade_url: str, emulator: Emulator
) -> None:
    """Threads.delete with the wrong workspace: DashScope's 404 comes back, the row stays."""
    from threadstore.dashscope import Threads

    tid = Threads.create(metadata={"a": "1"}, workspace="ws-real").id
    with ThreadStore(facade_url, remote=DashScopeRemote()) as mirror:
        _misplace(mirror, [tid], "ws-wrong")
    answer = Threads.delete(tid, workspace="ws-wrong")
    assert answer.status_code == 404
    assert _facade_threads(facade_url) == {tid}
    assert emulator.thread_exists(tid, "ws-real")
