"""Files that readers never see half-written, and one lock per project.

`write_json_atomic` writes beside the target and renames over it. `ProjectLock`
is an flock on `.stack/lock`: every command that changes a running stack holds
it, so two of them never interleave, and the second caller is told who holds it.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any

from stack.errors import LockHeld


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


class ProjectLock:
    """An exclusive flock on `.stack/lock` for one command that changes the stack.

    The kernel drops the lock when its holder exits, however it exits, so a
    crashed command never leaves the project locked. The holder writes who it
    is into the file; a second caller fails at once and names it.
    """

    def __init__(self, root: Path, command: str) -> None:
        self.path = root / ".stack" / "lock"
        self.command = command
        self.fd: int | None = None

    def __enter__(self) -> ProjectLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise LockHeld(
                f"{holder} is changing this project (lock {self.path}); wait for it to finish, "
                "or stop it, then run this again"
            ) from None
        os.ftruncate(fd, 0)
        info = {"pid": os.getpid(), "command": self.command, "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            os.close(self.fd)  # closing releases the flock
            self.fd = None


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"`{info['command']}` (pid {info['pid']}, since {info['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another `stack` command"
