"""Pipeline bench: a stage that takes `cost_ms` of waiting (a model's time, off the CPU) with at
most `capacity` requests at once, then calls the `next` API if it has one."""

import asyncio


class Predictor:
    def __init__(self, config: dict, apis) -> None:
        self.cost = config["cost_ms"] / 1000
        self.slots = asyncio.Semaphore(config["capacity"])
        self.next = apis[config["next"]] if config.get("next") else None

    async def predict(self, payload):
        async with self.slots:
            await asyncio.sleep(self.cost)
        if self.next is not None:
            return await self.next.apredict(payload)
        return payload
