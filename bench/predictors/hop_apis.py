"""Pipeline bench: a caller that hands its payload to the `leaf` API through the `apis` handle."""


class Predictor:
    def __init__(self, config: dict, apis) -> None:
        self.leaf = apis["leaf"]

    async def predict(self, payload):
        return await self.leaf.apredict(payload)
