"""Assistants, run steps and tool calls mirrored by the facade, and everywhere a kind shows up:
``show``, ``export assistants`` / ``export steps``, ``stats``, the sweep's cascade and
archive, encryption at rest."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from types import ModuleType

import pytest
from click.testing import CliRunner
from cryptography.fernet import Fernet
from sqlalchemy import create_engine, select, text

from threadstore import DashScopeRemote, ThreadStore
from threadstore.cli import cli
from threadstore.models import assistants, run_steps, runs
from threadstore.testing import Emulator, FakeRemote, backdate

pytestmark = pytest.mark.filterwarnings("ignore:The Assistants API:DeprecationWarning")

WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}},
}
SECRET = "Ask about the weather in Atlantis"


@pytest.fixture
def facade(
    emulator: Emulator, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[ModuleType, str]]:
    monkeypatch.setenv("THREADSTORE_DATABASE_URL", db_url)
    from threadstore import dashscope as facade_module

    yield facade_module, db_url
    facade_module.close_stores()


def _mirror(url: str) -> ThreadStore:
    from threadstore.dashscope import flush

    assert flush(timeout=10)
    return ThreadStore(url, remote=FakeRemote())


def _tool_turn(module: ModuleType) -> tuple[str, str]:
    """A thread whose run called a tool (answered "sunny") and completed; (thread, run)."""
    assistant = module.Assistants.create(model="qwen-max", name="weather", tools=[WEATHER],
                                         instructions=SECRET)
    thread = module.Threads.create(messages=[{"role": "user", "content": SECRET}])
    run = module.Runs.create(thread.id, assistant_id=assistant.id)
    waiting = module.Runs.wait(run.id, thread_id=thread.id)
    call = waiting.required_action.submit_tool_outputs.tool_calls[0]
    module.Runs.submit_tool_outputs(run.id, thread_id=thread.id,
                                    tool_outputs=[{"tool_call_id": call.id, "output": "sunny"}])
    assert module.Runs.wait(run.id, thread_id=thread.id).status == "completed"
    module.Steps.list(run.id, thread_id=thread.id)
    return thread.id, run.id


def test_assistants_are_mirrored_in_their_workspace_and_deleted_after_confirmation(
    facade: tuple[ModuleType, str], emulator: Emulator
) -> None:
    """create/update/list mirror assistants; delete removes the row only once DashScope agreed."""
    module, url = facade
    made = module.Assistants.create(model="qwen-max", name="a", tools=[WEATHER],
                                    metadata={"team": "x"}, workspace="ws-1")
    module.Assistants.update(made.id, name="b", workspace="ws-1")
    with _mirror(url) as store:
        (rec,) = store.assistants()
        assert (rec.assistant_id, rec.workspace, rec.name, rec.model) == (
            made.id, "ws-1", "b", "qwen-max")
        assert rec.tools[0]["function"]["name"] == "get_weather"
        assert rec.metadata == {"team": "x"}
    emulator.fail("assistants.delete", status=500, times=1)
    assert module.Assistants.delete(made.id, workspace="ws-1").status_code == 500
    with _mirror(url) as store:
        assert len(store.assistants()) == 1
    assert module.Assistants.delete(made.id, workspace="ws-1").deleted is True
    with _mirror(url) as store:
        assert store.assistants() == []


def test_tool_calls_are_mirrored_on_the_run_and_its_steps(
    facade: tuple[ModuleType, str], emulator: Emulator
) -> None:
    """requires_action's calls (name, arguments) land on the run, outputs too; steps with usage."""
    module, url = facade
    thread_id, _ = _tool_turn(module)
    with _mirror(url) as store:
        (run,) = store.runs(thread_id)
        assert run.status == "completed"
        (call,) = run.tool_calls
        assert (call["name"], json.loads(call["arguments"]), call["output"]) == (
            "get_weather", {"input": SECRET}, "sunny")
        steps = store.steps(thread_id)
        assert [(s.type, s.status) for s in steps] == [
            ("tool_calls", "completed"), ("message_creation", "completed")]
        assert steps[0].tool_calls[0]["output"] == "sunny"
        assert steps[1].total_tokens
        assert steps[1].message_id


def test_streamed_steps_are_mirrored_as_they_pass(
    facade: tuple[ModuleType, str], emulator: Emulator
) -> None:
    """Step events of a stream land in run_steps, never reopened by an earlier snapshot."""
    module, url = facade
    thread = module.Threads.create(messages=[{"role": "user", "content": "hi"}])
    list(module.Runs.create(thread.id, assistant_id="asst_1", stream=True))
    with _mirror(url) as store:
        (step,) = store.steps(thread.id)
        assert (step.type, step.status) == ("message_creation", "completed")
        assert step.total_tokens


def test_show_export_stats_sweep_and_archive_know_the_new_kinds(
    facade: tuple[ModuleType, str], emulator: Emulator, tmp_path: Path
) -> None:
    """Steps appear in show and the archive and go with their thread; exports and stats count."""
    module, url = facade
    thread_id, _ = _tool_turn(module)
    assert module.flush(timeout=10)
    runner = CliRunner()
    shown = runner.invoke(cli, ["--db", url, "show", thread_id, "--json"])
    assert shown.exit_code == 0, shown.output
    assert [s["type"] for s in json.loads(shown.stdout)["run_steps"]] == [
        "tool_calls", "message_creation"]
    steps = runner.invoke(cli, ["--db", url, "export", "steps"])
    assert steps.exit_code == 0, steps.output
    lines = steps.stdout.splitlines()
    assert len(lines) == 2
    (tool_step,) = [row for row in map(json.loads, lines) if row["type"] == "tool_calls"]
    assert tool_step["tool_calls"][0]["name"] == "get_weather"
    exported = runner.invoke(cli, ["--db", url, "export", "assistants", "--format", "csv"])
    assert exported.exit_code == 0, exported.output
    assert "get_weather" in exported.stdout
    stats = json.loads(runner.invoke(cli, ["--db", url, "stats", "--json"]).stdout)
    assert (stats["run_steps"], stats["assistants"]) == (2, 1)

    archive = tmp_path / "archive.jsonl"
    remote = DashScopeRemote(api_key=emulator.api_key, base_url=emulator.url)
    with ThreadStore(url, remote=remote) as store:
        backdate(store, thread_id, store.get_thread(thread_id).created_at - timedelta(days=30))
        report = store.sweep(older_than=timedelta(days=7), archive=archive)
        assert report.deleted == 1
        assert store.stats().run_steps == 0
    assert not emulator.thread_exists(thread_id)
    (line,) = archive.read_text("utf-8").splitlines()
    assert len(json.loads(line)["run_steps"]) == 2


def test_step_and_assistant_text_is_encrypted_at_rest(
    facade: tuple[ModuleType, str], emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a key, instructions, tools and tool calls are ciphertext in the database."""
    monkeypatch.setenv("THREADSTORE_ENCRYPTION_KEY", Fernet.generate_key().decode())
    module, url = facade
    thread_id, _ = _tool_turn(module)
    with _mirror(url) as store:
        assert store.assistants()[0].instructions == SECRET
        assert json.loads(store.runs(thread_id)[0].tool_calls[0]["arguments"]) == {
            "input": SECRET}
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            stored = [
                *conn.execute(select(assistants.c.instructions, assistants.c.tools)).one(),
                *conn.execute(select(run_steps.c.tool_calls)).scalars(),
                *conn.execute(select(runs.c.tool_calls)).scalars(),
            ]
            assert conn.execute(text("SELECT 1")).scalar() == 1
    finally:
        engine.dispose()
    assert all(v is None or v.startswith("fernet:") for v in stored)
    assert not any(v and ("Atlantis" in v or "get_weather" in v) for v in stored)
