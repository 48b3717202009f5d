"""Answers `config["fine"]` requests, then wedges: predict blocks (a hung CUDA call, a deadlocked
tokenizer) until the test sets `release`. `AsyncPredictor` blocks the event loop itself (an
`async def predict` that never awaits)."""

import threading
import time


class Predictor:
    def __init__(self, config):
        self.fine = int(config.get("fine", 0))
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.calls = 0

    def predict(self, payload):
        with self.lock:
            self.calls += 1
            wedge = self.calls > self.fine
        if wedge:
            self.release.wait(120)
        return {"ok": payload}


class AsyncPredictor(Predictor):
    async def predict(self, payload):
        with self.lock:
            self.calls += 1
            wedge = self.calls > self.fine
        if wedge:
            self.release.wait(120)  # blocks the event loop: nothing else is answered meanwhile
        return {"ok": payload}


class SleepyPredictor(Predictor):
    """Wedges the event loop with time.sleep (a library doing blocking I/O from async code)."""

    async def predict(self, payload):
        with self.lock:
            self.calls += 1
            wedge = self.calls > self.fine
        if wedge:
            deadline = time.monotonic() + 120
            while not self.release.is_set() and time.monotonic() < deadline:
                time.sleep(0.05)
        return {"ok": payload}
