"""The protocols clients already speak, around the same predictor: OpenAI's and the Open Inference Protocol.

`predictor.protocol: openai` serves `POST /v1/chat/completions`,
`POST /v1/completions` (whole, or streamed as OpenAI's SSE chunks ending with
`data: [DONE]`) and `GET /v1/models`. `predict` gets the request body (a dict:
`messages` or `prompt`, `max_tokens`, `temperature`, ...) and returns a
string, or yields text pieces (sync or async); it may return or yield a dict
`{"content": ..., "finish_reason": ..., "usage": {"prompt_tokens": N,
"completion_tokens": M}}` to report more. The server builds ids, `created`,
`choices`, `finish_reason` and `usage`. A malformed body is an OpenAI-shaped
400.

`predictor.protocol: v2` (KServe v2 / Open Inference Protocol, as Triton,
MLServer and Seldon speak it): `GET /v2/health/live`, `/v2/health/ready`,
`/v2/models/{name}[/versions/{v}]`, `.../ready`, and `POST .../infer` with
JSON tensors. `predict` gets a dict of numpy arrays by input name and returns
an array, a list of arrays, or a dict of arrays by output name.
"""

from __future__ import annotations

import itertools
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

from aiohttp import web

from serving.codec import dumps
from serving.errors import Failure, HTTPError
from serving.streaming import RunInThread, is_stream, iterate

# -- OpenAI ---------------------------------------------------------------------------------


class OpenAIError(HTTPError):
    def __init__(self, message: str, param: str | None = None, status: int = 400) -> None:
        super().__init__(status, message)
        self.param = param


def openai_error(failure: Failure, request_id: str) -> web.Response:
    """OpenAI's error shape: {"error": {"message", "type", "param", "code"}}."""
    kind = "invalid_request_error" if failure.status < 500 else "server_error"
    body = {
        "error": {"message": failure.message, "type": kind, "param": failure.param, "code": None},
        "request_id": request_id,
    }
    return web.json_response(body, status=failure.status, headers={"X-Request-ID": request_id, **failure.headers})


class OpenAIAdapter:
    def __init__(self, model: str, chat: bool) -> None:
        self.model = model
        self.chat = chat
        self.object = "chat.completion" if chat else "text_completion"
        self._ids = itertools.count(1)
        self._prefix = uuid.uuid4().hex[:12]

    async def payload(self, request: web.Request, max_body_size: int) -> dict[str, Any]:
        raw = await request.read()
        if len(raw) > max_body_size:
            raise OpenAIError(f"request body of {len(raw)} bytes exceeds max_body_size", status=413)
        try:
            body = json.loads(raw or b"null")
        except ValueError as exc:
            raise OpenAIError(f"the body is not valid JSON: {exc}") from exc
        if not isinstance(body, dict):
            raise OpenAIError("the body must be a JSON object")
        if self.chat:
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise OpenAIError("`messages` is required: a non-empty list of {role, content}", "messages")
            for index, message in enumerate(messages):
                if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                    raise OpenAIError(f"messages[{index}] needs a `role`", f"messages[{index}].role")
                content = message.get("content")
                if not (content is None or isinstance(content, (str, list))):
                    raise OpenAIError(f"messages[{index}].content must be a string", f"messages[{index}].content")
        elif not isinstance(body.get("prompt"), (str, list)):
            raise OpenAIError("`prompt` is required: a string", "prompt")
        for key, kind in (("max_tokens", int), ("n", int), ("temperature", (int, float)), ("top_p", (int, float))):
            if (
                key in body
                and body[key] is not None
                and (isinstance(body[key], bool) or not isinstance(body[key], kind))
            ):
                raise OpenAIError(f"`{key}` must be a number", key)
        if body.get("n", 1) not in (1, None):
            raise OpenAIError("only n = 1 is supported", "n")
        if "stream" in body and not isinstance(body["stream"], bool):
            raise OpenAIError("`stream` must be true or false", "stream")
        return body

    def _head(self) -> dict[str, Any]:
        return {
            "id": f"{'chatcmpl' if self.chat else 'cmpl'}-{self._prefix}{next(self._ids):08x}",
            "created": int(time.time()),
            "model": self.model,
        }

    async def respond(
        self, request: web.Request, payload: dict[str, Any], result: Any, headers: dict[str, str], run: RunInThread
    ) -> web.StreamResponse:
        if payload.get("stream"):
            return await self._stream(request, result, headers, run, payload)
        pieces = [piece async for piece in iterate(result, run)] if is_stream(result) else [result]
        text, finish, usage = _gather(pieces)
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish or "stop"}
        if self.chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice.update({"text": text, "logprobs": None})
        body = {**self._head(), "object": self.object, "choices": [choice]}
        if usage:
            body["usage"] = _usage(usage)
        return web.Response(body=dumps(body).encode(), content_type="application/json", headers=headers)

    async def _stream(
        self, request: web.Request, result: Any, headers: dict[str, str], run: RunInThread, payload: dict[str, Any]
    ) -> web.StreamResponse:
        head = self._head()
        response = web.StreamResponse(headers={**headers, "Cache-Control": "no-cache"})
        response.content_type = "text/event-stream"
        response.enable_chunked_encoding()
        await response.prepare(request)
        kind = "chat.completion.chunk" if self.chat else "text_completion"

        async def send(delta: str | None, finish: str | None, first: bool = False, usage: Any = None) -> None:
            choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
            if self.chat:
                choice["delta"] = (
                    {"role": "assistant", "content": ""} if first else ({"content": delta} if delta else {})
                )
            else:
                choice.update({"text": delta or "", "logprobs": None})
            chunk: dict[str, Any] = {**head, "object": kind, "choices": [choice]}
            if usage:
                chunk["usage"] = _usage(usage)
            await response.write(b"data: " + dumps(chunk).encode() + b"\n\n")

        if self.chat:
            await send(None, None, first=True)
        finish, usage = None, None
        items = iterate(result, run) if is_stream(result) else _one(result)
        async for item in items:
            text, item_finish, item_usage = _gather([item])
            finish, usage = item_finish or finish, item_usage or usage
            if text:
                await send(text, None)
        include_usage = bool((payload.get("stream_options") or {}).get("include_usage"))
        await send(None, finish or "stop", usage=usage if include_usage or usage else None)
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


async def _one(value: Any) -> Any:
    yield value


def _gather(pieces: list[Any]) -> tuple[str, str | None, dict[str, Any] | None]:
    text, finish, usage = [], None, None
    for piece in pieces:
        if isinstance(piece, dict):
            text.append(str(piece.get("content") or piece.get("text") or ""))
            finish = piece.get("finish_reason") or finish
            usage = piece.get("usage") or usage
        elif piece is not None:
            text.append(piece if isinstance(piece, str) else str(piece))
    return "".join(text), finish, usage


def _usage(usage: dict[str, Any]) -> dict[str, int]:
    prompt, completion = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def openai_models(model: str, started: float) -> Callable[[web.Request], Any]:
    async def handler(request: web.Request) -> web.Response:
        entry = {"id": model, "object": "model", "created": int(started), "owned_by": "stack"}
        return web.json_response({"object": "list", "data": [entry]})

    return handler


# -- Open Inference Protocol (v2) ------------------------------------------------------------------

# Per-request state the v2 adapter keeps between reading the body and answering it.
V2_ID: web.RequestKey[Any] = web.RequestKey("v2_id", object)
V2_BINARY: web.RequestKey[set[str]] = web.RequestKey("v2_binary", set)

V2_TYPES = {
    "BOOL": "bool",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "UINT8": "uint8",
    "UINT16": "uint16",
    "UINT32": "uint32",
    "UINT64": "uint64",
    "FP16": "float16",
    "FP32": "float32",
    "FP64": "float64",
    "BYTES": "object",
}


def v2_error(failure: Failure, request_id: str) -> web.Response:
    """The Open Inference Protocol's error shape: {"error": "..."}."""
    return web.json_response({"error": failure.message}, status=failure.status, headers={"X-Request-ID": request_id})


class V2Adapter:
    def __init__(self, model: str) -> None:
        self.model = model

    async def payload(self, request: web.Request, max_body_size: int) -> dict[str, Any]:
        import numpy as np

        name = request.match_info.get("name")
        if name != self.model:
            raise HTTPError(404, f"unknown model {name!r}; this API serves {self.model!r}")
        raw = await request.read()
        if len(raw) > max_body_size:
            raise HTTPError(413, f"request body of {len(raw)} bytes exceeds max_body_size")
        # The binary tensor extension: a JSON header of this many bytes, then the tensors' raw bytes.
        header_length = request.headers.get("Inference-Header-Content-Length")
        json_part, binary = (raw, b"")
        if header_length is not None:
            if not header_length.isdigit() or int(header_length) > len(raw):
                raise HTTPError(400, "Inference-Header-Content-Length does not fit the body")
            json_part, binary = raw[: int(header_length)], raw[int(header_length) :]
        try:
            body = json.loads(json_part or b"null")
        except ValueError as exc:
            raise HTTPError(400, f"the body is not valid JSON: {exc}") from exc
        inputs = body.get("inputs") if isinstance(body, dict) else None
        if not isinstance(inputs, list) or not inputs:
            raise HTTPError(400, "`inputs` is required: a list of {name, shape, datatype, data}")
        arrays: dict[str, Any] = {}
        for index, tensor in enumerate(inputs):
            if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
                raise HTTPError(400, f"inputs[{index}] needs a `name`")
            label = f"input {tensor['name']!r}"
            datatype, shape, data = tensor.get("datatype"), tensor.get("shape"), tensor.get("data")
            if datatype not in V2_TYPES:
                raise HTTPError(400, f"{label}: unknown datatype {datatype!r}; one of {', '.join(V2_TYPES)}")
            if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
                raise HTTPError(400, f"{label}: `shape` must be a list of non-negative integers")
            size = (tensor.get("parameters") or {}).get("binary_data_size")
            if data is None and size is None:
                raise HTTPError(400, f"{label}: `data` (or the binary extension's binary_data_size) is required")
            try:
                if size is not None:
                    if not isinstance(size, int) or size > len(binary):
                        raise HTTPError(400, f"{label}: binary_data_size {size} runs past the body")
                    chunk, binary = binary[:size], binary[size:]
                    flat = _from_binary(chunk, datatype)
                elif datatype == "BYTES":
                    flat = np.array(_flatten(data), dtype=object)
                    flat = np.array([v.encode() if isinstance(v, str) else v for v in flat], dtype=object)
                else:
                    flat = np.asarray(_flatten(data), dtype=V2_TYPES[datatype])
            except (TypeError, ValueError) as exc:
                raise HTTPError(400, f"{label}: data does not fit datatype {datatype}: {exc}") from exc
            expected = int(np.prod(shape)) if shape else 1
            if flat.size != expected:
                raise HTTPError(400, f"{label}: shape {shape} needs {expected} values, data has {flat.size}")
            arrays[tensor["name"]] = flat.reshape(shape)
        request[V2_ID] = body.get("id")
        request[V2_BINARY] = _binary_outputs(body)
        return arrays

    async def respond(
        self, request: web.Request, payload: Any, result: Any, headers: dict[str, str], run: RunInThread
    ) -> web.StreamResponse:
        if isinstance(result, dict):
            named = list(result.items())
        elif isinstance(result, (list, tuple)):
            named = [(f"output{i}", value) for i, value in enumerate(result)]
        else:
            named = [("output0", result)]
        binary_wanted = request.get(V2_BINARY) or set()
        tensors, chunks = [], []
        for name, value in named:
            tensor = _tensor(name, value)
            if name in binary_wanted or "*" in binary_wanted:
                chunk = _to_binary(value, tensor["datatype"])
                tensor.pop("data")
                tensor["parameters"] = {"binary_data_size": len(chunk)}
                chunks.append(chunk)
            tensors.append(tensor)
        body: dict[str, Any] = {
            "model_name": self.model,
            "model_version": request.match_info.get("version", "1"),
            "outputs": tensors,
        }
        if request.get(V2_ID) is not None:
            body["id"] = request[V2_ID]
        encoded = dumps(body).encode()
        if not chunks:
            return web.Response(body=encoded, content_type="application/json", headers=headers)
        headers = {**headers, "Inference-Header-Content-Length": str(len(encoded))}
        return web.Response(body=encoded + b"".join(chunks), content_type="application/octet-stream", headers=headers)


def _binary_outputs(body: dict[str, Any]) -> set[str]:
    """The outputs the client wants as binary: all ("*"), or those its `outputs` name."""
    if (body.get("parameters") or {}).get("binary_data_output"):
        return {"*"}
    return {
        o["name"]
        for o in body.get("outputs") or []
        if isinstance(o, dict) and (o.get("parameters") or {}).get("binary_data")
    }


def _from_binary(chunk: bytes, datatype: str) -> Any:
    import numpy as np

    if datatype != "BYTES":
        return np.frombuffer(chunk, dtype=V2_TYPES[datatype])
    values, offset = [], 0
    while offset < len(chunk):
        length = int.from_bytes(chunk[offset : offset + 4], "little")
        values.append(chunk[offset + 4 : offset + 4 + length])
        offset += 4 + length
    return np.array(values, dtype=object)


def _to_binary(value: Any, datatype: str) -> bytes:
    import numpy as np

    array = np.asarray(value)
    if datatype != "BYTES":
        return np.ascontiguousarray(array).tobytes()
    parts = []
    for item in array.reshape(-1).tolist():
        data = item if isinstance(item, bytes) else str(item).encode()
        parts.append(len(data).to_bytes(4, "little") + data)
    return b"".join(parts)


def _flatten(data: Any) -> list[Any]:
    if isinstance(data, list):
        return [item for part in data for item in (_flatten(part) if isinstance(part, list) else [part])]
    return [data]


def _tensor(name: str, value: Any) -> dict[str, Any]:
    import numpy as np

    array = np.asarray(value)
    if array.dtype.kind in ("U", "S", "O"):
        datatype = "BYTES"
        data = [v.decode() if isinstance(v, bytes) else str(v) for v in array.reshape(-1).tolist()]
    else:
        reverse = {v: k for k, v in V2_TYPES.items()}
        if str(array.dtype) not in reverse:
            raise HTTPError(500, f"output {name!r} has dtype {array.dtype}, which v2 has no datatype for")
        datatype = reverse[str(array.dtype)]
        data = array.reshape(-1).tolist()
    return {"name": name, "datatype": datatype, "shape": list(array.shape), "data": data}


def v2_routes(model: str, ready: Callable[[], bool]) -> list[tuple[str, str, Callable[[web.Request], Any]]]:
    async def live(request: web.Request) -> web.Response:
        return web.json_response({"live": True})

    async def server_ready(request: web.Request) -> web.Response:
        return web.json_response({"ready": ready()}, status=200 if ready() else 503)

    async def metadata(request: web.Request) -> web.Response:
        if request.match_info["name"] != model:
            return web.json_response({"error": f"unknown model {request.match_info['name']!r}"}, status=404)
        return web.json_response({"name": model, "versions": ["1"], "platform": "stack", "inputs": [], "outputs": []})

    async def model_ready(request: web.Request) -> web.Response:
        if request.match_info["name"] != model:
            return web.json_response({"error": f"unknown model {request.match_info['name']!r}"}, status=404)
        return web.json_response({"name": model, "ready": ready()}, status=200 if ready() else 503)

    async def server_metadata(request: web.Request) -> web.Response:
        return web.json_response({"name": "stack", "version": "1", "extensions": []})

    return [
        ("GET", "/v2", server_metadata),
        ("GET", "/v2/health/live", live),
        ("GET", "/v2/health/ready", server_ready),
        ("GET", "/v2/models/{name}", metadata),
        ("GET", "/v2/models/{name}/versions/{version}", metadata),
        ("GET", "/v2/models/{name}/ready", model_ready),
        ("GET", "/v2/models/{name}/versions/{version}/ready", model_ready),
    ]
