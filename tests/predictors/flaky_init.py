"""Fails in __init__ the first `fail_times` starts (counted in `starts_dir`, shared by all replicas)."""

import os
import uuid


class Predictor:
    def __init__(self, config: dict) -> None:
        starts = config["starts_dir"]
        os.makedirs(starts, exist_ok=True)
        open(os.path.join(starts, uuid.uuid4().hex), "w").close()
        count = len(os.listdir(starts))
        if count <= int(config["fail_times"]):
            raise RuntimeError(f"flaky start number {count}")

    def predict(self, payload):
        return {"ok": True}
