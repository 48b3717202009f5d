"""W3: a model whose cost is 20 ms + 0.2 ms per item, batched or not."""

import time


class Predictor:
    def __init__(self, config):
        self.batched = bool(config.get("batched"))

    def predict(self, payload):
        items = payload if self.batched else [payload]
        time.sleep(0.020 + 0.0002 * len(items))
        results = [{"ok": True} for _ in items]
        return results if self.batched else results[0]
