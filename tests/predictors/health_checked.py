"""A predictor with Ray Serve's `check_health`: healthy until the test says otherwise.

`mode` (set by the test): "ok", "raise", "false" or "hang" (the check blocks until `release`)."""

import asyncio
import threading


class Predictor:
    def __init__(self, config):
        self.mode = "ok"
        self.checks = 0
        self.release = threading.Event()
        self.hold = threading.Event()  # predict waits on it (a request in flight while the check fails)

    def predict(self, payload):
        if payload == "hold":
            self.hold.wait(60)
        return {"ok": payload}

    def check_health(self):
        self.checks += 1
        if self.mode == "raise":
            raise RuntimeError("the GPU fell off the bus")
        if self.mode == "hang":
            self.release.wait(60)
        return self.mode != "false"


class AsyncPredictor(Predictor):
    async def check_health(self):
        self.checks += 1
        if self.mode == "raise":
            raise RuntimeError("the GPU fell off the bus")
        if self.mode == "hang":
            while not self.release.is_set():
                await asyncio.sleep(0.01)
        return self.mode != "false"
