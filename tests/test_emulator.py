"""The DashScope emulator, driven through the real ``dashscope`` SDK (never mocked)."""

from __future__ import annotations

import http.client
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from dashscope import Messages, Runs, Steps, Threads

from conftest import API_KEY
from threadstore.testing.emulator import Emulator

# The SDK warns "The Assistants API (dashscope.threads) is deprecated ..." on every call.
pytestmark = pytest.mark.filterwarnings("ignore:The Assistants API:DeprecationWarning")

KEY = API_KEY
AUTH = {"Authorization": f"Bearer {KEY}"}


def test_thread_round_trip(emu: Emulator) -> None:
    """Create (with messages and metadata), retrieve, update and delete a thread."""
    thread = Threads.create(
        messages=[{"role": "user", "content": "hello"}], metadata={"user": "u1"}, api_key=KEY
    )
    assert thread.status_code == 200
    assert thread.id.startswith("thread_")
    assert thread.object == "thread"
    assert thread.metadata == {"user": "u1"}
    assert thread.created_at > 1_600_000_000_000  # milliseconds
    assert [m["content"][0]["text"]["value"] for m in emu.messages_of(thread.id)] == ["hello"]

    got = Threads.retrieve(thread.id, api_key=KEY)
    assert (got.status_code, got.id, got.metadata) == (200, thread.id, {"user": "u1"})

    updated = Threads.update(thread.id, metadata={"user": "u2"}, api_key=KEY)
    assert updated.metadata == {"user": "u2"}  # replaced, not merged

    deleted = Threads.delete(thread.id, api_key=KEY)
    assert (deleted.status_code, deleted.id, deleted.deleted) == (200, thread.id, True)
    assert not emu.thread_exists(thread.id)
    assert Threads.retrieve(thread.id, api_key=KEY).status_code == 404


def test_create_with_empty_body(emu: Emulator) -> None:
    """Threads.create() without arguments sends the JSON string "" and gets an empty thread."""
    thread = Threads.create(api_key=KEY)
    assert thread.status_code == 200
    assert thread.metadata == {}
    assert emu.thread_ids() == [thread.id]
    assert emu.messages_of(thread.id) == []


def test_second_delete_is_404_without_raising(emu: Emulator) -> None:
    """The SDK returns non-200 answers as objects: a second delete has status 404, no id."""
    tid = emu.seed_thread()
    assert Threads.delete(tid, api_key=KEY).deleted is True
    again = Threads.delete(tid, api_key=KEY)
    assert again.status_code == 404
    assert again.code == "NotFound"
    assert again.request_id
    assert not hasattr(again, "deleted")


def test_invalid_metadata_is_400(emu: Emulator) -> None:
    """Metadata that is not an object is rejected with 400 InvalidParameter."""
    tid = emu.seed_thread(metadata={"k": "v"})
    bad = Threads.update(tid, metadata=["not", "a", "dict"], api_key=KEY)  # type: ignore[arg-type]
    assert (bad.status_code, bad.code) == (400, "InvalidParameter")
    assert Threads.retrieve(tid, api_key=KEY).metadata == {"k": "v"}


def test_wrong_or_missing_key_is_401(emu: Emulator) -> None:
    """A wrong bearer key (or none) gets 401 InvalidApiKey and touches no state."""
    bad = Threads.create(metadata={"a": "b"}, api_key="wrong-key")
    assert (bad.status_code, bad.code) == (401, "InvalidApiKey")
    raw = requests.post(f"{emu.url}/threads", json={}, timeout=5)
    assert raw.status_code == 401
    assert raw.json()["code"] == "InvalidApiKey"
    assert emu.thread_ids() == []
    assert emu.count(status=401) == 2


def test_workspace_scoping(emu: Emulator) -> None:
    """A thread created in workspace A is invisible from workspace B and from no workspace."""
    thread = Threads.create(metadata={"w": "a"}, workspace="ws-a", api_key=KEY)
    assert Threads.retrieve(thread.id, workspace="ws-a", api_key=KEY).status_code == 200
    assert Threads.retrieve(thread.id, workspace="ws-b", api_key=KEY).status_code == 404
    assert Threads.retrieve(thread.id, api_key=KEY).status_code == 404
    assert Threads.delete(thread.id, api_key=KEY).status_code == 404
    assert emu.thread_exists(thread.id, workspace="ws-a")
    assert not emu.thread_exists(thread.id)
    assert emu.thread_ids(workspace="ws-a") == [thread.id]


def _page_all(tid: str, order: str) -> tuple[list[str], list[int]]:
    ids: list[str] = []
    sizes: list[int] = []
    after: str | None = None
    while True:
        page = Messages.list(tid, limit=100, order=order, after=after, api_key=KEY)
        assert page.status_code == 200
        ids += [m.id for m in page.data]
        sizes.append(len(page.data))
        if not page.has_more:
            return ids, sizes
        assert page.last_id == page.data[-1].id
        after = page.last_id


def test_messages_paging_through_250(emu: Emulator) -> None:
    """limit=100 pages 250 messages as 100/100/50 in both orders (desc is the default)."""
    texts = [f"m{i}" for i in range(250)]
    tid = emu.seed_thread(messages=[{"role": "user", "content": t} for t in texts])
    stored = [m["id"] for m in emu.messages_of(tid)]

    asc, asc_sizes = _page_all(tid, "asc")
    desc, desc_sizes = _page_all(tid, "desc")
    assert asc == stored
    assert desc == stored[::-1]
    assert asc_sizes == desc_sizes == [100, 100, 50]

    first = Messages.list(tid, api_key=KEY)  # defaults: 20, newest first
    assert [m.id for m in first.data] == stored[::-1][:20]
    assert first.first_id == stored[-1]
    assert first.data[0].content[0].text.value == "m249"
    before = Messages.list(tid, limit=5, order="asc", before=stored[10], api_key=KEY)
    assert [m.id for m in before.data] == stored[5:10]
    one = Messages.retrieve(stored[3], thread_id=tid, api_key=KEY)
    assert one.content[0].text.value == "m3"
    assert Messages.list(tid, limit=101, api_key=KEY).status_code == 400


def test_run_completes_with_assistant_message_and_usage(emu: Emulator) -> None:
    """A run is queued, completes on the first retrieve and appends exactly one reply."""
    tid = emu.seed_thread()
    sent = Messages.create(tid, content="what is 2+2?", api_key=KEY)
    assert (sent.status_code, sent.role) == (200, "user")

    run = Runs.create(tid, assistant_id="asst_1", api_key=KEY)
    assert (run.status_code, run.status, run.model) == (200, "queued", "qwen-max")
    done = Runs.retrieve(run.id, thread_id=tid, api_key=KEY)
    assert done.status == "completed"
    assert done.completed_at is not None
    usage = done.usage  # the SDK leaves run.usage as a plain dict
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0
    Runs.retrieve(run.id, thread_id=tid, api_key=KEY)  # a second look adds nothing

    messages = Messages.list(tid, order="asc", api_key=KEY).data
    assert [m.role for m in messages] == ["user", "assistant"]
    reply = messages[1]
    assert reply.content[0].text.value == "Echo: what is 2+2?"
    assert (reply.run_id, reply.assistant_id) == (run.id, "asst_1")

    runs = Runs.list(tid, api_key=KEY)
    assert [r.id for r in runs.data] == [run.id]
    steps = Steps.list(run.id, thread_id=tid, api_key=KEY)
    assert steps.data[0].step_details.message_creation.message_id == reply.id


def test_run_delay_failure_and_wait(emu: Emulator) -> None:
    """With run_delay a run is in_progress first; Runs.wait polls until it fails."""
    emu.run_delay = 0.3
    emu.run_status = "failed"
    tid = emu.seed_thread(messages=[{"role": "user", "content": "hi"}])
    run = Runs.create(tid, assistant_id="asst_1", api_key=KEY)
    assert Runs.retrieve(run.id, thread_id=tid, api_key=KEY).status == "in_progress"
    final = Runs.wait(run.id, thread_id=tid, api_key=KEY)  # polls once a second
    assert final.status == "failed"
    assert final.failed_at is not None
    assert final.last_error["code"] == "server_error"  # a plain dict, like run.usage
    assert len(emu.messages_of(tid)) == 1  # no reply on failure


def test_run_requires_assistant_id(emu: Emulator) -> None:
    """POST runs without assistant_id is 400 (the SDK refuses locally, so use HTTP)."""
    tid = emu.seed_thread()
    resp = requests.post(
        f"{emu.url}/threads/{tid}/runs",
        json={"model": "qwen-max"},
        headers=AUTH,
        timeout=5,
    )
    assert resp.status_code == 400
    assert resp.json()["code"] == "InvalidParameter"
    assert resp.json()["request_id"]


def test_injected_500_once_then_success(emu: Emulator) -> None:
    """A times=1 fault fails one delete without deleting; the retry succeeds."""
    tid = emu.seed_thread()
    fault = emu.fail("threads.delete", status=500, code="InternalError", message="boom", times=1)
    first = Threads.delete(tid, api_key=KEY)
    assert (first.status_code, first.code, first.message) == (500, "InternalError", "boom")
    assert emu.thread_exists(tid)
    assert Threads.delete(tid, api_key=KEY).deleted is True
    assert fault.hits == 1
    assert not fault.active


def test_throttling_with_retry_after(emu: Emulator) -> None:
    """A 429 fault answers Throttling with a Retry-After header (the SDK drops headers)."""
    tid = emu.seed_thread()
    emu.fail("threads.retrieve", status=429, retry_after=2, thread_id=tid)
    resp = requests.get(f"{emu.url}/threads/{tid}", headers=AUTH, timeout=5)
    assert resp.status_code == 429
    assert resp.headers["Retry-After"] == "2"
    assert resp.json()["code"] == "Throttling"
    via_sdk = Threads.retrieve(tid, api_key=KEY)
    assert (via_sdk.status_code, via_sdk.code) == (429, "Throttling")
    other = emu.seed_thread()
    assert Threads.retrieve(other, api_key=KEY).status_code == 200  # thread-scoped fault


def _failures(seed: int, n: int) -> list[int]:
    with Emulator(api_key=None, seed=seed) as emulator, requests.Session() as session:
        tid = emulator.seed_thread()
        emulator.fail("threads.retrieve", status=503, rate=0.3)
        return [
            i
            for i in range(n)
            if session.get(f"{emulator.url}/threads/{tid}", timeout=5).status_code == 503
        ]


def test_rate_fault_is_seeded() -> None:
    """rate=0.3 fails about 30% of matching requests, identically for the same seed."""
    first = _failures(seed=7, n=300)
    assert 60 <= len(first) <= 120
    assert _failures(seed=7, n=300) == first
    assert _failures(seed=8, n=300) != first


def test_hang_times_out_and_stop_releases(emu: Emulator) -> None:
    """A hanging request makes the client time out; stop() frees a pending one at once."""
    tid = emu.seed_thread()
    emu.fail("threads.retrieve", hang=True)
    with pytest.raises(requests.exceptions.ReadTimeout):
        Threads.retrieve(tid, api_key=KEY, request_timeout=0.3)

    outcome: list[BaseException] = []

    def pending() -> None:
        try:
            requests.get(f"{emu.url}/threads/{tid}", timeout=10)
        except requests.RequestException as exc:
            outcome.append(exc)

    client = threading.Thread(target=pending)
    client.start()
    time.sleep(0.2)
    started = time.monotonic()
    emu.stop()
    client.join(timeout=5)
    assert time.monotonic() - started < 1.5
    assert isinstance(outcome[0], requests.ConnectionError)


def test_drop_raises_connection_error(emu: Emulator) -> None:
    """drop=True closes the socket without an answer: the SDK raises ConnectionError."""
    emu.fail("threads.create", drop=True, times=1)
    with pytest.raises(requests.ConnectionError):
        Threads.create(api_key=KEY)
    assert emu.thread_ids() == []
    assert Threads.create(api_key=KEY).status_code == 200
    assert emu.count("threads.create", status=0) == 1


def test_counters(emu: Emulator) -> None:
    """count() filters by op, thread id and status; calls lists every answered request."""
    a, b = emu.seed_thread(), emu.seed_thread()
    for tid in (a, a, b):
        Threads.retrieve(tid, api_key=KEY)
    Threads.delete(a, api_key=KEY)
    Threads.delete(a, api_key=KEY)
    assert emu.count() == 5
    assert emu.count("threads.retrieve") == 3
    assert emu.count(thread_id=a) == 4
    assert emu.count("threads.delete", status=200) == 1
    assert emu.count("threads.delete", thread_id=a, status=404) == 1
    assert emu.calls[-1] == ("threads.delete", a, 404)
    assert emu.stats()["deletes_by_thread"] == {a: 1}
    emu.reset_counters()
    assert emu.count() == 0
    assert emu.calls == ()


def test_admin_api(emu: Emulator) -> None:
    """The /_emulator routes steer faults, latency and state over HTTP, uncounted."""
    admin = emu.url.replace("/api/v1", "/_emulator")
    tid = emu.seed_thread()
    created = requests.post(
        f"{admin}/faults", json={"op": "threads.delete", "status": 503, "times": 1}, timeout=5
    )
    assert created.status_code == 200
    assert created.json()["id"]
    assert Threads.delete(tid, api_key=KEY).status_code == 503
    assert Threads.delete(tid, api_key=KEY).status_code == 200

    stats = requests.get(f"{admin}/stats", timeout=5).json()
    assert stats["counts"] == {"threads.delete": {"200": 1, "503": 1}}
    assert stats["deletes_by_thread"] == {tid: 1}
    assert stats["threads"] == 0

    requests.post(f"{admin}/faults", json={"op": "*", "status": 500}, timeout=5)
    assert requests.delete(f"{admin}/faults", timeout=5).status_code == 200
    assert Threads.create(api_key=KEY).status_code == 200
    bad = requests.post(f"{admin}/faults", json={"op": "nope"}, timeout=5)
    assert bad.status_code == 400

    requests.post(f"{admin}/latency", json={"seconds": 0.2, "op": "threads.create"}, timeout=5)
    started = time.monotonic()
    Threads.create(api_key=KEY)
    assert time.monotonic() - started >= 0.2
    requests.post(f"{admin}/latency", json={"seconds": 0, "op": "threads.create"}, timeout=5)

    assert requests.post(f"{admin}/reset", timeout=5).status_code == 200
    assert emu.thread_ids() == []
    assert emu.count() == 0


def test_unknown_route_is_json_404(emu: Emulator) -> None:
    """Routes the API does not have answer 404 with a JSON error body."""
    resp = requests.get(f"{emu.url}/files/nope", headers=AUTH, timeout=5)
    assert resp.status_code == 404
    assert set(resp.json()) >= {"code", "message", "request_id"}


def test_keep_alive(emu: Emulator) -> None:
    """HTTP/1.1 with Content-Length: several requests share one connection."""
    tid = emu.seed_thread()
    conn = http.client.HTTPConnection("127.0.0.1", emu.port, timeout=5)
    try:
        for _ in range(3):
            conn.request("GET", f"/api/v1/threads/{tid}", headers=AUTH)
            resp = conn.getresponse()
            assert resp.status == 200
            resp.read()
    finally:
        conn.close()


def test_latency_is_concurrent(emu: Emulator) -> None:
    """20 parallel requests with 0.2 s latency each finish far sooner than 20 x 0.2 s."""
    tid = emu.seed_thread()
    emu.set_latency(0.2)
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=20) as pool:
        codes = list(pool.map(lambda _: Threads.retrieve(tid, api_key=KEY).status_code, range(20)))
    elapsed = time.monotonic() - started
    assert codes == [200] * 20
    assert 0.2 <= elapsed < 1.5


def test_throughput_with_latency() -> None:
    """Pooled clients sustain several hundred requests/s against 50 ms latency."""
    with Emulator(api_key=KEY, latency=0.05) as emulator:
        url = f"{emulator.url}/threads/{emulator.seed_thread()}"
        local = threading.local()
        sessions: list[requests.Session] = []

        def get(_: int) -> int:
            if not hasattr(local, "session"):
                local.session = requests.Session()
                sessions.append(local.session)
            return int(local.session.get(url, headers=AUTH, timeout=5).status_code)

        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=50) as pool:
            codes = list(pool.map(get, range(500)))
        elapsed = time.monotonic() - started
        for session in sessions:
            session.close()
    assert codes == [200] * 500
    assert 500 / elapsed > 300
