"""LitServe echo on the CPU, one worker."""

import sys

import litserve as ls


class EchoAPI(ls.LitAPI):
    def setup(self, device):
        pass

    def decode_request(self, request):
        return request

    def predict(self, x):
        return x

    def encode_response(self, output):
        return output


if __name__ == "__main__":
    server = ls.LitServer(EchoAPI(), accelerator="cpu", workers_per_device=1, timeout=30)
    server.run(port=int(sys.argv[1]), generate_client_file=False)
