"""A health probe for orchestrators of your own: `python -m serving.probe URL` exits 0 when URL answers 2xx.

The stack itself probes replicas from its controller over HTTP (stack.control.liveness): nothing is
started inside a replica. This is for an image run elsewhere (a Kubernetes exec probe, a Docker
HEALTHCHECK of your own): slim base images have no curl, and this needs only the standard library. It
imports as little as it can (`http.client`, not `urllib.request`; nothing of aiohttp), so it answers
well within its timeout in a replica busy at its CPU limit.
"""

from __future__ import annotations

import http.client
import sys
from urllib.parse import urlsplit

TIMEOUT = 2.0  # seconds; the engine's own `timeout` bounds the whole probe too


def main(argv: list[str]) -> int:
    url = urlsplit(argv[0] if argv else "http://127.0.0.1:8888/readyz")
    connection = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port or 80, timeout=TIMEOUT)
    try:
        connection.request("GET", (url.path or "/") + (f"?{url.query}" if url.query else ""))
        status = connection.getresponse().status
    except (OSError, http.client.HTTPException) as exc:
        print(f"probe {url.geturl()}: {exc}", file=sys.stderr)
        return 1
    finally:
        connection.close()
    if 200 <= status < 300:
        return 0
    print(f"probe {url.geturl()}: answered {status}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
