"""API keys for ``/v1`` (and ``/metrics`` unless it is public), configured so that a typo cannot
open the service.

``ANATOMIX_API_KEYS`` holds plain keys, ``ANATOMIX_API_KEY_SHA256`` hex SHA-256 digests of keys
(so that the environment, logs and process listings never hold a usable key); both comma
separated. Entries are stripped; an empty entry, a key shorter than :data:`MIN_KEY_CHARS`, a key
with whitespace or a malformed digest stops the server at start-up with :class:`ConfigError`.
Neither variable set: no authentication. A variable set but blank is an error (an unset
shell variable expanded into it is the usual cause), not an open server.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re

from .limits import ConfigError

MIN_KEY_CHARS = 16
_HEX64 = re.compile(r"[0-9a-f]{64}")


def _entries(var: str, raw: str) -> list[str]:
    if not raw.strip():
        raise ConfigError(
            f"{var} is set but empty; unset it to serve without API keys, or give keys"
        )
    items = [e.strip() for e in raw.split(",")]
    if any(not e for e in items):
        raise ConfigError(
            f"{var} has an empty entry (a stray comma?): every comma-separated entry must be a key"
        )
    return items


class ApiKeys:
    """SHA-256 digests of the accepted keys; :meth:`check` compares in constant time."""

    def __init__(self, digests: list[bytes]):
        self.digests = digests

    @property
    def required(self) -> bool:
        return bool(self.digests)

    @classmethod
    def from_env(cls, env=None) -> ApiKeys:
        env = os.environ if env is None else env
        digests = []
        if (raw := env.get("ANATOMIX_API_KEYS")) is not None:
            for i, key in enumerate(_entries("ANATOMIX_API_KEYS", raw), 1):
                if len(key) < MIN_KEY_CHARS or any(c.isspace() for c in key):
                    raise ConfigError(
                        f"ANATOMIX_API_KEYS entry {i} is not a usable key: keys are at least "
                        f"{MIN_KEY_CHARS} characters without whitespace"
                    )
                digests.append(hashlib.sha256(key.encode()).digest())
        if (raw := env.get("ANATOMIX_API_KEY_SHA256")) is not None:
            for i, hexd in enumerate(_entries("ANATOMIX_API_KEY_SHA256", raw), 1):
                if not _HEX64.fullmatch(hexd.lower()):
                    raise ConfigError(
                        f"ANATOMIX_API_KEY_SHA256 entry {i} is not a SHA-256 hex digest "
                        "(64 hexadecimal characters, e.g. from `printf %s KEY | sha256sum`)"
                    )
                digests.append(bytes.fromhex(hexd))
        return cls(digests)

    def check(self, headers) -> bool:
        """Whether ``headers`` carry an accepted key (``X-API-Key`` or ``Authorization: Bearer``).
        Always True when no key is configured."""
        if not self.digests:
            return True
        given = headers.get("x-api-key", "")
        auth = headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            given = auth[7:]
        given = given.strip()
        if not given:
            return False
        digest = hashlib.sha256(given.encode("utf-8", "surrogateescape")).digest()
        ok = False
        for want in self.digests:  # every digest, so the time taken says nothing about which
            ok |= hmac.compare_digest(digest, want)
        return ok
