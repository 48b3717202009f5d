"""The API keys a request must carry, kept current while the replica runs.

The stack writes the keys into one file (a 0600 file of the local supervisor, a
directory the Compose controller mounts read-only, a Nomad template); `stack up`
rewrites it when `gateway.api_keys` changes. The replica looks at the file's
identity (inode, size, modification time) at most every `CHECK_EVERY` seconds,
on a request or a health probe, and reads it again when that changed: a revoked
key is refused within seconds, a new one works, and no replica restarts.

Named keys (`gateway.keys`) are lines holding a JSON object: `{"name": ..., "key": ..., "priority": ...,
"rate": ..., "burst": ..., "concurrency": ..., "apis": [...]}` (`KeyEntry`); a plain line is an unnamed key of
normal priority (`gateway.api_keys`). A replica finds which key a request carries (its name and priority: the
usage it is counted under, the order it is served in); the stack's controller enforces the rates,
concurrency and APIs of each (stack.control.tenants).

`generation` names the file's state the replica applies (never the keys): the
controller reads it off /healthz, so `stack up` returns only once every replica
applies the keys it wrote. An unreadable file keeps the keys read last (a
half-written or vanished file never opens a closed stack).
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

LOGGER = logging.getLogger("serving")
CHECK_EVERY = 0.5  # seconds between looks at the keys file


PRIORITIES = ("high", "normal", "low")  # highest first
RANK = {name: rank for rank, name in enumerate(PRIORITIES)}  # a priority's place in an ordered queue
KEY = web.RequestKey("stack_key", object)  # the request's KeyEntry, once a replica found it
RANK_KEY = web.RequestKey("stack_rank", int)  # ... and its priority's rank
LEASE_HEADER = "X-Stack-Lease"  # set by the gateway (the controller's forwardAuth answer) for named keys


@dataclass(frozen=True)
class KeyEntry:
    """One API key as the keys file holds it."""

    key: bytes
    name: str = ""  # "" for an unnamed key (gateway.api_keys)
    priority: str = "normal"
    rate: float | None = None  # requests per second, stack-wide; None: unlimited
    burst: int | None = None  # the token bucket's size (default: the per-second rate, at least 1)
    concurrency: int | None = None  # requests in flight, stack-wide; None: unlimited
    apis: tuple[str, ...] | None = None  # the APIs (and splitters) it may call; None: all

    def to_line(self) -> str:
        """Its line in the keys file (JSON for a named key, the bare key otherwise)."""
        if not self.name:
            return self.key.decode()
        data: dict[str, Any] = {"name": self.name, "key": self.key.decode(), "priority": self.priority}
        for field in ("rate", "burst", "concurrency"):
            if getattr(self, field) is not None:
                data[field] = getattr(self, field)
        if self.apis is not None:
            data["apis"] = list(self.apis)
        return json.dumps(data, sort_keys=True)

    @property
    def bucket(self) -> int:
        return self.burst if self.burst is not None else max(1, int(self.rate or 1))


def parse_keys(text: str) -> list[KeyEntry]:
    """The keys of a keys file's text; ValueError naming the line of one that is not valid."""
    entries = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not line.startswith("{"):
            entries.append(KeyEntry(line.encode()))
            continue
        try:
            data = json.loads(line)
            apis = data.get("apis")
            entry = KeyEntry(
                str(data["key"]).encode(),
                str(data["name"]),
                str(data.get("priority", "normal")),
                float(data["rate"]) if data.get("rate") is not None else None,
                int(data["burst"]) if data.get("burst") is not None else None,
                int(data["concurrency"]) if data.get("concurrency") is not None else None,
                tuple(str(a) for a in apis) if apis is not None else None,
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"line {number} of the API keys file is not a valid named key: {exc}") from None
        if entry.priority not in PRIORITIES:
            raise ValueError(
                f"line {number} of the API keys file: priority {entry.priority!r} is not one of {PRIORITIES}"
            )
        entries.append(entry)
    return entries


class ApiKeys:
    def __init__(self, inline: list[str], file: str | None) -> None:
        self._inline = [KeyEntry(key.encode()) for key in inline]
        self._file = file
        self._identity: tuple[int, int, int] | None = None
        self._next_check = 0.0
        self.entries: list[KeyEntry] = list(self._inline)
        self.keys: list[bytes] = [e.key for e in self.entries]
        if file is not None:
            self._identity = _identity(file)
            self._set(self._inline + _read(file))  # at start an unreadable file is the replica's error

    def _set(self, entries: list[KeyEntry]) -> None:
        self.entries = entries
        self.keys = [e.key for e in entries]

    def current_entries(self) -> list[KeyEntry]:
        self.current()
        return self.entries

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
            entries = self._inline + _read(file)
        except ValueError as exc:
            LOGGER.warning(f"{exc}; the keys read last still apply")
            return
        changed = entries != self.entries
        self._set(entries)
        self._identity = identity
        keys = self.keys
        if changed:
            LOGGER.info(f"API keys reloaded from {file}: {len(keys)} key(s)" + ("" if keys else "; the API is open"))


def _identity(file: str) -> tuple[int, int, int]:
    try:
        found = os.stat(file)
    except OSError as exc:
        raise ValueError(f"cannot read the API keys file {file}: {exc.strerror or exc}") from None
    return found.st_ino, found.st_size, found.st_mtime_ns


def _read(file: str) -> list[KeyEntry]:
    """One key per line (a named key: a JSON object); blank lines and # comments skipped."""
    try:
        with open(file, "rb") as handle:
            text = handle.read().decode()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise ValueError(f"cannot read the API keys file {file}: {reason}") from None
    return parse_keys(text)


def find_key(headers: Any, entries: list[KeyEntry]) -> KeyEntry | None:
    """The entry whose key `X-API-Key: KEY` or `Authorization: Bearer KEY` carries (compared with every key in
    constant time), or None."""
    for given in _presented(headers):
        found = None
        for entry in entries:
            if hmac.compare_digest(given, entry.key):
                found = entry
        if found is not None:
            return found
    return None


def _presented(headers: Any) -> list[bytes]:
    candidates = []
    if "X-API-Key" in headers:
        candidates.append(headers["X-API-Key"].strip())
    scheme, _, token = headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() == "bearer":
        candidates.append(token.strip())
    out = []
    for given in candidates:
        try:
            out.append(given.encode())
        except UnicodeError:  # bytes no key can hold: not a match, never a 500
            continue
    return out


def carries_key(headers: Any, keys: list[bytes]) -> bool:
    """`X-API-Key: KEY` or `Authorization: Bearer KEY` (scheme in any case) carries one of `keys`."""
    # Compared with every key in constant time, so timing reveals nothing about them.
    return any(any(hmac.compare_digest(raw, key) for key in keys) for raw in _presented(headers))
