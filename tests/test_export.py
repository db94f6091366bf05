"""ThreadStore.export: every table in every format, filters, redaction, streaming, safety."""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from cryptography.fernet import Fernet
from sqlalchemy import select

from helpers import set_row
from threadstore import ConfigError, ThreadStore
from threadstore import export as export_module
from threadstore.models import deletions, messages, runs, threads
from threadstore.testing import FakeRemote, backdate

UTC = timezone.utc
T0 = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
TEXTS = [
    'comma, and "double quotes"',
    "two\nlines\r\nand a CRLF",
    "emoji 🎉🚀 and CJK 你好世界",
    "",
]
SECRET_META = {"topic": "billing dispute", "note": "vip, \"gold\""}


def _at(day: int) -> datetime:
    return T0 + timedelta(days=day)


@pytest.fixture
def populated(db_url: str) -> Iterator[ThreadStore]:
    """Three threads (two users, one workspace), tricky texts, a run, a deletion."""
    with ThreadStore(db_url, remote=FakeRemote()) as store:
        a = store.create_thread(user_id="u1", metadata=SECRET_META)
        for i, text in enumerate(TEXTS):
            m = store.add_message(a.thread_id, text, metadata={"i": i, "secret": f"m{i}"})
            set_row(store, messages, m.message_id, created_at=_at(i))
        run = store.run(a.thread_id, assistant_id="asst_1", poll_interval=0.01)
        set_row(store, runs, run.run_id, created_at=_at(2))
        for m in run.messages:  # the reply, on day 5
            set_row(store, messages, m.message_id, created_at=_at(5))
        backdate(store, a.thread_id, _at(5))

        b = store.create_thread(user_id="u2", workspace="ws1", metadata={"k": "v"})
        m = store.add_message(b.thread_id, "hello from ws1")
        set_row(store, messages, m.message_id, created_at=_at(1))
        store.pin(b.thread_id)
        backdate(store, b.thread_id, _at(1))

        c = store.create_thread(user_id="u2", ttl=timedelta(days=30))
        backdate(store, c.thread_id, _at(3))

        gone = store.create_thread(user_id="u1", workspace="ws1")
        store.delete_thread(gone.thread_id)
        set_row(store, deletions, gone.thread_id, key=deletions.c.thread_id, deleted_at=_at(4))
        yield store


# --------------------------------------------------------------------------- expectations


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat(timespec="microseconds")


def _expected(store: ThreadStore, table: str) -> list[dict[str, Any]]:
    """What an export must contain, derived from the library's own reads."""
    out: list[dict[str, Any]] = []
    if table == "threads":
        for t in store.list_threads():
            rs = store.runs(t.thread_id)
            out.append({
                "thread_id": t.thread_id, "workspace": t.workspace, "user_id": t.user_id,
                "created_at": _iso(t.created_at), "last_active": _iso(t.last_active),
                "metadata": t.metadata, "pinned": t.pinned,
                "ttl_seconds": int(t.ttl.total_seconds()) if t.ttl else None,
                "ttl_expires_at": _iso(t.last_active + t.ttl) if t.ttl else None,
                "message_count": len(store.messages(t.thread_id)), "run_count": len(rs),
                "prompt_tokens": sum(r.prompt_tokens or 0 for r in rs),
                "completion_tokens": sum(r.completion_tokens or 0 for r in rs),
                "total_tokens": sum(r.total_tokens or 0 for r in rs),
            })
    elif table == "messages":
        for t in store.list_threads():
            for m in store.messages(t.thread_id):
                out.append({
                    "message_id": m.message_id, "thread_id": m.thread_id, "role": m.role,
                    "content": m.content, "content_length": len(m.content),
                    "created_at": _iso(m.created_at), "run_id": m.run_id,
                    "assistant_id": m.assistant_id, "metadata": m.metadata,
                })
    elif table == "runs":
        for t in store.list_threads():
            for r in store.runs(t.thread_id):
                out.append({
                    "run_id": r.run_id, "thread_id": r.thread_id, "assistant_id": r.assistant_id,
                    "model": r.model, "status": r.status, "created_at": _iso(r.created_at),
                    "started_at": _iso(r.started_at), "completed_at": _iso(r.completed_at),
                    "failed_at": _iso(r.failed_at), "last_error": r.last_error,
                    "prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
                    "total_tokens": r.total_tokens, "tool_calls": list(r.tool_calls) or None,
                })
    else:
        with store.engine.connect() as conn:
            for row in conn.execute(select(deletions)).mappings():
                out.append({
                    k: _iso(v) if isinstance(v, datetime) else v
                    for k, v in row.items() if k != "deleted_by"
                })
    return out


# --------------------------------------------------------------------------- reading back


def _read(path: Path, fmt: str) -> list[dict[str, Any]]:
    """Rows of an export file, as a user would load them."""
    if fmt == "jsonl":
        return [json.loads(line) for line in path.read_text("utf-8").splitlines()]
    if fmt == "csv":
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    return pq.read_table(path).to_pylist()


def _as(fmt: str, value: Any, column: str) -> Any:
    """An expected value as the format represents it."""
    if column == "metadata":
        return value if fmt == "jsonl" else json.dumps(value, ensure_ascii=False)
    if fmt == "csv":
        if value is None:
            return ""
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)
    if fmt == "parquet" and isinstance(value, str) and column.endswith(("_at", "last_active")):
        return datetime.fromisoformat(value)
    return value


def _key(row: dict[str, Any]) -> str:
    return str(row.get("message_id") or row.get("run_id") or row.get("id") or row["thread_id"])


def _canon(rows: list[dict[str, Any]], fmt: str) -> list[dict[str, Any]]:
    out = []
    for raw in rows:
        row = dict(raw)
        if fmt != "jsonl" and row.get("metadata") not in (None, ""):
            row["metadata"] = json.dumps(json.loads(row["metadata"]), ensure_ascii=False)
        out.append(row)
    return sorted(out, key=_key)


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
@pytest.mark.parametrize("table", ["threads", "messages", "runs", "deletions"])
def test_every_table_round_trips_in_every_format(
    populated: ThreadStore, tmp_path: Path, table: str, fmt: str
) -> None:
    """Each table exports every row with every column intact, read back by standard tools."""
    path = tmp_path / f"out.{fmt}"
    expected = _expected(populated, table)
    assert populated.export(path, table=table, fmt=fmt) == len(expected) > 0
    got = _read(path, fmt)
    want = [{k: _as(fmt, v, k) for k, v in row.items()} for row in expected]
    assert _canon(got, fmt) == _canon(want, fmt)
    assert list(got[0]) == list(export_module.export_columns(table))


def test_csv_keeps_tricky_text_exact_without_pyarrow(
    populated: ThreadStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without pyarrow, CSV still round-trips quotes, commas, newlines, emoji and CJK."""
    path = tmp_path / "py.csv"
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    populated.export(path, table="messages", fmt="csv")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert {r["content"] for r in rows} >= set(TEXTS)
    assert {r["created_at"] for r in rows} >= {_iso(_at(0)), _iso(_at(1))}
    with pytest.raises(ConfigError, match=r"pip install 'threadstore\[parquet\]'"):
        populated.export(tmp_path / "x.parquet", table="messages", fmt="parquet")
    assert not (tmp_path / "x.parquet").exists()


def test_timestamps_are_iso_8601_utc_with_microseconds(
    populated: ThreadStore, tmp_path: Path
) -> None:
    """Text formats write timestamps as 2026-03-01T12:00:00.123456+00:00."""
    out = io.StringIO()
    populated.export(out, table="messages", fmt="jsonl", until=_at(1))
    (row,) = [json.loads(line) for line in out.getvalue().splitlines()]
    assert row["created_at"] == "2026-03-01T12:00:00.123456+00:00"


# --------------------------------------------------------------------------- filters


def _ids(store: ThreadStore, **kw: Any) -> list[str]:
    out = io.StringIO()
    store.export(out, fmt="jsonl", **kw)
    return sorted(_key(json.loads(line)) for line in out.getvalue().splitlines())


def test_since_is_inclusive_and_until_exclusive_on_each_tables_own_time(
    populated: ThreadStore,
) -> None:
    """since/until select by last_active, created_at or deleted_at: [since, until)."""
    msgs = {m["created_at"]: m["message_id"] for m in _expected(populated, "messages")}
    want = sorted(msgs[_iso(_at(d))] for d in (1, 2, 2))  # day 1 has two messages
    got = _ids(populated, table="messages", since=_at(1), until=_at(3))
    assert len(got) == 3
    assert set(want) <= set(got)
    assert _ids(populated, table="messages", since=_at(5)) == sorted(
        m["message_id"] for m in _expected(populated, "messages") if m["created_at"] == _iso(_at(5))
    )
    threads_by_active = {t["last_active"]: t["thread_id"] for t in _expected(populated, "threads")}
    assert _ids(populated, table="threads", since=_at(1), until=_at(5)) == sorted(
        [threads_by_active[_iso(_at(1))], threads_by_active[_iso(_at(3))]]
    )
    just_after = _at(2) + timedelta(microseconds=1)
    assert len(_ids(populated, table="runs", since=_at(2), until=just_after)) == 1
    assert _ids(populated, table="runs", until=_at(2)) == []
    assert len(_ids(populated, table="deletions", since=_at(4))) == 1
    assert _ids(populated, table="deletions", until=_at(4)) == []
    assert _ids(populated, table="messages", since=_at(9)) == []


def test_workspace_and_user_filters_select_exactly_their_rows(populated: ThreadStore) -> None:
    """workspace/user_id filters apply to every table (messages and runs via their thread)."""
    by_user = {t.thread_id: t for t in populated.list_threads()}
    u2 = sorted(t for t, r in by_user.items() if r.user_id == "u2")
    assert _ids(populated, table="threads", user_id="u2") == u2
    ws1 = [t for t, r in by_user.items() if r.workspace == "ws1"]
    assert _ids(populated, table="threads", workspace="ws1") == ws1
    ws1_msgs = sorted(m.message_id for m in populated.messages(ws1[0]))
    assert _ids(populated, table="messages", workspace="ws1") == ws1_msgs
    assert _ids(populated, table="messages", workspace="ws1", user_id="u1") == []
    assert len(_ids(populated, table="messages", user_id="u1")) == len(TEXTS) + 1
    assert len(_ids(populated, table="runs", user_id="u1")) == 1
    assert _ids(populated, table="runs", user_id="u2") == []
    assert len(_ids(populated, table="deletions", workspace="ws1", user_id="u1")) == 1
    assert _ids(populated, table="deletions", user_id="u2") == []


def test_threads_export_leaves_out_intent_rows_and_sweep_internals(
    populated: ThreadStore,
) -> None:
    """Threads still being created and lease/retry bookkeeping never reach an export."""
    with populated.engine.begin() as conn:
        conn.execute(threads.insert().values(
            thread_id="creating_x", created_at=T0, last_active=T0, status="creating"))
    out = io.StringIO()
    populated.export(out, table="threads")
    text = out.getvalue()
    assert "creating_x" not in text
    for secret in ("lease_owner", "lease_expires_at", "attempts", "deleted_by"):
        assert secret not in text
    assert len(text.splitlines()) == len(populated.list_threads())


# --------------------------------------------------------------------------- redaction


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
@pytest.mark.parametrize("table", ["threads", "messages"])
def test_redact_leaves_no_message_text_nor_metadata_values(
    populated: ThreadStore, tmp_path: Path, table: str, fmt: str
) -> None:
    """With redact, no message text or metadata value is in the file; keys and lengths stay."""
    path = tmp_path / f"r.{fmt}"
    populated.export(path, table=table, fmt=fmt, redact=True)
    raw = path.read_bytes()
    for text in [t for t in TEXTS if t] + ["hello from ws1", "billing dispute", "gold", "m1"]:
        for piece in text.split("\n"):
            assert piece.encode() not in raw, piece
    rows = _read(path, fmt)
    if table == "messages":
        lengths = sorted(int(r["content_length"]) for r in rows)
        assert lengths == sorted(len(m["content"]) for m in _expected(populated, "messages"))
        assert {r["content"] for r in rows} == {""}
        metas = [r["metadata"] for r in rows]
        metas = [m if isinstance(m, dict) else json.loads(m) for m in metas]
        assert {"i": None, "secret": None} in metas
    else:
        metas = [r["metadata"] if isinstance(r["metadata"], dict) else json.loads(r["metadata"])
                 for r in rows]
        assert dict.fromkeys(SECRET_META) in metas


def test_encrypted_store_exports_decrypted_and_redacts_too(
    sqlite_url: str, tmp_path: Path
) -> None:
    """Fernet-encrypted content and metadata export as plain text (or redacted)."""
    key = Fernet.generate_key().decode()
    with ThreadStore(sqlite_url, remote=FakeRemote(), encryption_key=key) as store:
        t = store.create_thread(user_id="u1", metadata={"topic": "secret topic"})
        store.add_message(t.thread_id, "encrypted 你好, \"x\"")
        with store.engine.connect() as conn:
            stored = conn.execute(select(messages.c.content)).scalar_one()
        assert stored.startswith("fernet:")
        for fmt in ("jsonl", "csv", "parquet"):
            path = tmp_path / f"e.{fmt}"
            store.export(path, table="messages", fmt=fmt)
            (row,) = _read(path, fmt)
            assert row["content"] == "encrypted 你好, \"x\""
            assert int(row["content_length"]) == len("encrypted 你好, \"x\"")
            store.export(path, table="threads", fmt=fmt, redact=True)
            assert b"secret topic" not in path.read_bytes()
            assert b"fernet:" not in path.read_bytes()
            store.export(path, table="threads", fmt=fmt)
            assert b"secret topic" in path.read_bytes() or fmt == "parquet"


# --------------------------------------------------------------------------- targets & safety


def test_failed_export_leaves_no_file_and_keeps_the_old_one(
    sqlite_url: str, tmp_path: Path
) -> None:
    """An export that fails midway leaves the previous file untouched and no temp files."""
    key = Fernet.generate_key().decode()
    with ThreadStore(sqlite_url, remote=FakeRemote(), encryption_key=key) as store:
        t = store.create_thread(user_id="u1")
        first = store.add_message(t.thread_id, "private")
        store.add_message(t.thread_id, "newer")
        # A damaged token: decrypting it fails in the middle of the export.
        set_row(store, messages, first.message_id, content="fernet:bad")
        target = tmp_path / "messages.csv"
        target.write_text("previous export\n")
        with pytest.raises(ConfigError, match="THREADSTORE_ENCRYPTION_KEY"):
            store.export(target, table="messages", fmt="csv")
    assert target.read_text() == "previous export\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".messages.csv")] == []


def test_plain_text_that_looks_encoded_exports_as_written(
    sqlite_url: str, tmp_path: Path
) -> None:
    """Message text that starts with 'fernet:' or 'plain:' exports exactly as written."""
    with ThreadStore(sqlite_url, remote=FakeRemote()) as store:
        t = store.create_thread(user_id="u1", metadata={"a": 1})
        for text in ("fernet:not a token", "plain:text", "ordinary"):
            store.add_message(t.thread_id, text)
        for fmt in ("jsonl", "csv", "parquet"):
            store.export(tmp_path / f"p.{fmt}", table="messages", fmt=fmt)
            got = {r["content"] for r in _read(tmp_path / f"p.{fmt}", fmt)}
            assert got == {"fernet:not a token", "plain:text", "ordinary"}


def test_bad_options_raise_config_error_before_writing(
    populated: ThreadStore, tmp_path: Path
) -> None:
    """Unknown table/format, naive or reversed datetimes, missing dirs: ConfigError, no file."""
    path = tmp_path / "never.jsonl"
    bad: list[dict[str, Any]] = [
        {"table": "users"},
        {"fmt": "xml"},
        {"since": datetime(2026, 1, 1)},
        {"until": datetime(2026, 1, 1)},
        {"since": _at(2), "until": _at(1)},
    ]
    for kwargs in bad:
        with pytest.raises(ConfigError):
            populated.export(path, **kwargs)
    with pytest.raises(ConfigError, match="no directory"):
        populated.export(tmp_path / "missing" / "x.jsonl")
    with pytest.raises(ConfigError, match="binary"):
        populated.export(io.StringIO(), table="messages", fmt="parquet")
    assert not path.exists()


def test_file_objects_text_and_binary(populated: ThreadStore) -> None:
    """Open files work: text or binary for jsonl/csv, binary for parquet."""
    text, binary, parquet = io.StringIO(), io.BytesIO(), io.BytesIO()
    n = populated.export(text, table="messages", fmt="csv")
    populated.export(binary, table="messages", fmt="csv")
    assert binary.getvalue().decode("utf-8") == text.getvalue()
    assert len(list(csv.DictReader(io.StringIO(text.getvalue(), newline="")))) == n
    assert populated.export(parquet, table="messages", fmt="parquet") == n
    assert pq.read_table(io.BytesIO(parquet.getvalue())).num_rows == n


def test_empty_results_still_have_a_header_or_schema(
    populated: ThreadStore, tmp_path: Path
) -> None:
    """No matching rows: CSV has its header line, Parquet its schema, JSONL is empty."""
    out = io.StringIO()
    assert populated.export(out, table="runs", fmt="csv", user_id="nobody") == 0
    assert out.getvalue().splitlines() == [",".join(
        f'"{c}"' for c in export_module.export_columns("runs"))]
    populated.export(tmp_path / "e.parquet", table="runs", fmt="parquet", user_id="nobody")
    table = pq.read_table(tmp_path / "e.parquet")
    assert table.num_rows == 0
    assert str(table.schema.field("created_at").type) == "timestamp[us, tz=UTC]"
    out = io.StringIO()
    assert populated.export(out, table="runs", user_id="nobody") == 0
    assert out.getvalue() == ""


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_small_batches_give_the_same_rows_and_report_progress(
    populated: ThreadStore, tmp_path: Path, fmt: str
) -> None:
    """Streaming in batches of 2 writes the same rows as one batch; progress counts up."""
    seen: list[int] = []
    small, big = tmp_path / f"s.{fmt}", tmp_path / f"b.{fmt}"
    n = export_module.export(populated.engine, small, codec=populated.codec, table="messages",
                             fmt=fmt, batch_size=2, progress=seen.append)
    export_module.export(populated.engine, big, codec=populated.codec, table="messages", fmt=fmt)
    assert _read(small, fmt) == _read(big, fmt)
    assert seen == [*range(2, n, 2), n] if n % 2 else list(range(2, n + 1, 2))


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
@pytest.mark.parametrize("table", ["messages", "runs"])
def test_arrow_native_sqlite_path_matches_the_portable_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str, table: str
) -> None:
    """With and without the ADBC driver, a filtered export writes the same bytes."""
    url = f"sqlite:///{tmp_path / 'adbc.db'}"
    with ThreadStore(url, remote=FakeRemote()) as store:
        for user in ("a", "b"):
            # The first threads have no run: run_id columns start with NULLs.
            for i in range(3):
                t = store.create_thread(user_id=user, workspace="w")
                store.add_message(t.thread_id, f'hi, "{user}{i}"\n你好 🎉')
            store.run(t.thread_id, assistant_id="asst_1", poll_interval=0.01)
        since = datetime.now(timezone.utc) - timedelta(hours=1)
        options = {"table": table, "fmt": fmt, "since": since, "user_id": "b"}
        assert export_module._adbc_sqlite() is not None, "the test extra installs ADBC"
        fast = tmp_path / f"fast.{fmt}"
        n_fast = store.export(fast, **options)
        monkeypatch.setattr(export_module, "_adbc_sqlite", lambda: None)
        slow = tmp_path / f"slow.{fmt}"
        n_slow = store.export(slow, **options)
    assert n_fast == n_slow > 0
    if fmt == "csv":
        assert fast.read_bytes() == slow.read_bytes()
    else:
        assert pq.read_table(fast).equals(pq.read_table(slow))


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
@pytest.mark.parametrize("table", ["threads", "messages", "runs", "deletions"])
def test_database_rendered_lines_match_the_portable_writers(
    populated: ThreadStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, table: str, fmt: str
) -> None:
    """SQLite's rendering, PostgreSQL's COPY, orjson, json, pyarrow and csv: the same bytes."""
    t = populated.create_thread(
        user_id="u3", metadata={"f": 1e-05, "big": 2**70, "e": 1e16, "s": "tab\there 🎉"}
    )
    populated.add_message(t.thread_id, 'quote " and \\ backslash\x1f', metadata={"x": 0.1})
    odd = populated.add_message(t.thread_id, "its metadata is not JSON")
    set_row(populated, messages, odd.message_id, metadata="not {json")
    outputs = []
    for variant in ("default", "sqlite-only", "orjson", "json-module", "csv-module"):
        with monkeypatch.context() as mp:
            if variant != "default":  # no Arrow reading SQLite
                mp.setattr(export_module, "_adbc_sqlite", lambda: None)
            if variant not in ("default", "sqlite-only"):  # Python encodes every value
                mp.setattr(export_module, "_sqlite_lines", lambda *a: None)
                mp.setattr(export_module, "_pg_copy", lambda *a: None)
            if variant in ("sqlite-only", "csv-module"):
                mp.setitem(sys.modules, "pyarrow", None)
            if variant == "json-module":
                mp.setitem(sys.modules, "orjson", None)
                mp.setattr(export_module, "_Fragment", None)
                mp.setattr(export_module, "_orjson_loads", None)
            out = io.BytesIO()
            populated.export(out, table=table, fmt=fmt)
            outputs.append(out.getvalue())
    assert outputs[0]
    assert outputs[1:] == [outputs[0]] * 4
    if fmt == "jsonl" and table == "messages":
        text = outputs[0].decode()
        assert '"metadata":"not {json"' in text
        assert '"metadata":{"x":0.1}' in text
    if fmt == "jsonl" and table == "threads":
        assert '{"f":1e-05,"big":1180591620717411303424,"e":1e+16,' in outputs[0].decode()
