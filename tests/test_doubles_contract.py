"""One contract for both test doubles: the same checks against FakeRemote and the Emulator.

The emulator is reached through the real SDK (``DashScopeRemote``); the fake is the
remote itself. Both share one fault model (``threadstore.testing.faults``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from threadstore import DashScopeRemote
from threadstore.errors import RemoteNotFound, RemoteRateLimited, RemoteUnavailable
from threadstore.remote import Remote
from threadstore.testing import OPS, Emulator, FakeRemote

pytestmark = pytest.mark.filterwarnings("ignore:The Assistants API:DeprecationWarning")

KEY = "sk-contract"


@dataclass
class Double:
    remote: Remote
    steer: Any  # the FakeRemote or the Emulator: fail / count / calls / seed_thread / …


@pytest.fixture(params=["fake", "emulator"])
def double(request: pytest.FixtureRequest) -> Iterator[Double]:
    if request.param == "fake":
        fake = FakeRemote()
        yield Double(fake, fake)
        return
    with Emulator(api_key=KEY) as emu:
        yield Double(DashScopeRemote(api_key=KEY, base_url=emu.url, timeout=0.5), emu)


def test_fault_names_are_validated(double: Double) -> None:
    """A misspelt operation is refused with ValueError, not silently ignored."""
    with pytest.raises(ValueError, match="unknown op"):
        double.steer.fail("thread.delete")
    assert {"threads.delete", "runs.submit_tool_outputs", "assistants.create"} <= set(OPS)


def test_missing_thread_is_404_and_logged(double: Double) -> None:
    """An unknown thread is RemoteNotFound; the call log says 404."""
    with pytest.raises(RemoteNotFound):
        double.remote.retrieve_thread("thread_missing")
    assert double.steer.calls[-1] == ("threads.retrieve", "thread_missing", 404)


def test_workspace_scopes_ids(double: Double) -> None:
    """A thread seeded in one workspace is unknown in another and in none."""
    tid = double.steer.seed_thread(workspace="ws-a")
    assert double.steer.thread_exists(tid, workspace="ws-a")
    assert not double.steer.thread_exists(tid)
    with pytest.raises(RemoteNotFound):
        double.remote.retrieve_thread(tid, workspace="ws-b")
    assert double.remote.retrieve_thread(tid, workspace="ws-a").id == tid


def test_429_carries_retry_after_then_times_runs_out(double: Double) -> None:
    """fail(times=1, retry_after=2): one RemoteRateLimited with retry_after, then success."""
    tid = double.steer.seed_thread()
    double.steer.fail("threads.delete", status=429, retry_after=2, times=1)
    with pytest.raises(RemoteRateLimited) as caught:
        double.remote.delete_thread(tid)
    assert caught.value.retry_after == 2
    double.remote.delete_thread(tid)
    assert double.steer.count("threads.delete", status=429) == 1
    assert double.steer.count("threads.delete", status=200) == 1
    assert not double.steer.thread_exists(tid)


def test_paging_lists_every_message_once(double: Double) -> None:
    """list_messages pages oldest first with has_more until the end."""
    texts = [f"m{i}" for i in range(7)]
    tid = double.steer.seed_thread(messages=[{"role": "user", "content": t} for t in texts])
    seen: list[str] = []
    after: str | None = None
    while True:
        page, more = double.remote.list_messages(tid, after=after, limit=3)
        seen += [m.content for m in page]
        if not more:
            break
        after = page[-1].id
    assert seen == texts


@pytest.mark.parametrize("how", ["hang", "drop"])
def test_hang_and_drop_leave_the_outcome_unknown(double: Double, how: str) -> None:
    """A request that gets no answer is RemoteUnavailable(outcome_unknown=True), logged as 0."""
    double.steer.fail("threads.create", times=1, **{how: True})
    with pytest.raises(RemoteUnavailable) as caught:
        double.remote.create_thread(metadata={"a": "b"})
    assert caught.value.outcome_unknown
    assert double.steer.count("threads.create", status=0) == 1
    assert double.remote.create_thread().id.startswith("thread_")


def test_runs_complete_with_an_echo_and_usage(double: Double) -> None:
    """A run completes on retrieve with the reply "Echo: <last user message>" and usage."""
    tid = double.steer.seed_thread(messages=[{"role": "user", "content": "ping"}])
    run = double.remote.create_run(tid, assistant_id="asst_1")
    assert run.status == "queued"
    done = double.remote.retrieve_run(run.id, thread_id=tid)
    assert done.status == "completed"
    # One estimate in both: a token per four characters ("ping"; "Echo: ping").
    assert (done.prompt_tokens, done.completion_tokens, done.total_tokens) == (1, 3, 4)
    page, _ = double.remote.list_messages(tid)
    assert [m.content for m in page] == ["ping", "Echo: ping"]
