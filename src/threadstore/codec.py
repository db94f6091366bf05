"""How message content and metadata are written to and read from the database.

Without a key, metadata is stored as JSON text and content as plain text. With
``THREADSTORE_ENCRYPTION_KEY`` (a Fernet key, see
``cryptography.fernet.Fernet.generate_key()``), both are stored as Fernet tokens
(prefixed ``fernet:``) and decrypted on read. Filters never need these columns:
``user_id``, ``workspace`` and the timestamps stay plain and indexed.

Reading an encrypted value without the key, or with the wrong key, raises
:class:`~threadstore.errors.ConfigError`; it never returns garbage.

Key rotation: set ``THREADSTORE_ENCRYPTION_KEY`` to the new key and
``THREADSTORE_ENCRYPTION_OLD_KEYS`` to the old ones (comma-separated); values
written with an old key stay readable, and ``threadstore db rotate-key``
re-encrypts every row with the new key, after which the old keys can go.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from .errors import ConfigError

__all__ = ["PREFIX", "Codec"]

PREFIX = "fernet:"
ENV_KEY = "THREADSTORE_ENCRYPTION_KEY"
ENV_OLD_KEYS = "THREADSTORE_ENCRYPTION_OLD_KEYS"


def _fernet(key: str, what: str) -> Fernet:
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
        if key:
            keys = [_fernet(key, ENV_KEY)]
            keys += [_fernet(k, ENV_OLD_KEYS) for k in old_keys if k.strip()]
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
            return value
        return PREFIX + self._fernet.encrypt(value.encode("utf-8")).decode("ascii")

    def decode_text(self, stored: str) -> str:
        if not stored.startswith(PREFIX):
            return stored
        if self._fernet is None:
            raise ConfigError(
                f"the store holds encrypted data: set {ENV_KEY} to the key it was written with"
            )
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
