"""The API keys a request must carry, kept current while the replica runs.

The stack writes the keys into one file (a 0600 file of the local supervisor, a
directory the Compose controller mounts read-only, a Nomad template); `stack up`
rewrites it when `gateway.api_keys` changes. The replica looks at the file's
identity (inode, size, modification time) at most every `CHECK_EVERY` seconds,
on a request or a health probe, and reads it again when that changed: a revoked
key is refused within seconds, a new one works, and no replica restarts.

`generation` names the file's state the replica applies (never the keys): the
controller reads it off /healthz, so `stack up` returns only once every replica
applies the keys it wrote. An unreadable file keeps the keys read last (a
half-written or vanished file never opens a closed stack).
"""

from __future__ import annotations

import hmac
import logging
import os
import time
from typing import Any

LOGGER = logging.getLogger("serving")
CHECK_EVERY = 0.5  # seconds between looks at the keys file


class ApiKeys:
    def __init__(self, inline: list[str], file: str | None) -> None:
        self._inline = [key.encode() for key in inline]
        self._file = file
        self._identity: tuple[int, int, int] | None = None
        self._next_check = 0.0
        self.keys: list[bytes] = list(self._inline)
        if file is not None:
            self._identity = _identity(file)
            self.keys = self._inline + _read(file)  # at start an unreadable file is the replica's error

    @property
    def generation(self) -> str:
        """The keys file's state as applied: `INODE-MTIME_NS` ("" without a file)."""
        if self._identity is None:
            return ""
        inode, _size, mtime = self._identity
        return f"{inode}-{mtime}"

    def generation_now(self) -> str:
        """`generation` after a look at the file (a health probe asks: keys apply without a request)."""
        self.current()
        return self.generation

    def current(self) -> list[bytes]:
        """The keys now: the file is looked at again once CHECK_EVERY has passed."""
        if self._file is not None:
            now = time.monotonic()
            if now >= self._next_check:
                self._next_check = now + CHECK_EVERY
                self._refresh(self._file)
        return self.keys

    def _refresh(self, file: str) -> None:
        try:
            identity = _identity(file)
        except ValueError as exc:
            LOGGER.warning(f"{exc}; the keys read last still apply")
            return
        if identity == self._identity:
            return
        try:
            keys = self._inline + _read(file)
        except ValueError as exc:
            LOGGER.warning(f"{exc}; the keys read last still apply")
            return
        changed = keys != self.keys
        self.keys, self._identity = keys, identity
        if changed:
            LOGGER.info(f"API keys reloaded from {file}: {len(keys)} key(s)" + ("" if keys else "; the API is open"))


def _identity(file: str) -> tuple[int, int, int]:
    try:
        found = os.stat(file)
    except OSError as exc:
        raise ValueError(f"cannot read the API keys file {file}: {exc.strerror or exc}") from None
    return found.st_ino, found.st_size, found.st_mtime_ns


def _read(file: str) -> list[bytes]:
    """One key per line; blank lines and # comments skipped."""
    try:
        with open(file, "rb") as handle:
            text = handle.read().decode()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise ValueError(f"cannot read the API keys file {file}: {reason}") from None
    return [line.strip().encode() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def carries_key(headers: Any, keys: list[bytes]) -> bool:
    """`X-API-Key: KEY` or `Authorization: Bearer KEY` (scheme in any case) carries one of `keys`."""
    candidates = []
    if "X-API-Key" in headers:
        candidates.append(headers["X-API-Key"].strip())
    scheme, _, token = headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() == "bearer":
        candidates.append(token.strip())
    for given in candidates:
        try:
            raw = given.encode()
        except UnicodeError:  # bytes no key can hold: not a match, never a 500
            continue
        # Compare with every key in constant time, so timing reveals nothing about them.
        if any(hmac.compare_digest(raw, key) for key in keys):
            return True
    return False
