"""One local stack per project name per user on this machine.

A local stack's state lives in its own directory (`.stack/local/`), which says nothing about a copy of the
project elsewhere. So `stack up --local` also records, per project name, which directory's supervisor runs
it: `$XDG_STATE_HOME/stack/local/<project>.json` (default `~/.local/state/...`), written under a lock
together with the start of the supervisor, so two `up`s at once from two copies cannot both start. An
entry whose supervisor is gone, or whose directory no longer names it, is stale and taken over.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path

from stack.atomic import write_json_atomic
from stack.errors import NameTaken
from stack.targets.local.state import LocalPaths, pid_alive


def names_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "stack" / "local"


@contextlib.contextmanager
def claimed(project: str, root: Path) -> Iterator[NameClaim]:
    """Hold the project name's lock; refuse (NameTaken) when another directory's supervisor runs it."""
    directory = names_dir()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(directory / f"{project}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # held for seconds at most: the time to start a supervisor
        claim = NameClaim(directory / f"{project}.json", project, root.resolve())
        owner = claim.owner()
        if owner is not None:
            raise NameTaken(
                f"project {project} already runs on this machine from {owner} (`stack up --local` there); one "
                f"stack per project name: stop it there (`stack down --local {owner}`), or give this copy a "
                f"name of its own (`project:` in its stack.yaml)"
            )
        yield claim


class NameClaim:
    def __init__(self, file: Path, project: str, root: Path) -> None:
        self.file, self.project, self.root = file, project, root

    def owner(self) -> Path | None:
        """The other directory whose live supervisor runs this project name, if any."""
        try:
            entry = json.loads(self.file.read_text())
            root, pid = Path(entry["root"]), int(entry["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if root == self.root or not pid_alive(pid):
            return None
        try:  # its directory still names that supervisor (not a pid handed on to another process)
            named = int(LocalPaths(root).pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return root if named == pid else None

    def record(self, pid: int) -> None:
        write_json_atomic(self.file, {"root": str(self.root), "pid": pid})


def release(project: str, root: Path) -> None:
    """`stack down --local`: the name is free again (only if this directory held it)."""
    file = names_dir() / f"{project}.json"
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        if Path(json.loads(file.read_text())["root"]) == root.resolve():
            file.unlink()
