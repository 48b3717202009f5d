"""Keeps `leak_mb` more megabytes (touched, so resident) on every request."""


class Predictor:
    def __init__(self, config: dict) -> None:
        self.size = int(config.get("leak_mb", 50)) * 1024 * 1024
        self.kept: list[bytearray] = []

    def predict(self, payload):
        block = bytearray(self.size)
        for offset in range(0, self.size, 4096):
            block[offset] = 1
        self.kept.append(block)
        return {"held_mb": len(self.kept) * self.size // (1024 * 1024)}
