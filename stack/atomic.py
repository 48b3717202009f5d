"""Files that readers never see half-written, and one lock per project.

`write_json_atomic` writes beside the target and renames over it. `ProjectLock`
is an flock on `.stack/lock`: every command that changes a running stack holds
it, so two of them never interleave, and the second caller is told who holds it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_json_atomic(path: Path, data: Any, mode: int = 0o644) -> None:
    """Readers never see half a file: write beside it, then rename over it."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True), mode)


def write_text_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(temp, mode)  # the umask may have narrowed or the file existed with other bits
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
