"""The OpenAI streaming benchmark's generator: `tokens` words, no delay of its own."""


class Predictor:
    def __init__(self, config):
        self.words = [f"word{i}" for i in range(int(config.get("tokens", 64)))]

    async def predict(self, payload):
        for index, word in enumerate(self.words):
            yield word if index == 0 else " " + word
