"""DashScopeRemote turns every SDK outcome into the typed error tree."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from conftest import API_KEY
from threadstore import (
    ConfigError,
    DashScopeRemote,
    RemoteAuthError,
    RemoteError,
    RemoteNotFound,
    RemoteRateLimited,
    RemoteUnavailable,
)
from threadstore.testing import Emulator


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, RemoteError),
        (401, RemoteAuthError),
        (403, RemoteAuthError),
        (404, RemoteNotFound),
        (408, RemoteUnavailable),
        (429, RemoteRateLimited),
        (500, RemoteUnavailable),
        (502, RemoteUnavailable),
    ],
)
@pytest.mark.parametrize("op", ["threads.create", "threads.delete"])
def test_status_codes_become_typed_errors(
    remote: DashScopeRemote, emulator: Emulator, status: int, error: type[RemoteError], op: str
) -> None:
    """Each HTTP status raises its error class carrying status_code and operation."""
    tid = remote.create_thread().id
    emulator.fail(op, status=status, times=1)
    call = remote.create_thread if op == "threads.create" else lambda: remote.delete_thread(tid)
    with pytest.raises(error) as info:
        call()
    assert type(info.value) is error
    assert info.value.status_code == status
    assert info.value.operation == op


def test_429_on_delete_carries_retry_after(remote: DashScopeRemote, emulator: Emulator) -> None:
    """A throttled delete exposes the server's Retry-After in seconds."""
    tid = remote.create_thread().id
    emulator.fail("threads.delete", status=429, retry_after=7, times=1)
    with pytest.raises(RemoteRateLimited) as info:
        remote.delete_thread(tid)
    assert info.value.retry_after == 7
    assert info.value.transient


def test_timeout_and_dropped_connection_are_unavailable(emulator: Emulator) -> None:
    """A hung request times out, and a dropped connection fails, both as RemoteUnavailable."""
    remote = DashScopeRemote(api_key=API_KEY, base_url=emulator.url, timeout=0.5)
    tid = remote.create_thread().id
    emulator.fail("threads.retrieve", hang=True, times=1)
    with pytest.raises(RemoteUnavailable, match="timed out") as info:
        remote.retrieve_thread(tid)
    assert isinstance(info.value.__cause__, requests.Timeout)
    emulator.fail("threads.delete", drop=True, times=1)
    with pytest.raises(RemoteUnavailable):
        remote.delete_thread(tid)
    remote.delete_thread(tid)  # the pool recovers from the dropped connection
    assert not emulator.thread_exists(tid)


def test_unreachable_endpoint_is_unavailable() -> None:
    """Nothing listening: RemoteUnavailable, not a requests exception."""
    remote = DashScopeRemote(api_key=API_KEY, base_url="http://127.0.0.1:9/api/v1", timeout=2)
    with pytest.raises(RemoteUnavailable, match="cannot reach"):
        remote.create_thread()
    with pytest.raises(RemoteUnavailable):
        remote.delete_thread("thread_x")


def test_the_api_key_never_shows_in_repr_or_errors(emulator: Emulator) -> None:
    """Neither the remote's repr nor its error messages contain the key."""
    remote = DashScopeRemote(api_key="sk-very-secret", base_url=emulator.url, timeout=2)
    assert "sk-very-secret" not in repr(remote)
    with pytest.raises(RemoteAuthError) as info:
        remote.create_thread()
    assert "sk-very-secret" not in str(info.value)


def test_bad_timeout_is_a_config_error() -> None:
    """A non-positive timeout is refused at construction."""
    with pytest.raises(ConfigError):
        DashScopeRemote(timeout=0)


def test_deletes_take_the_proxy_from_the_environment(
    emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sweep's pooled deletes go through HTTP(S)_PROXY, unless NO_PROXY names the host."""
    remote = DashScopeRemote(api_key=API_KEY, base_url=emulator.url, timeout=2)
    tid = remote.create_thread().id
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # a proxy that is not there
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    proxied = DashScopeRemote(api_key=API_KEY, base_url=emulator.url, timeout=2)
    with pytest.raises(RemoteUnavailable):
        proxied.delete_thread(tid)
    assert emulator.thread_exists(tid)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    direct = DashScopeRemote(api_key=API_KEY, base_url=emulator.url, timeout=2)
    direct.delete_thread(tid)
    assert not emulator.thread_exists(tid)


def test_a_netrc_login_does_not_replace_the_api_key(
    emulator: Emulator, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The sweep's deletes never send a ~/.netrc login for the host instead of the key.

    (Calls made through the SDK itself — creates, retrieves — read ~/.netrc as the
    plain SDK does; the facade sends exactly what the SDK sends.)
    """
    remote = DashScopeRemote(api_key=API_KEY, base_url=emulator.url, timeout=2)
    tid = remote.create_thread().id
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login someone password elsewhere\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    remote.delete_thread(tid)
    assert not emulator.thread_exists(tid)
