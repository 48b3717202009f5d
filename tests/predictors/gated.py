"""Holds every request until the test releases it, and counts what started.

`AsyncPredictor` waits on the event loop; `Predictor` (sync) holds one of the
replica's predictor threads. Tests wait for `started` to reach a number instead
of sleeping, then `release.set()`.
"""

import asyncio
import threading


class Predictor:
    def __init__(self, config):
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.started = 0
        self.calls = []

    def predict(self, payload):
        with self.lock:
            self.started += 1
            self.calls.append(payload)
        if not self.release.wait(60):
            raise TimeoutError("the test never released this request")
        return {"ok": payload}


class AsyncPredictor:
    def __init__(self, config):
        self.release = threading.Event()
        self.started = 0
        self.calls = []

    async def predict(self, payload):
        self.started += 1
        self.calls.append(payload)
        for _ in range(12000):
            if self.release.is_set():
                return {"ok": payload}
            await asyncio.sleep(0.005)
        raise TimeoutError("the test never released this request")


class BatchPredictor(Predictor):
    """The sync gate with batching on: `started` counts batches."""

    def predict(self, payload):
        super().predict(payload)
        return [{"ok": item} for item in payload]
