"""Pipeline bench: the same caller with a plain pooled aiohttp client to the leaf replica's URL
(what a user would hand-write without the `apis` handle: no balancing, ids, deadlines or retries)."""

import aiohttp


class Predictor:
    def __init__(self, config: dict) -> None:
        self.url = config["url"]
        self.session: aiohttp.ClientSession | None = None

    async def predict(self, payload):
        if self.session is None:  # made on the server's loop
            self.session = aiohttp.ClientSession()
        async with self.session.post(self.url, json=payload) as answer:
            answer.raise_for_status()
            return await answer.json()
