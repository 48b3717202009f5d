"""What can go wrong while answering, as types: the errors a predictor raises on purpose, the model
store's, and `Failure`, the answer any of them becomes (serving.failures maps them, in one table).

    HTTPError            raised by a predictor for a 4xx (or any status): its status and message
    ModelError           the model store (python_client / onnx_client) could not serve a model
    ├── ModelNotFound       no such model or version                 -> 404
    ├── ModelInputInvalid   the input does not fit the model         -> 400
    └── ModelLoadFailed     its files would not load                 -> 500
"""

from __future__ import annotations

from dataclasses import dataclass, field


class HTTPError(Exception):
    """Raise from `predict` to answer with `status` and a JSON error body.

        from serving import HTTPError
        raise HTTPError(422, "text must be at most 512 characters")

    The client gets `{"error": message, "request_id": ...}` with that status.
    aiohttp's own `web.HTTPException` subclasses work too.
    """

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        if not 400 <= status <= 599:
            raise ValueError(f"HTTPError status must be 4xx or 5xx, got {status}")
        self.status = status
        self.message = message
        self.headers = headers or {}


class ModelError(Exception):
    """The model store could not serve a model; `status` is the answer's status."""

    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ModelNotFound(ModelError):
    status = 404


class ModelInputInvalid(ModelError):
    status = 400


class ModelLoadFailed(ModelError):
    status = 500


@dataclass(frozen=True)
class Failure:
    """What the client is answered for an exception: status, message, headers; `logged`: the traceback
    goes to the log (a failure the predictor did not mean); `param`: the request field at fault (OpenAI)."""

    status: int
    message: str
    headers: dict[str, str] = field(default_factory=dict)
    logged: bool = False
    param: str | None = None
