"""LitServe serving W4's simulated accelerator, batching on or off: `litserve_sim.py PORT BATCH TIMEOUT_S`."""

import sys
from pathlib import Path

import litserve as ls

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "predictors"))
from device_sim import run_on_device


class SimAPI(ls.LitAPI):
    def setup(self, device):
        pass

    def decode_request(self, request):
        return request["ids"]

    def predict(self, rows):
        batched = bool(rows) and isinstance(rows[0], list)
        logits = run_on_device(rows if batched else [rows])
        return logits if batched else logits[0]

    def encode_response(self, output):
        return output


if __name__ == "__main__":
    port, batch, timeout = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    server = ls.LitServer(
        SimAPI(max_batch_size=batch, batch_timeout=timeout) if batch > 1 else SimAPI(),
        accelerator="cpu",
        workers_per_device=1,
        timeout=60,
    )
    server.run(port=port, generate_client_file=False)
