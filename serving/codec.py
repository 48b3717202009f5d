"""Request payloads in, responses out, exactly as the predictor contract says.

In:  JSON -> parsed value; text/* -> str (charset honoured); form and multipart
     -> dict of fields and `File`s; no body -> None; anything else -> bytes.
Out: dict/list/number/bool/None -> JSON; str -> text/plain; bytes ->
     application/octet-stream; an aiohttp response -> passed through.
     Generators are streamed by `serving.streaming`.
"""

from __future__ import annotations

import io
import json
from collections.abc import Generator, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import BodyPartReader, web
from multidict import CIMultiDict

from serving.errors import HTTPError

JSON_TYPES = (dict, list, int, float, bool, type(None))


@dataclass(frozen=True)
class File:
    """An uploaded file from a multipart form.

    Also reads like starlette's `UploadFile` (what Cortex predictors were written against):
    `.file` is a file object over the data, `.read()` returns the bytes (and may be awaited).
    """

    filename: str | None
    content_type: str
    data: bytes

    @property
    def file(self) -> io.BytesIO:
        return io.BytesIO(self.data)

    def read(self, size: int = -1) -> _AwaitableBytes:
        return _AwaitableBytes(self.data if size < 0 else self.data[:size])

    @property
    def size(self) -> int:
        return len(self.data)


class _AwaitableBytes(bytes):
    """bytes that can also be awaited: `f.read()` in sync code, `await f.read()` in async code."""

    def __await__(self) -> Generator[Any, None, bytes]:
        return self
        yield  # pragma: no cover - makes this a generator


class QueryParams(dict[str, str]):
    """The query string: a dict of the last value of each name, with starlette's `getlist`
    (and `multi_items`) for names given more than once."""

    def __init__(self, pairs: Any = ()) -> None:
        if not pairs:
            super().__init__()
            self._multi: list[tuple[str, str]] = []
            return
        items = list(pairs.items()) if hasattr(pairs, "items") else list(pairs)
        super().__init__(items)
        self._multi = items

    def getlist(self, key: str) -> list[str]:
        return [value for name, value in self._multi if name == key]

    def multi_items(self) -> list[tuple[str, str]]:
        return list(self._multi)


class Headers(Mapping[str, str]):
    """A request's headers as a predictor gets them: starlette's `Headers` (what Cortex handed predictors)
    over aiohttp's: case-insensitive, `headers["x"]` the first value of a repeated name, `getlist` every
    value, `raw` the (name, value) byte pairs with names lowercased; aiohttp's `getall`/`getone` too."""

    __slots__ = ("_headers",)

    def __init__(self, headers: Any) -> None:
        self._headers = headers  # aiohttp's CIMultiDictProxy (or any mapping)

    def __getitem__(self, key: str) -> str:
        return str(self._headers[key])

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys(key.lower() for key in self._headers))

    def __len__(self) -> int:
        return len(dict.fromkeys(key.lower() for key in self._headers))

    def __contains__(self, key: object) -> bool:
        return key in self._headers

    def __repr__(self) -> str:
        return f"Headers({self.raw!r})"

    def getlist(self, key: str) -> list[str]:
        if hasattr(self._headers, "getall"):
            return list(self._headers.getall(key, []))
        return [v for k, v in self._headers.items() if k.lower() == key.lower()]

    getall = getlist  # aiohttp's spelling, for predictors written against it

    def getone(self, key: str, default: Any = None) -> Any:
        return self._headers.get(key, default)

    def items(self) -> list[tuple[str, str]]:  # type: ignore[override]
        """Every (name, value), repeated names included, names lowercased (as starlette's)."""
        return [(k.lower(), v) for k, v in self._headers.items()]

    def keys(self) -> list[str]:  # type: ignore[override]
        return [k for k, _ in self.items()]

    def values(self) -> list[str]:  # type: ignore[override]
        return [v for _, v in self.items()]

    @property
    def raw(self) -> list[tuple[bytes, bytes]]:
        return [(k.encode("latin-1"), v.encode("utf-8", "surrogateescape")) for k, v in self.items()]

    def mutablecopy(self) -> dict[str, str]:
        return dict(self.items())


async def read_payload(request: web.Request, max_body_size: int) -> Any:
    length = request.content_length
    if length is not None and length > max_body_size:
        raise _too_large(length, max_body_size)
    try:
        return await _read_payload(request, max_body_size)
    except web.HTTPRequestEntityTooLarge:  # a chunked body past the limit: counted by aiohttp as it came
        raise HTTPError(413, f"request body exceeds max_body_size of {max_body_size} bytes") from None


async def _read_payload(request: web.Request, max_body_size: int) -> Any:
    content_type = request.content_type
    if not request.body_exists:
        return None
    if content_type == "application/json" or content_type.endswith("+json"):
        return _parse_json(await request.read())
    if content_type.startswith("text/"):
        try:
            return await request.text()
        except (UnicodeDecodeError, LookupError) as exc:
            raise HTTPError(400, f"body is not valid {request.charset or 'utf-8'} text: {exc}") from exc
    if content_type == "multipart/form-data":
        return await _read_multipart(request, max_body_size)
    if content_type == "application/x-www-form-urlencoded":
        return _flatten(await request.post())
    return await request.read()


def _parse_json(body: bytes) -> Any:
    try:
        try:
            text = body.decode()
        except UnicodeDecodeError:
            text = body.decode(json.detect_encoding(body))  # UTF-16/32 JSON
        return _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise HTTPError(400, f"malformed JSON body: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise HTTPError(400, f"malformed JSON body: not UTF-8 ({exc})") from exc
    except RecursionError:
        raise HTTPError(400, "malformed JSON body: nested too deeply") from None
    except ValueError as exc:  # an integer of more digits than Python converts (sys.get_int_max_str_digits)
        raise HTTPError(400, f"malformed JSON body: a number is too long ({exc})") from None


def _refuse_constant(name: str) -> Any:
    raise HTTPError(400, f"malformed JSON body: {name} is not JSON (send null or a number)")


async def _read_multipart(request: web.Request, max_body_size: int) -> dict[str, Any]:
    # Read part by part and count bytes ourselves: aiohttp does not apply
    # client_max_size to multipart bodies sent without a Content-Length.
    reader = await request.multipart()
    fields: dict[str, Any] = {}
    total = 0
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            raise HTTPError(400, "nested multipart bodies are not supported")
        data = bytearray()
        while chunk := await part.read_chunk():
            total += len(chunk)
            if total > max_body_size:
                raise _too_large(total, max_body_size)
            data.extend(chunk)
        name = part.name or ""
        if part.filename is not None:
            content_type = part.headers.get("Content-Type", "application/octet-stream")
            value: Any = File(part.filename, content_type, bytes(data))
        else:
            value = data.decode(part.get_charset("utf-8"))
        _add(fields, name, value)
    return fields


def _flatten(form: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for name, value in form.items():
        _add(fields, name, value)
    return fields


def _add(fields: dict[str, Any], name: str, value: Any) -> None:
    # A repeated field becomes a list, the way a user reading a form expects.
    if name in fields:
        existing = fields[name]
        fields[name] = [*existing, value] if isinstance(existing, list) else [existing, value]
    else:
        fields[name] = value


def _too_large(size: int, limit: int) -> HTTPError:
    return HTTPError(413, f"request body of {size} bytes exceeds max_body_size of {limit} bytes")


def json_default(value: Any) -> Any:
    """Encode what predictors commonly return besides plain JSON: numpy values, sets."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"predict returned a {type(value).__name__}, which cannot be encoded as JSON")


# Built once: json.dumps with any keyword argument builds a new encoder per call.
# Standard JSON both ways: NaN and Infinity are refused (json's defaults would write and read them).
_ENCODER = json.JSONEncoder(default=json_default, allow_nan=False)
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)


def dumps(value: Any) -> str:
    try:
        return _ENCODER.encode(value)
    except ValueError as exc:
        if "Out of range float" in str(exc):
            raise ValueError(
                "predict returned NaN or Infinity, which JSON cannot carry; return null or a number"
            ) from None
        raise


def encode(result: Any, headers: dict[str, str]) -> web.StreamResponse:
    if type(result) is dict or type(result) is list:  # the common case first, with the least work
        headers["Content-Type"] = "application/json; charset=utf-8"
        return web.Response(body=dumps(result).encode(), headers=headers)
    if isinstance(result, web.StreamResponse):
        result.headers.update(headers)
        return result
    if isinstance(result, str):
        return web.Response(text=result, content_type="text/plain", headers=headers)
    if isinstance(result, (bytes, bytearray, memoryview)):
        return web.Response(body=bytes(result), content_type="application/octet-stream", headers=headers)
    return web.Response(text=dumps(result), content_type="application/json", headers=headers)


async def encode_any(result: Any, headers: dict[str, str]) -> web.StreamResponse:
    """`encode`, plus starlette/FastAPI responses (Cortex predictors return them) when starlette is there."""
    if _is_starlette_response(result):
        return await _from_starlette(result, headers)
    return encode(result, headers)


def _is_starlette_response(result: Any) -> bool:
    module = type(result).__module__
    if not (module.startswith("starlette.") or module.startswith("fastapi.")):
        return False
    from starlette.responses import Response

    return isinstance(result, Response)


async def _from_starlette(result: Any, headers: dict[str, str]) -> web.StreamResponse:
    from starlette.responses import StreamingResponse

    out_headers = CIMultiDict[str]()
    for key, value in result.raw_headers:
        out_headers.add(key.decode("latin-1"), value.decode("latin-1"))
    if "content-length" in out_headers and isinstance(result, StreamingResponse):
        del out_headers["content-length"]
    out_headers.update(headers)
    if isinstance(result, StreamingResponse):
        chunks = [chunk.encode() if isinstance(chunk, str) else bytes(chunk) async for chunk in result.body_iterator]
        out_headers.pop("content-length", None)
        return web.Response(status=result.status_code, body=b"".join(chunks), headers=out_headers)
    out_headers.pop("content-length", None)
    return web.Response(status=result.status_code, body=bytes(result.body), headers=out_headers)


def error_response(
    status: int, message: str, request_id: str, extra_headers: dict[str, str] | None = None
) -> web.Response:
    body = json.dumps({"error": message, "request_id": request_id})
    headers = {"X-Request-ID": request_id, **(extra_headers or {})}
    return web.Response(status=status, text=body, content_type="application/json", headers=headers)
