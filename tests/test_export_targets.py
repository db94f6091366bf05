"""What ``export -o PATH`` does to PATH, whatever PATH is.

A regular file is replaced atomically; a symlink is followed (the link stays); a
FIFO or a character device is written through, as the shell's ``>`` would; a
read-only file, a directory or a socket is refused with one line. Temp files
left by a killed export are removed by the next export to the same target.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from threadstore import ConfigError, ThreadStore
from threadstore.cli import cli
from threadstore.testing import FakeRemote


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ThreadStore]:
    with ThreadStore(f"sqlite:///{tmp_path / 'store.db'}", remote=FakeRemote()) as s:
        for i in range(3):
            s.create_thread(user_id=f"u{i}")
        yield s


def _lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines()]


def test_regular_file_is_replaced_atomically(store: ThreadStore, tmp_path: Path) -> None:
    """An existing regular file is replaced by a complete export (a new inode)."""
    out = tmp_path / "out.jsonl"
    out.write_text("old\n")
    before = out.stat().st_ino
    assert store.export(out) == 3
    assert len(_lines(out.read_text())) == 3
    assert out.stat().st_ino != before


def test_symlink_is_followed_and_stays_a_link(store: ThreadStore, tmp_path: Path) -> None:
    """-o LINK writes the link's target, as '>' does; the link is not turned into a file."""
    target = tmp_path / "real.jsonl"
    target.write_text("old\n")
    link = tmp_path / "link.jsonl"
    link.symlink_to(target)
    assert store.export(link) == 3
    assert link.is_symlink()
    assert len(_lines(target.read_text())) == 3


def test_dangling_symlink_creates_its_target(store: ThreadStore, tmp_path: Path) -> None:
    link = tmp_path / "link.jsonl"
    link.symlink_to(tmp_path / "new.jsonl")
    store.export(link)
    assert link.is_symlink()
    assert len(_lines((tmp_path / "new.jsonl").read_text())) == 3


def test_fifo_is_written_through_to_its_reader(store: ThreadStore, tmp_path: Path) -> None:
    """A FIFO stays a FIFO and its reader gets the export (it would block forever otherwise)."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    assert store.export(fifo) == 3
    reader.join(timeout=10)
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    assert len(_lines(got[0].decode())) == 3


def test_character_device_is_written_through(store: ThreadStore) -> None:
    """-o /dev/null works like '>' and leaves the device alone."""
    assert store.export("/dev/null") == 3
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_read_only_file_is_refused_and_kept(store: ThreadStore, tmp_path: Path) -> None:
    """A read-only file: ConfigError in the library, exit 2 and one line in the CLI."""
    out = tmp_path / "ro.jsonl"
    out.write_text("keep me\n")
    out.chmod(0o444)
    with pytest.raises(ConfigError, match="read-only"):
        store.export(out)
    result = CliRunner().invoke(
        cli, ["--db", str(store.engine.url), "export", "-o", str(out)]
    )
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "read-only" in result.stderr
    assert out.read_text() == "keep me\n"


def test_socket_and_directory_are_refused(store: ThreadStore, tmp_path: Path) -> None:
    sock_path = tmp_path / "s"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(sock_path))
        with pytest.raises(ConfigError):
            store.export(sock_path)
    with pytest.raises(ConfigError, match="directory"):
        store.export(tmp_path)


def test_stale_temp_files_of_a_killed_export_are_removed(
    store: ThreadStore, tmp_path: Path
) -> None:
    """The next export to a target removes its dead '.NAME.*.part' files, not live ones."""
    out = tmp_path / "out.jsonl"
    stale = tmp_path / ".out.jsonl.k1ll3d.part"
    stale.write_text("decrypted text of a killed export\n")
    live = tmp_path / ".out.jsonl.a11ve0.part"
    live.write_text("an export still running\n")
    other = tmp_path / ".elsewhere.jsonl.k1ll3d.part"
    other.write_text("another target's\n")
    with open(live, "rb") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)  # what a running export holds
        store.export(out)
        assert not stale.exists()
        assert live.exists()
    assert other.exists()
    assert len(_lines(out.read_text())) == 3
    assert sorted(p.name for p in tmp_path.glob(".out.jsonl.*.part")) == [live.name]
