"""bench/RESULTS.md holds one section per benchmark; each script rewrites only its own."""

from __future__ import annotations

import re
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
TITLE = "# Benchmark results\n\nEach section says the command that produced it; rerun it to refresh that section.\n"


def write_section(name: str, body: str, machine: str = "this project's 2-core CI machine") -> None:
    text = RESULTS.read_text() if RESULTS.exists() else TITLE
    stamp = time.strftime("%Y-%m-%d")
    note = f"_Measured {stamp} on {machine}._"
    block = f"<!-- {name}:start -->\n{body.rstrip()}\n\n{note}\n<!-- {name}:end -->"
    pattern = re.compile(rf"<!-- {name}:start -->.*?<!-- {name}:end -->", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else f"{text.rstrip()}\n\n{block}\n"
    RESULTS.write_text(text if text.endswith("\n") else text + "\n")
    print(f"wrote section {name!r} of {RESULTS}")
