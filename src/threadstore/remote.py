"""The remote side: a small ``Remote`` protocol and its DashScope implementation.

This is the only module that imports ``dashscope`` (lazily, see :func:`_sdk`). It exists
so that the rest of threadstore never has to remember the SDK's traps:

* the SDK does **not** raise on HTTP errors; it returns its ordinary result object
  with ``status_code`` 404/429/500… and the success fields missing. Every result
  is checked here and turned into the :mod:`threadstore.errors` tree;
* network failures arrive as ``requests`` exceptions, a missing key as the SDK's
  ``AuthenticationError``: both are translated here too;
* the SDK's default timeout is 300 s; ours is 30 s;
* the SDK opens a new HTTP session per call (about 6.5 ms of CPU each). Deletes,
  which the sweep issues by the thousand, go through one pooled
  ``requests.Session`` instead, with the SDK's own URL, key and workspace
  conventions, which also lets us read ``Retry-After`` on a 429.

``FakeRemote`` in :mod:`threadstore.testing` implements the same protocol in memory.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from .errors import (
    ConfigError,
    RemoteAuthError,
    RemoteError,
    RemoteNotFound,
    RemoteRateLimited,
    RemoteUnavailable,
    UntrustedNotFound,
)
from .models import MessageRecord, RunRecord, utcnow

if TYPE_CHECKING:
    import requests

# requests (with urllib3) is imported where a request is made, or where an
# exception is translated: a command that never talks to DashScope (export,
# stats, list, show) does not pay for it at start-up.

__all__ = [
    "TERMINAL_RUN_STATUSES",
    "DashScopeRemote",
    "Remote",
    "RemoteMessage",
    "RemoteRun",
    "RemoteThread",
    "error_from_status",
    "is_dashscope_error",
]

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://dashscope.aliyuncs.com/api/v1"


@cache
def _sdk() -> Any:
    """The ``dashscope`` module, imported on first use.

    Importing the SDK costs about half a second (it loads every API it has);
    the sweep and the CLI's read-only commands never need it, so they start fast.
    The SDK's classes build their methods from untyped mixins: used as ``Any``.
    """
    import dashscope  # noqa: PLC0415

    return dashscope


@cache
def _sdk_errors() -> tuple[type[BaseException], ...]:
    import requests  # noqa: PLC0415 - see the imports
    from dashscope.common.error import AuthenticationError, InputRequired  # noqa: PLC0415

    return (
        AuthenticationError,
        InputRequired,
        requests.RequestException,
        ValueError,  # requests' JSONDecodeError and json's are ValueErrors
    )


def _loaded_sdk() -> Any:
    """The SDK if this process already imported it (its settings then win), else None."""
    return sys.modules.get("dashscope")


def resolve_api_key(api_key: str | None = None) -> str:
    """The API key by the SDK's own rules, without importing the SDK.

    Order: the argument; ``dashscope.api_key`` if the SDK is loaded;
    ``DASHSCOPE_API_KEY``; the file at ``DASHSCOPE_API_KEY_FILE_PATH``;
    ``~/.dashscope/api_key``. Raises :class:`RemoteAuthError` if none is set.
    Surrounding whitespace is stripped from each (a Kubernetes secret made with
    ``--from-file`` ends in a newline, which no HTTP header may carry).
    """
    if api_key and api_key.strip():
        return api_key.strip()
    sdk = _loaded_sdk()
    if sdk is not None and str(getattr(sdk, "api_key", None) or "").strip():
        return str(sdk.api_key).strip()
    if os.environ.get("DASHSCOPE_API_KEY", "").strip():
        return os.environ["DASHSCOPE_API_KEY"].strip()
    candidates = [os.environ.get("DASHSCOPE_API_KEY_FILE_PATH"), "~/.dashscope/api_key"]
    for candidate in candidates:
        if candidate:
            path = Path(candidate).expanduser()
            if path.is_file():
                key = path.read_text(encoding="utf-8").strip()
                if key:
                    return key
    raise RemoteAuthError("no DashScope API key (set DASHSCOPE_API_KEY)")


def resolve_base_url(base_url: str | None, workspace: str | None) -> str:
    """The API base URL by the SDK's rules (incl. its ``{workspace_id}`` placeholder)."""
    sdk = _loaded_sdk()
    url = (
        base_url
        or (str(sdk.base_http_api_url) if sdk is not None else None)
        or os.environ.get("DASHSCOPE_HTTP_BASE_URL")
        or DEFAULT_BASE_URL
    )
    if "{workspace_id}" in url:
        ws = workspace or os.environ.get("DASHSCOPE_WORKSPACE_ID")
        if not ws:
            raise ConfigError(
                "the DashScope base URL contains {workspace_id} but no workspace is set"
            )
        url = url.replace("{workspace_id}", ws)
    return url.rstrip("/")

DEFAULT_TIMEOUT = 30.0
_USER_AGENT = f"threadstore (python {sys.version_info[0]}.{sys.version_info[1]})"
TERMINAL_RUN_STATUSES = frozenset(
    {"completed", "failed", "cancelled", "expired", "requires_action"}
)


@dataclass(frozen=True)
class RemoteThread:
    """A thread as DashScope returned it."""

    id: str
    created_at: datetime | None
    metadata: dict[str, Any]
    raw: Any = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class _Snapshot:
    """What a remote object adds to the record it is mirrored as: the SDK object
    (``raw``) and its DashScope id under the name ``id``."""

    _id_field: ClassVar[str]
    raw: Any = field(default=None, compare=False, repr=False, kw_only=True)

    @property
    def id(self) -> str:
        return str(getattr(self, self._id_field))


# A remote message or run is the record it is mirrored as (declared once, in models.py):
# a new column is a field of the record only.
@dataclass(frozen=True)
class RemoteMessage(MessageRecord, _Snapshot):
    """A message as DashScope returned it; ``content`` is the joined text parts."""

    _id_field = "message_id"


@dataclass(frozen=True)
class RemoteRun(RunRecord, _Snapshot):
    """A run as DashScope returned it, with its token usage flattened."""

    _id_field = "run_id"


@runtime_checkable
class Remote(Protocol):
    """What threadstore needs from the Assistant API.

    Every method raises a :class:`~threadstore.errors.RemoteError` subclass on
    failure and never returns an error object. ``workspace`` scopes ids.
    """

    def create_thread(
        self,
        *,
        messages: Sequence[Mapping[str, Any]] | None = None,
        metadata: Mapping[str, Any] | None = None,
        workspace: str | None = None,
    ) -> RemoteThread: ...

    def retrieve_thread(self, thread_id: str, *, workspace: str | None = None) -> RemoteThread: ...

    def update_thread(
        self, thread_id: str, *, metadata: Mapping[str, Any], workspace: str | None = None
    ) -> RemoteThread: ...

    def delete_thread(self, thread_id: str, *, workspace: str | None = None) -> None:
        """Delete; raises :class:`RemoteNotFound` when the thread is already gone."""
        ...

    def create_message(
        self,
        thread_id: str,
        content: str,
        *,
        role: str = "user",
        metadata: Mapping[str, Any] | None = None,
        workspace: str | None = None,
    ) -> RemoteMessage: ...

    def list_messages(
        self,
        thread_id: str,
        *,
        after: str | None = None,
        limit: int = 100,
        workspace: str | None = None,
    ) -> tuple[list[RemoteMessage], bool]:
        """One page, oldest first, starting after message id ``after``; and has_more."""
        ...

    def create_run(
        self,
        thread_id: str,
        *,
        assistant_id: str,
        model: str | None = None,
        instructions: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        workspace: str | None = None,
    ) -> RemoteRun: ...

    def retrieve_run(
        self, run_id: str, *, thread_id: str, workspace: str | None = None
    ) -> RemoteRun: ...

    def close(self) -> None: ...


# --------------------------------------------------------------------------- errors


def is_dashscope_error(body: Any) -> bool:
    """True if an error body has DashScope's own shape: ``{"code", "message", "request_id"}``.

    The real service answers every error so: a non-empty string ``code``, a
    string ``message`` and a non-empty ``request_id``. A gateway's unknown-route
    page (a base URL without ``/api/v1``), a proxy's HTML or its own JSON lack
    them. Only a 404 in this shape may mean "the thread does not exist"; see
    :class:`~threadstore.errors.UntrustedNotFound`.
    """
    if not isinstance(body, Mapping):
        return False
    code, message, request_id = body.get("code"), body.get("message"), body.get("request_id")
    return (
        isinstance(code, str)
        and bool(code.strip())
        and isinstance(message, str)
        and isinstance(request_id, str)
        and bool(request_id.strip())
    )


def _untrusted_text(what: str, about: str, base_url: str | None) -> str:
    where = f" at {base_url}" if base_url else ""
    return (
        f"{what}{about}: the endpoint{where} answered 404 in a form DashScope never uses "
        "(not its error JSON): the base URL is probably wrong (it must end in /api/v1; "
        "check DASHSCOPE_HTTP_BASE_URL) or a proxy answers for DashScope; nothing was "
        "taken as deleted"
    )


def error_from_status(
    status_code: int | None,
    *,
    code: str | None = None,
    message: str | None = None,
    request_id: str | None = None,
    operation: str | None = None,
    thread_id: str | None = None,
    retry_after: float | None = None,
    response: Any = None,
    shaped: bool = True,
    base_url: str | None = None,
) -> RemoteError:
    """Build the typed error for an HTTP status (the one mapping threadstore uses).

    ``shaped`` tells whether the error body had DashScope's shape
    (:func:`is_dashscope_error`): a 404 without it is an
    :class:`~threadstore.errors.UntrustedNotFound`, never a ``RemoteNotFound``.
    """
    what = operation or "DashScope call"
    about = f" for {thread_id}" if thread_id else ""
    detail = f": {code or ''}{' ' if code and message else ''}{message or ''}".rstrip(": ")
    text = f"{what}{about} failed with HTTP {status_code}{detail}"
    if request_id:
        text += f" (request_id {request_id})"
    kw: dict[str, Any] = {
        "status_code": status_code,
        "code": code,
        "request_id": request_id,
        "operation": operation,
        "thread_id": thread_id,
        "response": response,
    }
    if status_code == 404 and not shaped:
        return UntrustedNotFound(
            _untrusted_text(what, about, base_url), cause="endpoint", **kw
        )
    if status_code == 404:
        return RemoteNotFound(text, **kw)
    if status_code in (401, 403):
        return RemoteAuthError(text, **kw)
    if status_code == 429:
        return RemoteRateLimited(text, retry_after=retry_after, **kw)
    if status_code is not None and (status_code >= 500 or status_code == 408):
        return RemoteUnavailable(text, **kw)
    return RemoteError(text, **kw)


def _translate_exception(
    exc: BaseException, operation: str, thread_id: str | None
) -> ThreadStoreErrorLike:
    import requests  # noqa: PLC0415 - see the imports

    about = f" for {thread_id}" if thread_id else ""
    # The SDK's own exceptions can only come from SDK calls, i.e. once it is loaded.
    sdk_errors = _sdk_errors() if _loaded_sdk() is not None else ()
    if sdk_errors and isinstance(exc, sdk_errors[0]):
        return RemoteAuthError(
            f"{operation}{about}: no DashScope API key (set DASHSCOPE_API_KEY)",
            operation=operation,
            thread_id=thread_id,
        )
    if sdk_errors and isinstance(exc, sdk_errors[1]):
        return ConfigError(f"{operation}{about}: {exc}")
    if isinstance(exc, requests.Timeout):
        return RemoteUnavailable(
            f"{operation}{about} timed out",
            operation=operation,
            thread_id=thread_id,
            outcome_unknown=not isinstance(exc, requests.ConnectTimeout),
        )
    if isinstance(exc, requests.ConnectionError):
        return RemoteUnavailable(
            f"{operation}{about}: cannot reach DashScope ({type(exc).__name__})",
            operation=operation,
            thread_id=thread_id,
            outcome_unknown=_dropped_mid_request(exc),
        )
    # A 200 whose body is not JSON: a proxy or a broken gateway; worth retrying.
    return RemoteUnavailable(
        f"{operation}{about}: unreadable answer ({type(exc).__name__})",
        operation=operation,
        thread_id=thread_id,
    )


ThreadStoreErrorLike = RemoteError | ConfigError


def _key_leak(
    exc: BaseException, key: str | None, operation: str, about: str | None
) -> RemoteAuthError | None:
    """The RemoteAuthError to raise, unchained, if ``exc`` cannot go out without the key.

    ``requests`` refuses a header with a control character in it and quotes the
    whole header (``Bearer <key>``) in its message; chained as ``__cause__``, the
    key would land in any traceback an application logs. Such a key is never
    going to work: an auth error (the sweep stops), not a transient one.
    """
    import requests  # noqa: PLC0415 - see the imports

    text = str(exc)
    if isinstance(exc, requests.exceptions.InvalidHeader) or (key and key in text):
        where = f" for {about}" if about else ""
        return RemoteAuthError(
            f"{operation}{where}: the DashScope API key cannot be sent (it contains "
            "whitespace or control characters inside it); check DASHSCOPE_API_KEY",
            operation=operation,
            thread_id=about,
        )
    return None


def _dropped_mid_request(exc: requests.ConnectionError) -> bool:
    """True if the connection broke after the request went out (not a refused connect)."""
    from urllib3.exceptions import MaxRetryError, ProtocolError  # noqa: PLC0415

    reason = exc.args[0] if exc.args else None
    if isinstance(reason, MaxRetryError):
        reason = reason.reason
    return isinstance(reason, ProtocolError)



def _check(
    result: Any, operation: str, thread_id: str | None = None, base_url: str | None = None
) -> Any:
    """Return ``result`` if the SDK call succeeded, else raise the typed error."""
    status = getattr(result, "status_code", None)
    if status in (200, 201):
        return result
    fields = {name: getattr(result, name, None) for name in ("code", "message", "request_id")}
    raise error_from_status(
        status,
        code=fields["code"] or None,
        message=fields["message"] or None,
        request_id=fields["request_id"] or None,
        operation=operation,
        thread_id=thread_id,
        response=result,
        # The SDK copies an error JSON's keys onto its result; a text or HTML body
        # leaves only ``message``.
        shaped=is_dashscope_error(fields),
        base_url=base_url,
    )


# --------------------------------------------------------------------------- parsing


def _ts(value: Any) -> datetime | None:
    """DashScope timestamps are epoch milliseconds (some fields seconds)."""
    if value in (None, "", 0):
        return None
    number = float(value)
    if number > 1e11:
        number /= 1000.0
    return datetime.fromtimestamp(number, tz=timezone.utc)


def _get(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _text_of(content: Any) -> str:
    """Join the text parts of a message's ``content`` (a list of typed parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for part in content:
        text = _get(part, "text")
        value = _get(text, "value") if text is not None else None
        if isinstance(value, str):
            parts.append(value)
        elif isinstance(text, str):
            parts.append(text)
    return "".join(parts)


def _metadata(value: Any) -> dict[str, Any]:
    if isinstance(value, Mapping):
        return dict(value)
    return {}


def _error_text(value: Any) -> str | None:
    if not value:
        return None
    if isinstance(value, str):
        return value
    code, message = _get(value, "code"), _get(value, "message")
    return ": ".join(str(p) for p in (code, message) if p) or str(value)


def parse_thread(obj: Any) -> RemoteThread:
    return RemoteThread(
        id=str(_get(obj, "id")),
        created_at=_ts(_get(obj, "created_at")),
        metadata=_metadata(_get(obj, "metadata")),
        raw=obj,
    )


def parse_message(obj: Any, thread_id: str | None = None) -> RemoteMessage:
    return RemoteMessage(
        message_id=str(_get(obj, "id")),
        thread_id=str(_get(obj, "thread_id") or thread_id),
        role=str(_get(obj, "role") or "user"),
        content=_text_of(_get(obj, "content")),
        created_at=_ts(_get(obj, "created_at")) or utcnow(),
        run_id=_get(obj, "run_id") or None,
        assistant_id=_get(obj, "assistant_id") or None,
        metadata=_metadata(_get(obj, "metadata")),
        raw=obj,
    )


def parse_run(obj: Any, thread_id: str | None = None) -> RemoteRun:
    usage = _get(obj, "usage")

    def tokens(name: str) -> int | None:
        value = _get(usage, name) if usage is not None else None
        return int(value) if value is not None else None

    return RemoteRun(
        run_id=str(_get(obj, "id")),
        thread_id=str(_get(obj, "thread_id") or thread_id),
        status=str(_get(obj, "status") or "queued"),
        assistant_id=_get(obj, "assistant_id") or None,
        model=_get(obj, "model") or None,
        created_at=_ts(_get(obj, "created_at")) or utcnow(),
        started_at=_ts(_get(obj, "started_at")),
        completed_at=_ts(_get(obj, "completed_at")),
        failed_at=_ts(_get(obj, "failed_at")),
        last_error=_error_text(_get(obj, "last_error")),
        prompt_tokens=tokens("prompt_tokens") if usage is not None else None,
        completion_tokens=tokens("completion_tokens") if usage is not None else None,
        total_tokens=tokens("total_tokens") if usage is not None else None,
        raw=obj,
    )


# --------------------------------------------------------------------------- DashScope


class DashScopeRemote:
    """:class:`Remote` over the real ``dashscope`` SDK.

    ``api_key`` defaults to the SDK's own rules (``DASHSCOPE_API_KEY``, then
    ``DASHSCOPE_API_KEY_FILE_PATH``); ``base_url`` to ``DASHSCOPE_HTTP_BASE_URL``
    (read by the SDK at import, which is how the emulator is reached).
    ``timeout`` bounds every request, in seconds. ``pool_size`` is the number of
    kept-alive connections of the pooled delete transport: at least the sweep's
    ``concurrency`` (urllib3 discards and logs the extras); a connection is only
    opened when needed, so a large pool costs nothing.
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        pool_size: int = 256,
    ) -> None:
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not math.isfinite(timeout)
            or not 0 < timeout <= 3600
        ):
            raise ConfigError(
                f"timeout must be a number of seconds above 0 and at most 3600, not {timeout!r}"
            )
        if api_key is not None and not isinstance(api_key, str):
            raise ConfigError("api_key must be a string")
        self._api_key = api_key.strip() if api_key is not None else None
        self._base_url = base_url
        self.timeout = timeout
        self._pool_size = pool_size
        self._session: requests.Session | None = None
        self._proxy_cache: dict[str, dict[str, str]] = {}
        self._delete_key: str | None = None
        self._session_lock = threading.Lock()

    def __repr__(self) -> str:  # never show the key
        return f"DashScopeRemote(base_url={self.base_url!r}, timeout={self.timeout})"

    @property
    def base_url(self) -> str:
        return resolve_base_url(self._base_url, None)

    def _kw(self, workspace: str | None) -> dict[str, Any]:
        # Always the resolved, stripped key: left to itself the SDK would send
        # DASHSCOPE_API_KEY as it is, trailing newline and all.
        kw: dict[str, Any] = {
            "workspace": workspace,
            "request_timeout": self.timeout,
            "api_key": resolve_api_key(self._api_key),
        }
        if self._base_url is not None:
            kw["base_address"] = self._base_url
        return kw

    def _call(
        self, operation: str, about: str | None, fn: Any, /, *a: Any, **kw: Any
    ) -> Any:
        try:
            result = fn(*a, **kw)
        except _sdk_errors() as exc:
            leak = _key_leak(exc, kw.get("api_key"), operation, about)
            if leak is None:
                raise _translate_exception(exc, operation, about) from exc
        else:
            return _check(result, operation, about, self._shown_base_url())
        raise leak  # outside the handler: no __context__ holding the key either

    def _shown_base_url(self) -> str | None:
        try:
            return self.base_url
        except ConfigError:
            return None

    # -- threads

    def create_thread(
        self,
        *,
        messages: Sequence[Mapping[str, Any]] | None = None,
        metadata: Mapping[str, Any] | None = None,
        workspace: str | None = None,
    ) -> RemoteThread:
        result = self._call(
            "threads.create",
            None,
            _sdk().Threads.create,
            messages=[dict(m) for m in messages] if messages else None,
            metadata=dict(metadata) if metadata else None,
            **self._kw(workspace),
        )
        return parse_thread(result)

    def retrieve_thread(self, thread_id: str, *, workspace: str | None = None) -> RemoteThread:
        result = self._call(
            "threads.retrieve",
            thread_id,
            _sdk().Threads.retrieve,
            thread_id,
            **self._kw(workspace),
        )
        return parse_thread(result)

    def update_thread(
        self, thread_id: str, *, metadata: Mapping[str, Any], workspace: str | None = None
    ) -> RemoteThread:
        result = self._call(
            "threads.update",
            thread_id,
            _sdk().Threads.update,
            thread_id,
            metadata=dict(metadata),
            **self._kw(workspace),
        )
        return parse_thread(result)

    def delete_thread(self, thread_id: str, *, workspace: str | None = None) -> None:
        """``DELETE threads/{id}`` over the pooled session; 404 raises RemoteNotFound."""
        import requests  # noqa: PLC0415 - see the imports

        operation = "threads.delete"
        if self._delete_key is None:
            # Resolved once: the sweep deletes by the thousand, and the key may
            # live in a file that would otherwise be read on every delete.
            self._delete_key = resolve_api_key(self._api_key)
        headers = {
            "Authorization": f"Bearer {self._delete_key}",
            "Accept": "application/json; charset=utf-8",
            "User-Agent": _USER_AGENT,
        }
        if workspace is not None:
            headers["X-DashScope-WorkSpace"] = workspace
        base = resolve_base_url(self._base_url, workspace)
        leak: RemoteAuthError | None = None
        try:
            response = self._pooled().delete(
                f"{base}/threads/{thread_id}",
                headers=headers,
                timeout=self.timeout,
                proxies=self._proxies(base),
            )
        except (requests.RequestException, ValueError) as exc:
            leak = _key_leak(exc, self._delete_key, operation, thread_id)
            if leak is None:
                raise _translate_exception(exc, operation, thread_id) from exc
        if leak is not None:
            raise leak  # outside the handler: no __context__ holding the key either
        body = _json_or_none(response)
        if response.status_code == 200 and body is not None and body.get("deleted") is not False:
            log.debug("deleted remote thread %s", thread_id)
            return
        retry_after = _retry_after(response.headers.get("Retry-After"))
        status = response.status_code
        if status == 200:  # a 200 that did not confirm the delete is not a success
            status = 502
        raise error_from_status(
            status,
            code=(body or {}).get("code"),
            message=(body or {}).get("message") or (None if body else response.reason),
            request_id=(body or {}).get("request_id") or response.headers.get("X-Request-Id"),
            operation=operation,
            thread_id=thread_id,
            retry_after=retry_after,
            shaped=is_dashscope_error(body),
            base_url=base,
        )

    def _pooled(self) -> requests.Session:
        with self._session_lock:
            if self._session is None:
                import requests  # noqa: PLC0415 - see the imports
                from requests.adapters import HTTPAdapter  # noqa: PLC0415

                session = requests.Session()
                adapter = HTTPAdapter(
                    pool_connections=4, pool_maxsize=self._pool_size, max_retries=0
                )
                session.mount("http://", adapter)
                session.mount("https://", adapter)
                # The environment is read here, once, not on every delete: left to
                # itself requests scans os.environ for proxies twice per request (a
                # third of its own CPU per delete) and reads ~/.netrc, whose
                # login would replace our Bearer header. The proxies are passed
                # per request (_proxies); the CA bundle is requests' own choice.
                session.trust_env = False
                session.verify = (
                    os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
                )
                self._session = session
            return self._session

    def _proxies(self, base: str) -> dict[str, str]:
        """The environment's proxies for ``base`` (HTTP(S)_PROXY, NO_PROXY), read once."""
        proxies = self._proxy_cache.get(base)
        if proxies is None:
            from requests.utils import get_environ_proxies  # noqa: PLC0415 - see the imports

            proxies = self._proxy_cache[base] = get_environ_proxies(base)
        return proxies

    # -- messages

    def create_message(
        self,
        thread_id: str,
        content: str,
        *,
        role: str = "user",
        metadata: Mapping[str, Any] | None = None,
        workspace: str | None = None,
    ) -> RemoteMessage:
        result = self._call(
            "messages.create",
            thread_id,
            _sdk().Messages.create,
            thread_id,
            content=content,
            role=role,
            metadata=dict(metadata) if metadata else None,
            **self._kw(workspace),
        )
        return parse_message(result, thread_id)

    def list_messages(
        self,
        thread_id: str,
        *,
        after: str | None = None,
        limit: int = 100,
        workspace: str | None = None,
    ) -> tuple[list[RemoteMessage], bool]:
        result = self._call(
            "messages.list",
            thread_id,
            _sdk().Messages.list,
            thread_id,
            limit=limit,
            order="asc",
            after=after,
            **self._kw(workspace),
        )
        data = _get(result, "data") or []
        return [parse_message(m, thread_id) for m in data], bool(_get(result, "has_more"))

    # -- runs

    def create_run(
        self,
        thread_id: str,
        *,
        assistant_id: str,
        model: str | None = None,
        instructions: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        workspace: str | None = None,
    ) -> RemoteRun:
        result = self._call(
            "runs.create",
            thread_id,
            _sdk().Runs.create,
            thread_id,
            assistant_id=assistant_id,
            model=model,
            instructions=instructions,
            metadata=dict(metadata) if metadata else None,
            **self._kw(workspace),
        )
        return parse_run(result, thread_id)

    def retrieve_run(
        self, run_id: str, *, thread_id: str, workspace: str | None = None
    ) -> RemoteRun:
        result = self._call(
            "runs.retrieve",
            thread_id,
            _sdk().Runs.retrieve,
            run_id,
            thread_id=thread_id,
            **self._kw(workspace),
        )
        return parse_run(result, thread_id)

    def close(self) -> None:
        with self._session_lock:
            if self._session is not None:
                self._session.close()
                self._session = None


def _json_or_none(response: requests.Response) -> dict[str, Any] | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP-date; rare enough to fall back to our own backoff


# --------------------------------------------------------------------------- facade helpers


def check_delete_result(result: Any, thread_id: str) -> None:
    """Raise the typed error unless the SDK's ``Threads.delete`` answer confirms the delete.

    For the facade, which sends the SDK's own request and lets the store judge the
    answer as it judges its own deletes.
    """
    _check(result, "threads.delete", thread_id)
    if getattr(result, "deleted", None) is not True:  # a 200 that did not confirm it
        raise error_from_status(
            502, message="the delete was not confirmed", operation="threads.delete",
            thread_id=thread_id, response=result,
        )


def outcome_unknown(exc: BaseException) -> bool:
    """Whether a create that raised ``exc`` may have happened remotely all the same.

    Not when the SDK refused before sending (its own exceptions: no key, a required
    input missing) or the connection was never made; otherwise — a timeout after
    sending, a connection dropped mid-request, an answer the SDK could not read —
    it may have.
    """
    if _loaded_sdk() is not None:
        from dashscope.common.error import DashScopeException  # noqa: PLC0415

        if isinstance(exc, DashScopeException):
            return False
    import requests  # noqa: PLC0415 - see the imports

    if isinstance(exc, requests.RequestException):
        translated = _translate_exception(exc, "threads.create", None)
        return bool(getattr(translated, "outcome_unknown", False))
    return True
