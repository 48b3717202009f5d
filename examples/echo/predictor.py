"""The smallest predictor: answers with what it was sent."""


class Predictor:
    def __init__(self, config: dict) -> None:
        self.greeting = config.get("greeting", "echo")

    def predict(self, payload, query_params):
        return {"greeting": self.greeting, "payload": payload, "query": query_params}
