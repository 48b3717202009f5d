"""One version of an API, for rolling it out behind a splitter: answers with its version.

`fail_every: N` in the config makes every Nth request fail (a 500), to watch a
canary get rolled back.
"""

import itertools
import threading


class Predictor:
    def __init__(self, config: dict) -> None:
        self.version = config.get("version", "v1")
        self.fail_every = int(config.get("fail_every", 0))
        self.calls = itertools.count(1)
        self.lock = threading.Lock()

    def predict(self, payload):
        with self.lock:
            call = next(self.calls)
        if self.fail_every and call % self.fail_every == 0:
            raise RuntimeError(f"{self.version}: request {call} fails on purpose (fail_every: {self.fail_every})")
        return {"version": self.version, "payload": payload}
