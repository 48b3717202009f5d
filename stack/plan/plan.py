"""The typed plan: everything planning decided, handed to a target that reads it and never recomputes it.

A planner (each target's `plan` module) returns one `Plan`: the project's digest, each API's version and
image, where the GPU APIs' replica slots go, the gateway's routes as data (replicas join them as they
come and go) and the rendered files. `write` puts the files in a directory; the files a
target marks secret (the API keys) are 0600 in a 0700 directory owned by the replicas' user.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from stack.atomic import write_text_atomic
from stack.plan.gpus import Placement
from stack.plan.images import REPLICA_USER
from stack.routes import Route


@dataclass(frozen=True)
class Plan:
    target: str  # the target it was planned for
    digest: str  # the project's files and the replica runtime (stack.plan.versions.project_digest)
    versions: dict[str, str]  # API -> its version (its spec and the digest)
    images: dict[str, str]  # API -> the image its replicas run (built, or predictor.image)
    routes: tuple[Route, ...]  # each API's route at the gateway, before any replica joins it
    files: dict[str, str] = field(default_factory=dict)  # path under the plan directory -> content
    placement: Placement = field(default_factory=lambda: Placement((), ()))  # GPU API slots on the GPUs
    notes: tuple[str, ...] = ()  # for the user: what the plan assumed, what a target does differently
    secret_files: frozenset[str] = frozenset()  # files only the replicas' user may read

    def write(self, out_dir: Path) -> list[Path]:
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for name, content in sorted(self.files.items()):
            path = out_dir / name
            secret = name in self.secret_files
            if secret:
                path.parent.mkdir(mode=0o700, exist_ok=True)
                path.parent.chmod(0o700)
                try:
                    if path.read_text() == content:
                        written.append(path)  # unchanged: its generation stays, no replica reads it again
                        continue
                except OSError:
                    pass
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(path, content, 0o600 if secret else 0o644)
            if secret and os.geteuid() == 0:
                # The directory is mounted as it is: its owner in the replica is the replica's user.
                os.chown(path.parent, REPLICA_USER, REPLICA_USER)
                os.chown(path, REPLICA_USER, REPLICA_USER)
            written.append(path)
        (out_dir / "api_keys").unlink(missing_ok=True)  # where earlier releases kept the keys: no copy stays
        return written
