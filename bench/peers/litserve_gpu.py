"""LitServe serving the GPU benchmark's model, batching on or off: `litserve_gpu.py PORT BATCH TIMEOUT_S`."""

import sys
from pathlib import Path

import litserve as ls
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "predictors"))
from bert_gpu import build_model, forward


class BertAPI(ls.LitAPI):
    def setup(self, device):
        self.model = build_model(device)
        self.device = device

    def decode_request(self, request):
        return request["ids"]

    def batch(self, inputs):
        return torch.tensor(inputs, dtype=torch.long)

    def predict(self, ids):
        ids = torch.as_tensor(ids, dtype=torch.long)
        if ids.dim() == 1:  # batching off: one request's ids
            ids = ids.unsqueeze(0)
        return forward(self.model, ids.to(self.device, non_blocking=True)).cpu()

    def unbatch(self, output):
        return list(output.numpy())

    def encode_response(self, output):
        values = output.tolist() if hasattr(output, "tolist") else output
        return values[0] if values and isinstance(values[0], list) else values  # the two logits, as ours


if __name__ == "__main__":
    port, batch, timeout = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    server = ls.LitServer(
        BertAPI(max_batch_size=batch, batch_timeout=timeout) if batch > 1 else BertAPI(),
        accelerator="cuda",
        devices=1,
        workers_per_device=1,
        timeout=60,
    )
    server.run(port=port, generate_client_file=False)
