"""Stage 3, the public one: asks classify and formats its answer for people. A classify error (a
422 for a missing text, say) comes back as that error, naming classify."""

from __future__ import annotations


class Predictor:
    def __init__(self, config: dict, apis) -> None:
        self.classify = apis["classify"]

    async def predict(self, payload: dict) -> dict:
        found = await self.classify.apredict(payload)
        ranked = sorted(found["scores"].items(), key=lambda item: -item[1])
        (best, score), (runner_up, second) = ranked[0], ranked[1]
        return {
            "text": payload["text"],
            "topic": best,
            "summary": f"about {best} (similarity {score:.2f}; next: {runner_up} at {second:.2f})",
            "scores": dict(ranked),
        }
