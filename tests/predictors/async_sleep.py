import asyncio


class Predictor:
    async def predict(self, payload):
        seconds = float((payload or {}).get("seconds", 0.5))
        await asyncio.sleep(seconds)
        return {"slept": seconds}
