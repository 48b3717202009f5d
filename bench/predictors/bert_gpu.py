"""A BERT-base-sized encoder with random fp16 weights, on CUDA: the GPU benchmark's model.

12 layers, hidden 768, 12 heads, feed-forward 3072, a 30,522-token vocabulary;
each request is 128 token ids. No weights are downloaded: the shape is what
costs, not the values. Takes one payload or, with batching, a list of them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

SEQ = 128


def build_model(device: str = "cuda") -> nn.Module:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(768, 12, 3072, batch_first=True, activation="gelu")
    model = nn.ModuleDict({"embed": nn.Embedding(30522, 768), "encoder": nn.TransformerEncoder(layer, 12)})
    return model.half().to(device).eval()


def forward(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        hidden = model["encoder"](model["embed"](ids))
        return hidden[:, 0, :2].float()  # two "logits" from the first token


class Predictor:
    def __init__(self, config: dict[str, Any]) -> None:
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = build_model(self.device)
        forward(self.model, torch.zeros((8, SEQ), dtype=torch.long, device=self.device))  # warm the kernels

    def predict(self, payload: Any) -> Any:
        batched = isinstance(payload, list)
        items = payload if batched else [payload]
        ids = torch.tensor([item["ids"] for item in items], dtype=torch.long)
        if self.device == "cuda":
            ids = ids.pin_memory()
        logits = forward(self.model, ids.to(self.device, non_blocking=True)).cpu()
        # Each answer is the request's two logits. With batching, one array for the whole batch:
        # the server splits its rows with a single conversion.
        return logits.numpy() if batched else logits[0].tolist()
