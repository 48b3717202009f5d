import asyncio


# A request holds a replica for a quarter of a second: load in flight that autoscaling tests can steer.
class Predictor:
    async def predict(self, payload):
        await asyncio.sleep(0.25)
        return {"ok": True}
