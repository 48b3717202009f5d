"""Holds `__init__` until the test creates `release_file` (bounded: 60 s), so a test can act while a
replica starts instead of racing a sleep."""

import os
import time


class Predictor:
    def __init__(self, config: dict) -> None:
        deadline = time.monotonic() + 60
        while not os.path.exists(config["release_file"]):
            if time.monotonic() > deadline:
                raise TimeoutError("the test never released __init__")
            time.sleep(0.05)

    def predict(self, payload):
        return {"ok": True}
