"""Encryption in one layer: no read path hands out ciphertext.

Every text column of every declared kind is walked through every way a user can read
it back from an encrypted store — the records (get, list, messages, runs, children),
`show` (text and JSON), `list --json`, every export table in every format, the sweep
archive and stats — and no `fernet:` token appears anywhere.
"""

from __future__ import annotations

import io
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from cryptography.fernet import Fernet

from threadstore import ThreadStore
from threadstore.cli import cli
from threadstore.codec import PREFIX, to_json
from threadstore.export import FORMATS, TABLES
from threadstore.models import KINDS, UTCDateTime
from threadstore.testing import FakeRemote, backdate

SECRET_TEXT = "the secret message"
SECRET_META = "secret-metadata-value"
SECRET_COLUMN = "secret-column-value"


def _seed_every_encrypted_column(store: ThreadStore, thread_id: str) -> list[str]:
    """One row per kind (other than threads and messages, which the store API wrote)
    with every encrypted column holding the secret; returns the kinds seeded."""
    seeded = []
    now = datetime.now(timezone.utc)
    with store.engine.begin() as conn:
        for kind in KINDS:
            if not kind.encrypted or kind.name in ("threads", "messages"):
                continue
            row: dict[str, Any] = {}
            for column in kind.table.c:
                if column.name in kind.encrypted_text:
                    row[column.name] = json.dumps([{"secret": SECRET_COLUMN}])
                elif column.name in kind.encrypted_json:
                    row[column.name] = {"secret": SECRET_COLUMN}
                elif column.name == kind.id_column:
                    row[column.name] = f"{kind.name}_seeded"
                elif column.name == "thread_id":
                    row[column.name] = thread_id
                elif not column.nullable and column.server_default is None:
                    is_time = isinstance(column.type, UTCDateTime)
                    row[column.name] = now if is_time else column.type.python_type()
            kind.upsert(conn, [row], store.codec)
            seeded.append(kind.name)
    return seeded


def _read(path: Path, fmt: str) -> str:
    if fmt == "parquet":
        pq = pytest.importorskip("pyarrow.parquet")
        return repr(pq.read_table(path).to_pylist())
    return path.read_text(encoding="utf-8")


def test_no_read_path_returns_ciphertext(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Records, show, list, every export, the archive and stats: plain text only."""
    key = Fernet.generate_key().decode()
    monkeypatch.setenv("THREADSTORE_ENCRYPTION_KEY", key)
    monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-unused")
    assert any(k.encrypted for k in KINDS)
    outputs: dict[str, str] = {}
    with ThreadStore(db_url, remote=FakeRemote()) as store:
        t = store.create_thread(user_id="u1", metadata={"k": SECRET_META})
        store.add_message(t.thread_id, SECRET_TEXT, metadata={"m": SECRET_META})
        store.run(t.thread_id, assistant_id="asst_1", poll_interval=0.01)
        tid = t.thread_id
        seeded = _seed_every_encrypted_column(store, tid)

        outputs["get"] = to_json(store.get_thread(tid))
        outputs["list"] = to_json(store.list_threads())
        outputs["messages"] = to_json(store.messages(tid))
        outputs["runs"] = to_json(store.runs(tid))
        outputs["children"] = to_json(store.children(tid))
        outputs["assistants"] = to_json(store.assistants())
        outputs["stats"] = to_json(store.stats().to_dict())
        for table in TABLES:
            for fmt in FORMATS:
                if fmt == "parquet":
                    pytest.importorskip("pyarrow")
                path = tmp_path / f"{table}.{fmt}"
                store.export(path, table=table, fmt=fmt)
                outputs[f"export {table} {fmt}"] = _read(path, fmt)
        runner = CliRunner()
        for args in (["show", tid], ["show", tid, "--json"], ["list", "--json"], ["stats"]):
            result = runner.invoke(cli, ["--db", db_url, *args])
            assert result.exit_code == 0, result.output
            outputs[" ".join(args)] = result.output

        backdate(store, tid, datetime.now(timezone.utc) - timedelta(days=30))
        archive = io.StringIO()
        assert store.sweep(timedelta(days=7), archive=archive).deleted == 1
        outputs["archive"] = archive.getvalue()

    leaking = sorted(name for name, text in outputs.items() if PREFIX in text)
    assert leaking == []
    for name in ("children", "assistants", "show " + tid + " --json", "archive"):
        assert outputs[name].count(SECRET_COLUMN) >= 1, name
    # Every encrypted column of the seeded thread children reads back in clear.
    children_cols = sum(len(k.encrypted) for k in KINDS if k.child_of_thread and k.name in seeded)
    assert outputs["children"].count(SECRET_COLUMN) == children_cols
    for name in seeded:
        for fmt in FORMATS:
            assert SECRET_COLUMN in outputs[f"export {name} {fmt}"], (name, fmt)
    for name in ("messages", "children", "show " + tid, "export messages jsonl", "archive"):
        assert SECRET_TEXT in outputs[name], name
    for name in ("get", "show " + tid + " --json", "export threads csv", "archive"):
        assert SECRET_META in outputs[name], name
