class Predictor:
    async def predict(self, payload):
        return payload
