"""A predictor for a production box's bad days, steered by files the test writes (replicas are processes).

- `{"wedge": true}`: a sync predict that blocks (a hung CUDA call) until `config["release"]` exists;
- `AsyncPredictor` with `{"block_loop": true}`: an async predict that blocks the event loop the same way;
- `check_health` raises (once) in the replica whose pid `config["unhealthy"]` holds;
- `config["fail_init"]`: `__init__` raises (a broken new version); `config["hang_init"]`: it never ends.
"""

import contextlib
import os
import time
from pathlib import Path


class Predictor:
    def __init__(self, config):
        self.config = config
        if config.get("fail_init"):
            raise RuntimeError("the new model file is corrupt")
        if config.get("hang_init"):
            while True:
                time.sleep(1)
        self.release = Path(config.get("release", "/nonexistent"))
        self.unhealthy = Path(config.get("unhealthy", "/nonexistent"))

    def _hold(self):
        with contextlib.suppress(OSError):  # the test waits for this, not for a sleep (read-only in an image)
            self.release.with_name("holding").touch()
        deadline = time.monotonic() + 300
        while not self.release.exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    def predict(self, payload):
        if isinstance(payload, dict) and payload.get("wedge"):
            self._hold()
        return {"pid": os.getpid(), "version": self.config.get("version", 1)}

    def check_health(self):
        try:
            marked = self.unhealthy.read_text().strip()
        except OSError:
            return True
        if marked == str(os.getpid()):
            self.unhealthy.unlink()  # once: the replica that replaces it (same pid in a container) is healthy
            raise RuntimeError("the GPU fell off the bus")
        return True


class AsyncPredictor(Predictor):
    async def predict(self, payload):
        if isinstance(payload, dict) and payload.get("block_loop"):
            self._hold()  # blocks the event loop: nothing else is answered meanwhile
        return {"pid": os.getpid(), "version": self.config.get("version", 1)}
