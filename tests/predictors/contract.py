"""Exercises every part of the predictor contract; `?reply=` chooses the behaviour."""

import asyncio
import time

from aiohttp import web

from serving import File, HTTPError


def describe(payload):
    if isinstance(payload, dict):
        out = {}
        for key, value in payload.items():
            if isinstance(value, File):
                out[key] = {"filename": value.filename, "content_type": value.content_type, "size": len(value.data)}
            else:
                out[key] = value
        return out
    if isinstance(payload, bytes):
        return {"length": len(payload), "first": payload[:1].hex()}
    return payload


class Predictor:
    def __init__(self, config):
        self.config = config

    def predict(self, payload, query_params, headers):
        reply = query_params.get("reply", "describe")
        if reply == "describe":
            return {"type": type(payload).__name__, "value": describe(payload), "query": query_params}
        if reply == "text":
            return "plain text"
        if reply == "bytes":
            return b"\x00\x01\x02"
        if reply == "none":
            return None
        if reply == "number":
            return 42.5
        if reply == "response":
            return web.Response(status=201, text="custom", headers={"X-Custom": "yes"})
        if reply == "header":
            return {"x_custom": headers.get("x-custom")}
        if reply == "config":
            return self.config
        if reply == "fail":
            raise ValueError("boom")
        if reply == "http":
            raise HTTPError(418, "I am a teapot")
        if reply == "aiohttp-error":
            raise web.HTTPUnprocessableEntity(text="unprocessable")
        if reply == "sleep":
            time.sleep(float(query_params.get("seconds", "1")))
            return {"slept": float(query_params.get("seconds", "1"))}
        if reply == "stream":
            return (f"token{i} " for i in range(3))
        if reply == "stream-json":
            return ({"i": i} for i in range(3))
        if reply == "astream":
            return self._astream()
        if reply == "stream-fail":
            return self._failing_stream()
        if reply == "slow-stream":
            return self._slow_stream(float(query_params.get("seconds", "2")))
        if reply == "unencodable":
            return object()
        raise HTTPError(400, f"unknown reply {reply}")

    async def _astream(self):
        for i in range(3):
            await asyncio.sleep(0.01)
            yield f"line {i}\nsecond"

    def _failing_stream(self):
        yield "first "
        raise RuntimeError("stream broke")

    async def _slow_stream(self, seconds):
        for i in range(4):
            await asyncio.sleep(seconds / 4)
            yield {"part": i}
