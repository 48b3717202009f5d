"""Stage 2: a nearest-centroid classifier over embed's vectors. Each topic's centroid is the mean
vector of its example sentences (from config), embedded through the embed API on first use; a text
gets the cosine similarity to each centroid, and the closest topic."""

from __future__ import annotations

import asyncio
import math

from serving import HTTPError


class Predictor:
    def __init__(self, config: dict, apis) -> None:
        self.embed = apis["embed"]
        self.topics: dict[str, list[str]] = config["topics"]
        self.centroids: dict[str, list[float]] | None = None
        self.lock = asyncio.Lock()

    async def predict(self, payload: dict) -> dict:
        text = payload.get("text") if isinstance(payload, dict) else None
        if not isinstance(text, str) or not text.strip():
            raise HTTPError(422, 'send {"text": "..."}')
        centroids = await self._centroids()
        vector = await self.embed.apredict({"text": text})
        scores = {topic: round(_dot(vector, centroid), 4) for topic, centroid in centroids.items()}
        return {"topic": max(scores, key=scores.__getitem__), "scores": scores}

    async def _centroids(self) -> dict[str, list[float]]:
        async with self.lock:  # the first requests wait for one computation
            if self.centroids is None:
                # All examples at once: the embed API batches the concurrent calls together.
                sentences = [(topic, s) for topic, examples in self.topics.items() for s in examples]
                vectors = await asyncio.gather(*(self.embed.apredict({"text": s}) for _, s in sentences))
                centroids: dict[str, list[float]] = {}
                for topic in self.topics:
                    mine = [v for (t, _), v in zip(sentences, vectors, strict=True) if t == topic]
                    centroids[topic] = _unit([sum(column) / len(mine) for column in zip(*mine, strict=True)])
                self.centroids = centroids
            return self.centroids


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def _unit(v: list[float]) -> list[float]:
    norm = math.sqrt(_dot(v, v)) or 1.0
    return [x / norm for x in v]
