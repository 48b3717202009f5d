"""Container health probe: `python -m serving.probe URL` exits 0 when URL answers 2xx.

Slim base images have no curl; this needs only the standard library.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request


def main(argv: list[str]) -> int:
    url = argv[0] if argv else "http://127.0.0.1:8888/readyz"
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return 0 if 200 <= response.status < 300 else 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"probe {url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
