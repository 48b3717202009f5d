"""Uses CUDA when the replica has a GPU, the CPU otherwise, and says which.

A small torch model (a two-layer MLP with fixed seeded weights) classifies a
vector; the response names the device that ran it, so `curl` shows whether the
GPU reservation reached the container.
"""

from __future__ import annotations

import torch

from serving import HTTPError


class Predictor:
    def __init__(self, config: dict) -> None:
        wanted = config.get("device", "auto")
        self.device = torch.device(
            "cuda" if wanted == "auto" and torch.cuda.is_available() else wanted if wanted != "auto" else "cpu"
        )
        torch.manual_seed(0)
        self.width = int(config.get("width", 16))
        self.model = (
            torch.nn.Sequential(torch.nn.Linear(self.width, 64), torch.nn.ReLU(), torch.nn.Linear(64, 3))
            .to(self.device)
            .eval()
        )
        self.gpu_name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else None

    @torch.inference_mode()
    def predict(self, payload: dict) -> dict:
        vector = payload.get("vector") if isinstance(payload, dict) else None
        if not isinstance(vector, list) or len(vector) != self.width:
            raise HTTPError(422, f'send {{"vector": [{self.width} numbers]}}')
        inputs = torch.tensor([vector], dtype=torch.float32, device=self.device)
        scores = self.model(inputs).softmax(dim=1)[0].cpu().tolist()
        return {
            "device": self.device.type,
            "cuda_available": torch.cuda.is_available(),
            "gpu": self.gpu_name,
            "class": int(max(range(3), key=lambda i: scores[i])),
            "scores": [round(s, 6) for s in scores],
        }
