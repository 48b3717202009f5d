"""The predictor runtime: runs inside every replica and serves one Predictor over HTTP."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from serving.errors import HTTPError

if TYPE_CHECKING:
    from serving.codec import File, QueryParams

__all__ = ["File", "HTTPError", "QueryParams", "__version__"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # `File` and `QueryParams` need aiohttp; importing them lazily keeps `import serving` light
    # for what runs often and must be quick: the container health probe (`python -m serving.probe`).
    if name in ("File", "QueryParams"):
        from serving import codec

        return getattr(codec, name)
    raise AttributeError(f"module 'serving' has no attribute {name!r}")
