"""W4: a simulated accelerator, so the batching path can be measured where there is no GPU.

Like a GPU it runs one batch at a time (a device lock) and releases the GIL
while it computes (a sleep): 2 ms a batch plus 0.025 ms an item, about what
the GPU benchmark's BERT-base model costs on an H200 (~11,400 items/s at
batch 32, ~490 single requests/s). Payloads are the GPU benchmark's: 128
token ids; each answer is two "logits". Takes one payload or a list of them.
"""

from __future__ import annotations

import threading
import time
from typing import Any

DEVICE = threading.Lock()
BATCH_SECONDS, ITEM_SECONDS = 0.002, 0.000025


def run_on_device(rows: list[list[int]]) -> list[list[float]]:
    with DEVICE:
        time.sleep(BATCH_SECONDS + ITEM_SECONDS * len(rows))
    return [[row[0] / 30522, row[-1] / 30522] for row in rows]


class Predictor:
    def __init__(self, config: dict[str, Any]) -> None:
        pass

    def predict(self, payload: Any) -> Any:
        batched = isinstance(payload, list)
        logits = run_on_device([item["ids"] for item in (payload if batched else [payload])])
        return logits if batched else logits[0]
