"""LitServe with its OpenAISpec streaming the same words: `litserve_openai.py PORT TOKENS`."""

import sys

import litserve as ls


class WordsAPI(ls.LitAPI):
    def setup(self, device):
        self.words = [f"word{i}" for i in range(int(sys.argv[2]))]

    def predict(self, messages):
        for index, word in enumerate(self.words):
            yield word if index == 0 else " " + word


if __name__ == "__main__":
    server = ls.LitServer(WordsAPI(spec=ls.OpenAISpec()), accelerator="cpu", workers_per_device=1, timeout=30)
    server.run(port=int(sys.argv[1]), generate_client_file=False)
