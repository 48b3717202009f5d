"""Batching test predictor: payloads 'fail' or 'short' break their whole batch."""

import time


class Predictor:
    def __init__(self, config):
        self.cost = float(config.get("cost", 0.0))

    def predict(self, payload, query_params):
        time.sleep(self.cost)
        if any(p == {"action": "fail"} for p in payload):
            raise RuntimeError("batch exploded")
        if any(p == {"action": "short"} for p in payload):
            return [{"batch_size": len(payload)}] * (len(payload) - 1)
        if any(p == {"action": "not-a-list"} for p in payload):
            return {"oops": True}
        return [{"batch_size": len(payload), "echo": p, "q": q} for p, q in zip(payload, query_params, strict=False)]
