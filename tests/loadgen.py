"""A small, bounded load generator for tests: N threads posting until stopped."""

from __future__ import annotations

import collections
import threading
import time
from typing import Any

import requests


class Load:
    def __init__(
        self,
        url: str,
        concurrency: int = 8,
        payload: Any = None,
        max_seconds: float = 120,
        timeout: float = 30,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.url = url
        self.headers = headers or {}
        self.timeout = timeout
        self.payload = payload if payload is not None else {"load": True}
        self.codes: collections.Counter[int | str] = collections.Counter()
        self.bodies: collections.Counter[str] = collections.Counter()
        self._stop = threading.Event()
        self._deadline = time.monotonic() + max_seconds  # never runs unbounded, even if a test forgets stop()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(concurrency)]
        self._lock = threading.Lock()
        self.longest = 0.0  # seconds, the slowest request (failed ones included)

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _run(self) -> None:
        session = requests.Session()
        while not self._stop.is_set() and time.monotonic() < self._deadline:
            started = time.monotonic()
            try:
                response = session.post(self.url, json=self.payload, timeout=self.timeout, headers=self.headers)
                key: int | str = response.status_code
                body = response.text
            except requests.RequestException as exc:
                key, body = type(exc).__name__, ""
            with self._lock:
                self.longest = max(self.longest, time.monotonic() - started)
                self.codes[key] += 1
                self.bodies[body] += 1

    @property
    def total(self) -> int:
        return sum(self.codes.values())

    @property
    def failures(self) -> int:
        return self.total - self.codes[200]
