"""A tensor API for the Open Inference Protocol (`predictor.protocol: v2`): Triton's and MLServer's clients.

`predict` gets a dict of numpy arrays by input name; it returns a dict of arrays
by output name. This one scales its input and sums each row.

    import tritonclient.http as http
    client = http.InferenceServerClient("127.0.0.1:8080/tensors")   # through the gateway
"""

from __future__ import annotations

from typing import Any

import numpy as np


class Predictor:
    def __init__(self, config: dict[str, Any]) -> None:
        self.scale = float(config.get("scale", 2.0))

    def predict(self, payload: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = payload["x"].astype(np.float32)
        return {"scaled": x * self.scale, "row_sum": x.sum(axis=1)}
