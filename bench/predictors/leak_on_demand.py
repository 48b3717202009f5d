"""The echo predictor, except that a payload with `leak_mb` keeps that many megabytes (touched, so
resident) for good: bench/faults.py's way to run one replica out of its memory on purpose."""


class Predictor:
    def __init__(self, config: dict) -> None:
        self.kept: list[bytearray] = []

    def predict(self, payload):
        size = int(payload.get("leak_mb", 0)) * 1024 * 1024 if isinstance(payload, dict) else 0
        if size:
            block = bytearray(size)
            for offset in range(0, size, 4096):
                block[offset] = 1
            self.kept.append(block)
        return payload
