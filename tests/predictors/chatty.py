"""Writes every kind of line a predictor writes: print() to stdout and stderr, its own logging,
a library warning; sync or async, one thread or several."""

import asyncio
import logging
import sys
import threading
import warnings

LOG = logging.getLogger("chatty.model")


class Predictor:
    def __init__(self, config):
        print("chatty loading")
        self.meet = threading.Barrier(config.get("meet", 1), timeout=30)

    def predict(self, payload):
        word = payload["word"]
        self.meet.wait()  # with meet: N requests print while all N are in predict at once
        print(f"thinking about {word}")
        print(f"stderr about {word}", file=sys.stderr)
        LOG.info("logged %s", word)
        warnings.warn(f"deprecated {word}", UserWarning, stacklevel=1)
        return {"word": word}


class AsyncPredictor:
    def __init__(self, config):
        pass

    async def predict(self, payload):
        await asyncio.sleep(0)
        print(f"async about {payload['word']}")
        return {"word": payload["word"]}
