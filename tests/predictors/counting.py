"""Sleeps in a thread and appends a line to config['calls_file'] each time predict starts."""

import time


class Predictor:
    def __init__(self, config):
        self.calls_file = config["calls_file"]

    def predict(self, payload):
        with open(self.calls_file, "a") as f:
            f.write(f"{payload.get('id')}\n")
        time.sleep(float(payload.get("seconds", 1)))
        return {"id": payload.get("id")}
