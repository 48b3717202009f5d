"""Stream tokens as they are produced: Server-Sent Events for clients that ask.

    curl -N -X POST localhost:8080/ -H 'Accept: text/event-stream' -H 'Content-Type: application/json' \
         -d '{"prompt": "tell me a story", "max_tokens": 8}'

A toy language model: a bigram table built from a small corpus in __init__,
sampled with a fixed seed so answers are reproducible.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections import defaultdict

from serving import HTTPError

CORPUS = (
    "the model reads the prompt and the model writes a story about the server "
    "the server streams each token to the client and the client reads each token "
    "as soon as the server writes it"
)


class Predictor:
    def __init__(self, config: dict) -> None:
        self.delay = float(config.get("token_delay", 0.02))
        words = CORPUS.split()
        self.next_words: dict[str, list[str]] = defaultdict(list)
        for current, following in itertools.pairwise(words):
            self.next_words[current].append(following)

    async def predict(self, payload: dict):
        if not isinstance(payload, dict) or not isinstance(payload.get("prompt"), str):
            raise HTTPError(422, 'send {"prompt": "...", "max_tokens": N}')
        max_tokens = int(payload.get("max_tokens", 16))
        rng = random.Random(payload["prompt"])
        word = payload["prompt"].split()[-1] if payload["prompt"].split() else "the"
        for index in range(max_tokens):
            choices = self.next_words.get(word) or list(self.next_words)
            word = rng.choice(choices)
            await asyncio.sleep(self.delay)  # stands in for one decoding step
            yield {"index": index, "token": word}
