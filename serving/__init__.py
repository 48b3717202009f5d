"""The predictor runtime: runs inside every replica and serves one Predictor over HTTP."""

from serving.codec import File, QueryParams
from serving.errors import HTTPError

__all__ = ["File", "HTTPError", "QueryParams", "__version__"]
__version__ = "0.1.0"
