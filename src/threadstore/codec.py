"""How message content and metadata are written to and read from the database.

Without a key, metadata is stored as JSON text and content as plain text. With
``THREADSTORE_ENCRYPTION_KEY`` (a Fernet key, see
``cryptography.fernet.Fernet.generate_key()``), both are stored as Fernet tokens
(prefixed ``fernet:``) and decrypted on read. Filters never need these columns:
``user_id``, ``workspace`` and the timestamps stay plain and indexed.

Reading an encrypted value without the key, or with the wrong key, raises
:class:`~threadstore.errors.ConfigError`; it never returns garbage.

Key rotation: set ``THREADSTORE_ENCRYPTION_KEY`` to the new key and
``THREADSTORE_ENCRYPTION_OLD_KEYS`` to the old ones (comma-separated) in every
process that writes to the store; values written with an old key stay readable.
Then ``threadstore db rotate-key`` (:meth:`ThreadStore.rotate_key`) re-encrypts
every row with the new key, in batches of short transactions, after which the old
keys can go. The same command encrypts the plain rows of a store that had no key
before. It can be interrupted and rerun: rows already under the new key are
skipped.

**The JSON form of records** is defined here too, once: :func:`jsonable` turns
records (frozen dataclasses) into JSON-ready values — timestamps as ISO 8601 in
UTC with microseconds and an explicit offset (``2026-01-02T03:04:05.123456+00:00``),
durations as whole seconds — and :func:`to_json` is the one encoder. The sweep
archive, ``show --json``/``list --json`` and the JSONL export all use them, so the
same record reads the same everywhere.

Text containing NUL (``\\x00``) is refused with ConfigError on every backend:
PostgreSQL's ``text`` cannot hold it, and a store must behave the same whatever
its database.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from sqlalchemy import Column, Connection, Table, select, update

from .errors import ConfigError

if TYPE_CHECKING:
    # cryptography is imported only once a key is given: it costs every start-up
    # (a cron sweep's included) tens of milliseconds, and most stores have no key.
    from cryptography.fernet import Fernet, MultiFernet

__all__ = [
    "PLAIN_PREFIX",
    "PREFIX",
    "Codec",
    "dump_lines",
    "dump_ready",
    "iso",
    "jsonable",
    "refuse_nul",
    "to_json",
]

PREFIX = "fernet:"
# Plain text that happens to start with a prefix is stored escaped behind this one,
# so a message reading "fernet:…" is never mistaken for a token.
PLAIN_PREFIX = "plain:"
ENV_KEY = "THREADSTORE_ENCRYPTION_KEY"
ENV_OLD_KEYS = "THREADSTORE_ENCRYPTION_OLD_KEYS"


def refuse_nul(value: str | None, what: str) -> None:
    """ConfigError if ``value`` contains NUL, which PostgreSQL text cannot store."""
    if value is not None and "\x00" in value:
        raise ConfigError(f"{what} must not contain NUL (\\x00) characters")


def _fernet(key: str, what: str) -> Fernet:
    from cryptography.fernet import Fernet  # noqa: PLC0415 - only with a key (see above)

    try:
        return Fernet(key.strip().encode("ascii"))
    except (ValueError, TypeError, UnicodeEncodeError) as exc:
        raise ConfigError(
            f"{what} is not a valid Fernet key (32 url-safe base64-encoded bytes)"
        ) from exc


class Codec:
    """Encode/decode the sensitive columns; encrypts when a key is given."""

    def __init__(self, key: str | None = None, old_keys: tuple[str, ...] = ()) -> None:
        self._fernet: MultiFernet | None = None
        self._primary: Fernet | None = None
        if key:
            self._primary = _fernet(key, ENV_KEY)
            keys = [self._primary]
            keys += [_fernet(k, ENV_OLD_KEYS) for k in old_keys if k.strip()]
            from cryptography.fernet import MultiFernet  # noqa: PLC0415 - only with a key

            self._fernet = MultiFernet(keys)

    @classmethod
    def from_env(cls) -> Codec:
        old = tuple(os.environ.get(ENV_OLD_KEYS, "").split(","))
        return cls(os.environ.get(ENV_KEY) or None, old)

    @property
    def encrypts(self) -> bool:
        return self._fernet is not None

    # -- text

    def encode_text(self, value: str) -> str:
        if self._fernet is None:
            return PLAIN_PREFIX + value if value.startswith((PREFIX, PLAIN_PREFIX)) else value
        return PREFIX + self._fernet.encrypt(value.encode("utf-8")).decode("ascii")

    def decode_text(self, stored: str) -> str:
        if stored.startswith(PLAIN_PREFIX):
            return stored[len(PLAIN_PREFIX) :]
        if not stored.startswith(PREFIX):
            return stored
        if self._fernet is None:
            raise ConfigError(
                f"the store holds encrypted data: set {ENV_KEY} to the key it was written with"
            )
        from cryptography.fernet import InvalidToken  # noqa: PLC0415 - loaded with the key

        try:
            return self._fernet.decrypt(stored[len(PREFIX) :].encode("ascii")).decode("utf-8")
        except InvalidToken as exc:
            raise ConfigError(
                f"{ENV_KEY} does not decrypt this store (wrong key? for rotation set "
                f"{ENV_OLD_KEYS})"
            ) from exc

    def rotate_text(self, stored: str) -> str:
        """Re-encrypt a stored value with the current key (plain text gets encrypted)."""
        return self.encode_text(self.decode_text(stored))

    def is_current(self, stored: str) -> bool:
        """True if ``stored`` is already as this codec would write it (no rotation due)."""
        if self._primary is None:
            return not stored.startswith(PREFIX)
        if not stored.startswith(PREFIX):
            return False
        from cryptography.fernet import InvalidToken  # noqa: PLC0415 - loaded with the key

        try:
            self._primary.decrypt(stored[len(PREFIX) :].encode("ascii"))
        except InvalidToken:
            return False
        return True

    def rotate_page(
        self,
        conn: Connection,
        table: Table,
        key: Column[Any],
        columns: tuple[Column[Any], ...],
        *,
        after: str | None,
        limit: int,
    ) -> tuple[str | None, int]:
        """Re-encrypt one page of ``table`` (ordered by ``key``, after ``after``).

        Returns the last key of the page (None when the table is done) and how many
        rows were rewritten. Each row is updated only if its values are unchanged
        since they were read, so a concurrent writer's newer value is never lost.
        """
        if self._fernet is None:
            raise ConfigError(f"set {ENV_KEY} to the key to encrypt with")
        query = select(key, *columns).order_by(key).limit(limit)
        if after is not None:
            query = query.where(key > after)
        rows = conn.execute(query).all()
        rewritten = 0
        for row in rows:
            old = {c.name: row._mapping[c.name] for c in columns}
            new = {
                name: self.rotate_text(value)
                for name, value in old.items()
                if value is not None and not self.is_current(value)
            }
            if not new:
                continue
            unchanged = [table.c[name] == old[name] for name in new]
            done = conn.execute(
                update(table).where(key == row._mapping[key.name], *unchanged).values(**new)
            )
            rewritten += done.rowcount
        return (rows[-1]._mapping[key.name] if len(rows) == limit else None), rewritten

    # -- JSON

    @staticmethod
    def dumps(value: Mapping[str, Any] | None) -> str:
        """JSON text for metadata; raises ConfigError if it cannot be JSON."""
        if value is not None and not isinstance(value, Mapping):
            raise ConfigError(f"metadata must be a mapping, not {type(value).__name__}")
        try:
            return json.dumps(dict(value or {}), ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"metadata must be JSON-serializable: {exc}") from exc

    def encode_json(self, value: Mapping[str, Any] | None) -> str:
        return self.encode_text(self.dumps(value))

    def decode_json(self, stored: str | None) -> dict[str, Any]:
        if not stored:
            return {}
        loaded = json.loads(self.decode_text(stored))
        return loaded if isinstance(loaded, dict) else {}


# --------------------------------------------------------------------------- JSON form


def iso(value: datetime) -> str:
    """A timestamp in the records' JSON form: UTC, microseconds, explicit offset."""
    return value.astimezone(timezone.utc).isoformat(timespec="microseconds")


def jsonable(value: Any) -> Any:
    """Records (dataclasses) as JSON-ready values; see the module docstring.

    A dataclass field whose metadata says ``{"json": False}`` (a run's
    ``messages``, which are records of another kind) is left out.
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: jsonable(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if f.metadata.get("json", True)
        }
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, timedelta):
        return int(value.total_seconds())
    if isinstance(value, Mapping):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def _default(value: Any) -> Any:
    """Values JSON has no type for: MySQL's DECIMAL sums (integral ones as ints)."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


# The portable encoders: the same bytes as orjson's (compact, or indented by two).
_ENCODE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=_default).encode
_ENCODE_INDENTED = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ": "), indent=2, default=_default
).encode

try:  # orjson: a dependency on CPython, 2-3x the json module on exports
    import orjson
except ImportError:  # pragma: no cover - PyPy and other interpreters
    orjson = None  # type: ignore[assignment]


def dump_ready(value: Any, *, indent: bool = False) -> str:
    """The one JSON encoder (UTF-8 text, not ASCII-escaped), for JSON-ready values.

    Compact, or indented by two spaces; orjson when installed, else the json
    module, writing the same text (numbers aside: the two spell some floats
    differently, e.g. ``1e-05``). Everything else uses :func:`to_json`.
    """
    if orjson is not None:
        option = orjson.OPT_NON_STR_KEYS | (orjson.OPT_INDENT_2 if indent else 0)
        try:
            return orjson.dumps(value, _default, option).decode("utf-8")
        except orjson.JSONEncodeError:
            pass  # e.g. an integer beyond 64 bits, which the json module writes
    return (_ENCODE_INDENTED if indent else _ENCODE)(value)


def dump_lines(values: Iterable[Any]) -> bytes:
    """JSON lines (each ended by ``\\n``) as UTF-8 bytes: the JSONL export's batches."""
    values = list(values)
    if orjson is not None:
        dumps, option = orjson.dumps, orjson.OPT_NON_STR_KEYS | orjson.OPT_APPEND_NEWLINE
        try:
            return b"".join([dumps(v, _default, option) for v in values])
        except orjson.JSONEncodeError:
            pass
    return "".join([_ENCODE(v) + "\n" for v in values]).encode("utf-8")


def to_json(value: Any, *, indent: bool = False) -> str:
    """Records (and anything holding them) as JSON text in the records' form."""
    return dump_ready(jsonable(value), indent=indent)
