"""Lean start-up: a command loads what it uses, and nothing it does not.

`threadstore stats` loads neither the demo, the emulator nor APScheduler; `--help`
and `sweep` load neither cryptography (unless a key is set), the exporter, stats,
verify nor the MySQL dialect; importing threadstore leaves the garbage collector
as it found it.

A command's process ends as soon as the command is done (``os._exit`` after the
atexit handlers and a flush): whatever it wrote still arrives complete, the exit
status is the command's, and a non-daemon thread still alive is waited for.
"""

from __future__ import annotations

import csv
import io
import json
import os
import pstats
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from helpers import now, run_python
from threadstore import ThreadStore
from threadstore.testing import Emulator, FakeRemote
from threadstore.testing.clock import backdate

HEAVY = ("apscheduler", "threadstore.demo", "threadstore.testing")
# What neither `--help` nor a sweep needs (cryptography: not without a key).
NOT_FOR_A_SWEEP = (
    "cryptography",
    "threadstore.export",
    "threadstore.stats",
    "threadstore.verify",
    "sqlalchemy.dialects.mysql",
)


def _imported(
    args: list[str], env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run ``python -X importtime ARGS``: the finished process and the modules it imported."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", *args],
        capture_output=True, text=True, timeout=120, check=False, env=env,
    )
    imported = {
        line.split("|")[-1].strip()
        for line in done.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert "threadstore.models" in imported  # the probe sees our own modules
    return done, imported


def _loaded(imported: set[str], prefixes: tuple[str, ...]) -> list[str]:
    return sorted(m for m in imported if m.startswith(prefixes))


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("THREADSTORE_")}
    return {**env, **extra}


def test_stats_imports_no_demo_emulator_or_scheduler(tmp_path: Path) -> None:
    """`python -X importtime -m threadstore stats` lists none of the heavy modules."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    # `stats` only reads (issue 13): the store must exist before it runs.
    ThreadStore(url, remote=FakeRemote()).close()
    done, imported = _imported(["-m", "threadstore", "--db", url, "stats"], _env())
    assert done.returncode == 0, done.stderr[-2000:]
    assert "threadstore.stats" in imported
    assert _loaded(imported, HEAVY) == []


@pytest.mark.parametrize("command", [["stats"], ["list"], ["export", "messages"]])
def test_commands_that_never_call_dashscope_load_no_http_client(
    tmp_path: Path, command: list[str]
) -> None:
    """`stats`, `list` and `export` load neither requests nor cryptography."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    with ThreadStore(url, remote=FakeRemote()) as store:
        store.add_message(store.create_thread(user_id="u").thread_id, "hello")
    done, imported = _imported(["-m", "threadstore", "--db", url, *command], _env())
    assert done.returncode == 0, done.stderr[-2000:]
    assert _loaded(imported, ("requests", "urllib3", "cryptography")) == []


@pytest.mark.parametrize(
    "args",
    [["-c", "import threadstore"], ["-m", "threadstore", "--help"],
     ["-m", "threadstore", "sweep", "--help"]],
    ids=["import", "help", "sweep-help"],
)
def test_import_and_help_load_no_crypto_exporter_stats_verify_or_mysql(args: list[str]) -> None:
    """Without an encryption key, neither importing threadstore nor --help loads them."""
    done, imported = _imported(args, _env())
    assert done.returncode == 0, done.stderr[-2000:]
    assert _loaded(imported, NOT_FOR_A_SWEEP) == []


def test_a_sweep_loads_no_crypto_exporter_stats_verify_or_mysql(
    sqlite_url: str, emulator: Emulator
) -> None:
    """A cron `threadstore sweep` deletes the expired threads with none of them loaded."""
    with ThreadStore(sqlite_url) as store:
        ids = [store.create_thread(user_id="u").thread_id for _ in range(3)]
        for tid in ids:
            backdate(store, tid, now() - timedelta(days=10))
    done, imported = _imported(
        ["-m", "threadstore", "--db", sqlite_url, "sweep", "--days", "7"], _env()
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "sweep: " in done.stderr  # the summary line
    assert not any(emulator.thread_exists(tid) for tid in ids)
    with ThreadStore(sqlite_url, remote=FakeRemote()) as store:
        assert store.list_threads() == []
    assert _loaded(imported, NOT_FOR_A_SWEEP) == []


def test_an_encrypted_store_reads_in_a_fresh_process(sqlite_url: str) -> None:
    """cryptography, loaded only once a key is set, still decrypts; a wrong key is one line."""
    key = Fernet.generate_key().decode()
    with ThreadStore(sqlite_url, remote=FakeRemote(), encryption_key=key) as store:
        tid = store.create_thread(user_id="u", metadata={"topic": "secret"}).thread_id
        store.add_message(tid, "the plain words")
    show = [sys.executable, "-m", "threadstore", "--db", sqlite_url, "show", tid]
    done = subprocess.run(show, capture_output=True, text=True, timeout=120, check=False,
                          env=_env(THREADSTORE_ENCRYPTION_KEY=key))
    assert done.returncode == 0, done.stderr
    assert "the plain words" in done.stdout
    assert "secret" in done.stdout
    wrong = Fernet.generate_key().decode()
    done = subprocess.run(show, capture_output=True, text=True, timeout=120, check=False,
                          env=_env(THREADSTORE_ENCRYPTION_KEY=wrong))
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert "does not decrypt" in done.stderr


@pytest.mark.parametrize("before", [True, False], ids=["gc-on", "gc-off"])
def test_importing_threadstore_leaves_the_garbage_collector_as_it_was(before: bool) -> None:
    """The collector is off only while threadstore imports: on after if it was on, else off."""
    code = (
        "import gc\n"
        f"{'gc.enable()' if before else 'gc.disable()'}\n"
        "import threadstore, threadstore.cli\n"
        "print(gc.isenabled())\n"
    )
    done = run_python(code, check=True)
    assert done.stdout.strip() == str(before)


def test_garbage_made_before_the_import_is_still_collected() -> None:
    """A reference cycle dropped before `import threadstore` is freed by the next collection."""
    code = (
        "import gc, weakref\n"
        "class Node: pass\n"
        "a, b = Node(), Node()\n"
        "a.other, b.other = b, a\n"
        "gone = weakref.ref(a)\n"
        "del a, b\n"
        "import threadstore\n"
        "gc.collect()\n"
        "print(gone() is None, gc.get_freeze_count())\n"
    )
    done = run_python(code)
    assert done.stdout.split() == ["True", "0"], done.stderr


def test_objects_an_application_froze_stay_frozen() -> None:
    """gc.freeze() before a fork, then `import threadstore`: the frozen objects stay frozen."""
    code = (
        "import gc\n"
        "kept = [object()]\n"
        "gc.freeze()\n"
        "import threadstore\n"
        "print(gc.get_freeze_count() > 0, any(o is kept for o in gc.get_objects()))\n"
    )
    done = run_python(code)
    assert done.stdout.split() == ["True", "False"], done.stderr


def test_public_names_loaded_on_demand_import_from_a_fresh_process() -> None:
    """`from threadstore import Stats, VerifyReport` works, and dir() lists every public name."""
    code = (
        "import threadstore\n"
        "from threadstore import Stats, VerifyReport\n"
        "from threadstore.stats import Stats as S\n"
        "assert Stats is S and VerifyReport.__name__ == 'VerifyReport'\n"
        "assert set(threadstore.__all__) <= set(dir(threadstore))\n"
        "print('ok')\n"
    )
    done = run_python(code)
    assert done.stdout.strip() == "ok", done.stderr


# --------------------------------------------------------------------------- ending


@pytest.fixture(scope="module")
def big_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A store whose messages export is megabytes: many pipe buffers, many flushes."""
    url = f"sqlite:///{tmp_path_factory.mktemp('big') / 'big.db'}"
    with ThreadStore(url, remote=FakeRemote()) as store:
        for i in range(150):
            tid = store.create_thread(user_id=f"u{i % 3}").thread_id
            for j in range(10):
                store.add_message(tid, f"{i}-{j} " + "lorem ipsum " * 150)
    return url


EXPORT = [sys.executable, "-m", "threadstore", "export", "messages"]


def _check_messages(lines: list[str]) -> None:
    assert len(lines) == 1500
    assert {json.loads(line)["content"].split()[0] for line in lines} == {
        f"{i}-{j}" for i in range(150) for j in range(10)
    }


def test_an_export_to_a_slow_pipe_reader_arrives_complete(big_store: str) -> None:
    """Every row reaches a reader that takes its time; then exit 0 and the summary line."""
    proc = subprocess.Popen([*EXPORT, "--db", big_store], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=_env())
    assert proc.stdout is not None
    chunks = []
    while chunk := proc.stdout.read(64 * 1024):
        chunks.append(chunk)
        time.sleep(0.01)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert err.decode().splitlines() == ["exported 1,500 messages to stdout"]
    _check_messages(b"".join(chunks).decode().splitlines())


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_an_export_redirected_to_a_file_arrives_complete(
    big_store: str, tmp_path: Path, fmt: str
) -> None:
    """`threadstore export > file` (stdout a regular file): nothing left in a buffer."""
    out = tmp_path / f"out.{fmt}"
    with out.open("wb") as fh:
        done = subprocess.run([*EXPORT, "--db", big_store, "--format", fmt], stdout=fh,
                              stderr=subprocess.PIPE, text=True, env=_env(), timeout=120,
                              check=False)
    assert done.returncode == 0, done.stderr
    text = out.read_text(encoding="utf-8")
    if fmt == "jsonl":
        _check_messages(text.splitlines())
    else:
        header, *rows = csv.reader(io.StringIO(text, newline=""))
        content = header.index("content")
        _check_messages([json.dumps({"content": row[content]}) for row in rows])


def _run_main(code: str, *argv: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` (which sets things up), then ``threadstore.cli.main()`` with ``argv``."""
    script = (
        "import atexit, sys, threading, time\n"
        "from threadstore.cli import main\n"
        f"{code}\n"
        f"sys.argv = ['threadstore', *{list(argv)!r}]\n"
        "main()\n"
        "print('NOT REACHED')\n"
    )
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, check=False, env=_env())


def test_atexit_handlers_run_and_their_output_arrives(big_store: str, tmp_path: Path) -> None:
    """Handlers registered before and during a command run, in order, and may still print."""
    marker = tmp_path / "handler-ran"
    code = (
        "atexit.register(lambda: print('registered before'))\n"
        "from threadstore.store import ThreadStore\n"
        "close = ThreadStore.close\n"
        "def closing(self):\n"
        "    atexit.register(lambda: print('registered during'))\n"
        f"    atexit.register(open({str(marker)!r}, 'w').write, 'done')\n"
        "    close(self)\n"
        "ThreadStore.close = closing\n"
    )
    done = _run_main(code, "--db", big_store, "stats", "--json")
    assert done.returncode == 0, done.stderr
    stats, _, after = done.stdout.rpartition("}\n")
    assert json.loads(stats + "}")["messages"] == 1500
    assert after.splitlines() == ["registered during", "registered before"]
    assert marker.read_text() == "done"  # the file written at exit was flushed and closed


@pytest.mark.parametrize(
    ("argv", "status"),
    [(["stats"], 0), (["show", "thread_nope"], 2), (["sweep"], 2), (["--bogus"], 2)],
    ids=["ok", "not-found", "usage", "bad-option"],
)
def test_the_exit_status_and_stderr_are_the_commands(
    big_store: str, argv: list[str], status: int
) -> None:
    """main() ends with the command's status; errors stay one line; code after it never runs."""
    done = _run_main("", "--db", big_store, *argv)
    assert done.returncode == status, done.stderr
    assert "NOT REACHED" not in done.stdout
    if status:
        assert done.stderr.count("\n") == 1, done.stderr
        assert done.stderr.startswith("threadstore: error: ")


def test_a_non_daemon_thread_still_running_is_waited_for(big_store: str, tmp_path: Path) -> None:
    """With another non-daemon thread alive, main() takes the ordinary exit, which joins it."""
    marker = tmp_path / "thread-finished"
    code = (
        "def work():\n"
        "    time.sleep(1.0)\n"
        f"    open({str(marker)!r}, 'w').write('done')\n"
        "threading.Thread(target=work).start()\n"
    )
    done = _run_main(code, "--db", big_store, "stats", "--json")
    assert done.returncode == 0, done.stderr
    assert marker.read_text() == "done"


def test_a_profiler_wrapping_the_cli_still_writes_its_profile(
    big_store: str, tmp_path: Path
) -> None:
    """`python -m cProfile -o FILE -m threadstore …`: the command's process ends the usual
    way under a profiler, so the profile is written."""
    out = tmp_path / "stats.prof"
    done = subprocess.run(
        [sys.executable, "-m", "cProfile", "-o", str(out), "-m", "threadstore", "--db",
         big_store, "stats", "--json"],
        capture_output=True, text=True, timeout=120, check=False, env=_env(),
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["messages"] == 1500
    stats = pstats.Stats(str(out))
    assert any("threadstore" in filename for filename, _, _ in stats.stats)  # type: ignore[attr-defined]
