"""bench/faults.py's predictor for week-two faults: an echo, except that

- `{"wedge": true}` blocks a predictor thread (a hung CUDA call) until the file `config["release"]` exists;
- `AsyncPredictor` with `{"block_loop": true}` blocks the event loop the same way;
- `config["fail_init"]`: `__init__` raises (a broken new version).
"""

import time
from pathlib import Path


class Predictor:
    def __init__(self, config: dict) -> None:
        if config.get("fail_init"):
            raise RuntimeError("the new model file is corrupt")
        self.release = Path(config["release"])

    def _hold(self) -> None:
        deadline = time.monotonic() + 600
        while not self.release.exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    def predict(self, payload):
        if isinstance(payload, dict) and payload.get("wedge"):
            self._hold()
        return payload


class AsyncPredictor(Predictor):
    async def predict(self, payload):
        if isinstance(payload, dict) and payload.get("block_loop"):
            self._hold()  # blocks the event loop
        return payload
