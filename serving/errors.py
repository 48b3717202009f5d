"""Errors a predictor raises on purpose to answer with a 4xx (or any status)."""

from __future__ import annotations


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
